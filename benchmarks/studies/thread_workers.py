"""The thread runner with one worker vs two, on the demo's text run.

    python benchmarks/studies/thread_workers.py [--repeats 2] [--seeds 2] [--workdir /tmp/fastif-thread-workers]

Thread-runner tasks take turns inside torch.func (``TRANSFORM_LOCK``: every per-sample gradient,
HVP and forward-mode product) and inside the seeded-RNG lock (every fit), so a second thread worker
adds no compute; what it does change is each task's share of ``--memory-budget`` (half: smaller
LiSSA blocks and gradient chunks, and error groups of half the s_test vectors in the influence stage).

Data and settings are the demo's (Rotten Tomatoes, 2,000 training snippets, one class 30%
under-reported; text-minilm, k = 200, LiSSA depth 100, B = 1, damping 0.05), with
``--retrain --seeds S``. A first run fills the stage cache; every timed run is a fresh process on a
copy of that cache without the stages the workers change (s_test, influence, net harm, retrain),
``--workers 2`` and ``--workers 1`` alternating. Prints per-stage medians, their ratio, and whether
the two settings flag the same rows.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from fastif_engine.cleaning.pipeline import CACHE_DIR
from fastif_engine.data.datasets import export

import _path  # noqa: F401  (benchmarks/ on the path)
from run_memory import run

K = 200
REDONE = ("stest", "influence", "netharm", "retrain")  # cache files of the stages the workers change
STAGES = ("s_test", "influence", "net harm", "retrain")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fastif-thread-workers"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/studies/results/thread_workers.json"))
    args = ap.parse_args()
    paths = export("rotten-tomatoes", args.workdir / "data", max_train=2000, noise=0.3,
                   noise_mode="class-conditional", seed=0)
    warm = args.workdir / "warm"
    run(paths, warm, K, "--no-retrain")
    results = []
    for r in range(args.repeats):
        for workers in (2, 1):
            out = args.workdir / f"w{workers}-r{r}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(warm / CACHE_DIR, out / CACHE_DIR,
                            ignore=lambda _, names: [n for n in names if n.startswith(REDONE)])
            res = run(paths, out, K, "--workers", str(workers), "--retrain", "--seeds", str(args.seeds))
            res.update(workers=workers, repeat=r, out=str(out))
            results.append(res)
            print(json.dumps({k: res[k] for k in ("workers", "repeat", "wall_s", "peak_mb", "timings")}), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))

    def median(workers: int, get) -> float:
        return statistics.median(get(r) for r in results if r["workers"] == workers)

    print(f"\n| medians of {args.repeats} | 2 thread workers | 1 | 2 / 1 |\n|---|---|---|---|")
    for stage in STAGES:
        two, one = (median(w, lambda r: r["timings"][stage]) for w in (2, 1))
        print(f"| {stage} (s) | {two:.1f} | {one:.1f} | {two / one:.2f}× |")
    two, one = (median(w, lambda r: r["wall_s"]) for w in (2, 1))
    print(f"| whole run (s; earlier stages cached) | {two:.0f} | {one:.0f} | {two / one:.2f}× |")
    two, one = (median(w, lambda r: r["peak_mb"]) for w in (2, 1))
    print(f"| peak RSS (MB) | {two:,.0f} | {one:,.0f} | {two / one:.2f}× |")
    flags = {w: [pd.read_parquet(Path(r["out"]) / "flags.parquet").sort_values("train_id") for r in results
                 if r["workers"] == w] for w in (2, 1)}
    same = all(np.array_equal(a["flagged"].to_numpy(), b["flagged"].to_numpy()) for a in flags[2] for b in flags[1])
    gap = max(float(np.abs(a["harm_score"].to_numpy() - b["harm_score"].to_numpy()).max())
              for a in flags[2] for b in flags[1])
    print(f"\nsame flagged rows: {same}; largest harm-score difference {gap:.2g} "
          f"(largest score {float(flags[1][0]['harm_score'].abs().max()):.3g})")


if __name__ == "__main__":
    main()
