"""prefect.yaml for real: a local `prefect server start`, the process work pool, the nightly
deployment and one run picked up by a worker (scripts/verify_deployment.sh, ~1.5 min)."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_nightly_deployment_runs_through_a_worker():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "scripts/verify_deployment.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "state_type=StateType.COMPLETED" in proc.stdout
    flags = pd.read_parquet(ROOT / "runs" / "nightly" / "flags.parquet")
    assert len(flags) == 1079 and flags["flagged"].sum() > 0
