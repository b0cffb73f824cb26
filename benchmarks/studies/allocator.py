"""Does the memory allocator cost the text model time? ``fastif clean`` under allocator settings, side by side.

    python benchmarks/studies/allocator.py [--repeats 3] [--rows 400]

The text model's per-sample-gradient chunks are hundreds of MB each; glibc serves blocks that
large with a fresh ``mmap`` every time, so each chunk is page-faulted in and zero-filled again
(tens of millions of minor faults in one demo run). Compared, in alternating order on one
Rotten Tomatoes slice (10% uniform flips), ``--model text-minilm --no-retrain``, every other
setting at its default, each run a fresh process under ``/usr/bin/time -v``:

* ``default``      the process as a user starts it
* ``thp``          ``THP_MEM_ALLOC_ENABLE=1``: torch backs large CPU tensors with transparent huge
                   pages (2 MB pages, 512× fewer faults; needs THP ``madvise`` or ``always``)
* ``heap``         ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``: no
                   ``mmap`` for large blocks, freed memory stays in the heap for the next chunk

Reported per setting: median wall, the influence stages (as ``benchmarks/passes.py`` counts them)
from ``metrics.json``, minor page faults, system time and peak RSS, and the flags'
agreement with the default run (the allocator must not change a result).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from fastif_engine.data.datasets import export

import _path  # noqa: F401  (benchmarks/ on the path)
from passes import INFLUENCE_STAGES

SETTINGS = {
    "default": {},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "heap": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"},
}
TIME_FIELDS = {"wall": r"Elapsed \(wall clock\) time.*: (\S+)", "rss_kb": r"Maximum resident set size.*: (\d+)",
               "minor_faults": r"Minor .*page faults: (\d+)", "sys_s": r"System time \(seconds\): (\S+)"}


def seconds(clock: str) -> float:
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def one_run(name: str, data: dict, out: Path) -> dict:
    env = {**os.environ, **SETTINGS[name], "PREFECT_SERVER_EPHEMERAL_ENABLED": "true"}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "flows.cli", "clean", "--train", str(data["train"]),
           "--valid", str(data["valid"]), "--out", str(out), "--model", "text-minilm", "--no-retrain"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    found = {k: re.search(pattern, done.stderr).group(1) for k, pattern in TIME_FIELDS.items()}
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    flags = pd.read_parquet(out / "flags.parquet")
    return {"setting": name, "wall_s": seconds(found["wall"]), "rss_gb": int(found["rss_kb"]) / 1e6,
            "minor_faults": int(found["minor_faults"]), "sys_s": float(found["sys_s"]),
            "influence_s": sum(timings.get(s, 0.0) for s in INFLUENCE_STAGES),
            "flagged": sorted(flags.loc[flags["flagged"], "train_id"].tolist())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=400, help="training rows of the slice")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = export("rotten-tomatoes", Path(tmp) / "data", noise=0.1, seed=0, max_train=args.rows)
        for r in range(args.repeats):
            for name in args.settings:
                run = one_run(name, data, Path(tmp) / f"{name}-{r}")
                runs.append(run)
                print(f"repeat {r} {name}: wall {run['wall_s']:.1f} s, influence stages {run['influence_s']:.1f} s, "
                      f"{run['minor_faults']:,} minor faults, sys {run['sys_s']:.1f} s", flush=True)
    reference = next(r["flagged"] for r in runs if r["setting"] == args.settings[0])
    print(f"\n| setting | wall s | influence stages s | minor faults | system s | peak GB | flags as {args.settings[0]} |")
    print("|---|---|---|---|---|---|---|")
    for name in args.settings:
        mine = [r for r in runs if r["setting"] == name]
        med = lambda key: statistics.median(r[key] for r in mine)  # noqa: E731
        same = all(r["flagged"] == reference for r in mine)
        print(f"| {name} | {med('wall_s'):.1f} | {med('influence_s'):.1f} | {med('minor_faults'):,.0f} | "
              f"{med('sys_s'):.1f} | {med('rss_gb'):.2f} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
