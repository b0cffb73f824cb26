"""Every script behind a headline figure in docs/BENCHMARKS.md, in one command.

    python benchmarks/suite.py --quick                 # a small size of each: does everything still run?
    python benchmarks/suite.py                         # the sizes the docs quote (hours on two cores)
    python benchmarks/suite.py --only vs_peers passes  # some of them

Each script runs as its own process (as the docs' commands do) from the repository root, its
output to ``benchmarks/.cache/suite/NAME.log``; the suite prints one line per script (exit code,
seconds) and exits non-zero if any failed. The peers' benchmarks need them installed beside the
benchmark (see each script's docstring); they are skipped, with a note, when they are not. The
one-off studies behind past decisions are in ``benchmarks/studies/`` and are not part of it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / ".peers"

# name → (arguments at the docs' size, arguments at a quick size, what it needs from benchmarks/.peers)
SCRIPTS = {
    "vs_peers": ([], ["--repeats", "1", "--ridges", "0.3*max"], ("dattri", "pydvl")),
    "vs_kronfluence": ([], ["--max-train", "300", "--repeats", "1", "--reference-errors", "2", "--lissa-errors", "2"],
                       ("kronfluence",)),
    "passes": ([], [], ()),
    "embeddings": ([], ["--max-train", "300"], ()),
    "default_solver": ([], [], ()),
    "text_tables": (["--depth", "100", "--repeats", "3"], ["--depth", "5", "--repeats", "1", "--max-train", "500"], ()),
    "table1_fashion": (["--k", "500", "--depth", "100", "--errors", "3", "--repeats", "3"],
                       ["--k", "100", "--depth", "5", "--errors", "1", "--repeats", "1"], ()),
    "many_errors": (["--max-train", "20000", "--errors", "1", "4", "16", "64", "128", "--k", "100", "1000", "--repeats", "3"],
                    ["--max-train", "2000", "--errors", "1", "4", "--k", "100", "--repeats", "1"], ()),
    "cleaning": (["--datasets", "digits", "breast-cancer", "--seeds", "0", "1", "2", "3", "4"],
                 ["--datasets", "digits", "--noise-modes", "uniform", "--seeds", "0",
                  "--results", "benchmarks/.cache/suite/cleaning"], ()),
    "run_memory": (["--rows", "2000", "10000", "--k", "200"], ["--rows", "300", "--k", "50",
                                                               "--results", "benchmarks/.cache/suite/run_memory.json"], ()),
    "knn_recall": (["--queries", "1000", "--repeats", "3"], ["--queries", "50", "--repeats", "1"], ()),
    "per_sample_gradients": (["--rows", "1024", "--text-rows", "128", "--repeats", "5"],
                             ["--rows", "128", "--text-rows", "16", "--repeats", "1"], ()),
    "model_accuracy": (["--seeds", "0", "1", "2"], ["--seeds", "0", "--only", "tabular-logreg"], ()),
    "large_n_index": (["index", "--rows", "1000000", "--dims", "64"], ["index", "--rows", "20000", "--dims", "16"], ()),
    "gpu_check": ([], ["--rows", "512"], ()),
}
SCRIPT_FILE = {"large_n_index": "large_n"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size of each script")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run only these")
    args = parser.parse_args()
    logs = ROOT / "benchmarks" / ".cache" / "suite"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(PEERS) if PEERS.exists() else "",
                                                                     os.environ.get("PYTHONPATH", "")]))}
    if args.quick:
        env["FASTIF_BENCHMARK_RESULTS"] = str(logs / "results")
    failed = []
    for name in args.only or SCRIPTS:
        full, quick, needs = SCRIPTS[name]
        missing = [m for m in needs if not (PEERS / m).exists() and importlib.util.find_spec(m) is None]
        if missing:
            print(f"  {name:<22} skipped: install {', '.join(missing)} into benchmarks/.peers (see its docstring)")
            continue
        script = ROOT / "benchmarks" / f"{SCRIPT_FILE.get(name, name)}.py"
        started = time.perf_counter()
        with open(logs / f"{name}.log", "w") as log:
            rc = subprocess.run([sys.executable, str(script), *(quick if args.quick else full)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"  {name:<22} exit {rc}  {time.perf_counter() - started:7.0f} s  ({logs / name}.log)", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
