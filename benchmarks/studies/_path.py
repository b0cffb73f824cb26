"""Importing this puts ``benchmarks/`` on the path, so a study can reuse the suite's helpers
(``_shared``, ``cleaning``, ``run_memory``) when run as ``python benchmarks/studies/NAME.py``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
