"""Peak memory of whole `fastif clean` runs of the text model, by training rows and k.

    python benchmarks/run_memory.py [--rows 2000 10000] [--k 100 200 1000] [--workdir /tmp/fastif-run-memory]

For each row count: Rotten Tomatoes (the demo's export: one class 30% under-reported, seed 0),
text-minilm, the demo's LiSSA settings (depth 100, B = 1, damping 0.05), defaults otherwise, no
retraining, `--memory-budget` at its default. The first k runs every stage; the other k values run
in the same `--out`, so only the kNN candidates and the influence stage are computed again
(everything else comes from the stage cache). Each run is a fresh process under
`/usr/bin/time -v`; the table gives its peak RSS and the per-stage peaks from `metrics.json`.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

from fastif_engine.data.datasets import export

DEMO = ["--model", "text-minilm", "--depth", "100", "--repeats", "1", "--batch-size", "1", "--damping", "0.05"]


def run(paths: dict, out: Path, k: int, *extra: str) -> dict:
    """One ``fastif clean`` (the demo's settings, ``extra`` options on top) in a fresh process under
    ``/usr/bin/time -v``: wall, peak RSS, and the per-stage timings and peaks from metrics.json."""
    cmd = ["/usr/bin/time", "-v", "fastif", "clean", "--train", str(paths["train"]), "--valid", str(paths["valid"]),
           "--test", str(paths["test"]), "--out", str(out), "--k", str(k), *DEMO, *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "peak_mb": peak_kb / 1024, "stages": metrics["memory"]["peak_rss_mb_after_stage"],
            "timings": metrics["timings"], "errors": metrics["counts"]["errors"],
            "candidates": metrics["counts"]["distinct_candidates"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--k", type=int, nargs="+", default=[200, 100, 1000])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fastif-run-memory"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/run_memory.json"))
    args = ap.parse_args()
    results = []
    for rows in args.rows:
        paths = export("rotten-tomatoes", args.workdir / f"data-{rows}", max_train=rows, noise=0.3,
                       noise_mode="class-conditional", seed=0)
        for i, k in enumerate(args.k):
            r = run(paths, args.workdir / f"run-{rows}", k)
            r.update(rows=rows, k=k, cached=i > 0)
            results.append(r)
            print(json.dumps(r), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    print("\n| training rows | k | stages run | errors | candidates scored | peak after s_test (MB) | peak after "
          "influence (MB) | process peak (MB) | influence (s) | wall (s) |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        st = r["stages"]
        print(f"| {r['rows']:,} | {r['k']:,} | {'kNN + influence (rest cached)' if r['cached'] else 'all'} | "
              f"{r['errors']} | {r['candidates']} | {st.get('s_test', float('nan')):,.0f} | "
              f"{st.get('influence', float('nan')):,.0f} | {r['peak_mb']:,.0f} | {r['timings'].get('influence', 0):.1f} | "
              f"{r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
