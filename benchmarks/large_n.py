"""Million-row scale: FAISS index settings (recall, speed, memory) and the whole flow from 10k to 1M rows.

    python benchmarks/large_n.py index [--rows 1000000] [--dims 64]
    python benchmarks/large_n.py flow [--sizes 10000 100000 1000000] [--out runs/large-n]

``index``: synthetic features (a mixture of 1,000 Gaussian clusters, float32), 1,000 queries
from the same mixture; exact neighbours from the flat index; recall@10 / @100, build and
search time, and bytes per row of the serialised index.

``flow``: synthetic 10-class tabular data (32 columns), a fixed 2,000-row validation and test
split, ``fastif clean --model tabular-logreg`` run as a subprocess per size (k = 1,000, LiSSA
depth 300), stage timings from ``metrics.json`` and the peak memory of the process tree.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastif_engine.influence.knn import FaissIndex, recall_at_k

from _shared import log_log_axes, save_figure


def mixture(n: int, dims: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    which = rng.integers(0, len(centres), n)
    return (centres[which] + rng.normal(size=(n, dims)).astype(np.float32)).astype(np.float32)


def index_study(rows: int, dims: int, queries: int) -> None:
    import faiss

    rng = np.random.default_rng(0)
    centres = (rng.normal(size=(1000, dims)) * 3).astype(np.float32)
    x = mixture(rows, dims, centres, rng)
    q = mixture(queries, dims, centres, rng)
    print(f"machine: {platform.machine()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
          f"{rows:,} rows × {dims} dims (float32, {x.nbytes / 2**20:.0f} MiB raw), {queries:,} queries\n")
    nlist = int(4 * np.sqrt(rows))
    configs = [("flat", {}, [None])] + [("ivf", {"nlist": nlist}, [1, 8, 32, 128])] + [
        ("ivfpq", {"nlist": nlist, "pq_m": m}, [8, 32, 128]) for m in (dims // 4, dims // 2)]
    print("| index | settings | nprobe | recall@10 | recall@100 | build (s) | search (ms / query) | bytes / row |")
    print("|---|---|---|---|---|---|---|---|")
    truth = None
    for kind, params, probes in configs:
        t0 = time.perf_counter()
        index = FaissIndex(kind, use_gpu=False, **params).build(x)
        build = time.perf_counter() - t0
        size = len(faiss.serialize_index(index._index)) / rows
        for nprobe in probes:
            if nprobe is not None:
                index._index.nprobe = nprobe
            t0 = time.perf_counter()
            _, found = index.search(q, 100)
            search = (time.perf_counter() - t0) / queries * 1000
            if truth is None:
                truth = found  # the flat index is exact
            r10 = recall_at_k(found[:, :10], truth[:, :10])
            r100 = recall_at_k(found, truth)
            setting = ", ".join(f"{k}={v}" for k, v in params.items()) or "exact"
            print(f"| {kind} | {setting} | {nprobe or '–'} | {r10:.3f} | {r100:.3f} | {build:.1f} | "
                  f"{search:.2f} | {size:.0f} |", flush=True)


def synthetic_tables(n: int, out: Path, seed: int = 0) -> dict[str, Path]:
    """10 overlapping classes in 32 columns; train has n rows, valid/test 2,000 each."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(10, 32)) * 0.3
    paths = {}
    for split, size in (("train", n), ("valid", 2000), ("test", 2000)):
        labels = rng.integers(0, 10, size)
        x = (means[labels] + rng.normal(size=(size, 32))).astype(np.float32)
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(32)]).assign(label=labels)
        paths[split] = out / f"{split}.parquet"
        frame.to_parquet(paths[split], index=False)
    return paths


def flow_study(sizes: list[int], out_root: Path) -> None:
    fastif = Path(sys.executable).parent / "fastif"
    print(f"machine: {platform.machine()}; fastif clean --model tabular-logreg --k 1000 --depth 300 per size\n")
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            paths = synthetic_tables(n, Path(tmp))
            out = out_root / f"n{n}"
            cmd = ["/usr/bin/time", "-v", str(fastif), "clean", "--train", str(paths["train"]), "--valid",
                   str(paths["valid"]), "--test", str(paths["test"]), "--out", str(out), "--model", "tabular-logreg",
                   "--k", "1000", "--depth", "300"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            peak_kb = int(next(line.split()[-1] for line in proc.stderr.splitlines() if "Maximum resident" in line))
            metrics = json.loads((out / "metrics.json").read_text())
            rows.append((n, wall, peak_kb / 2**20, metrics))
            t = metrics["timings"]
            print(f"n={n:,}: {wall:.0f} s, peak {peak_kb / 2**20:.2f} GiB; " + json.dumps({k: round(v, 1) for k, v in t.items()}),
                  flush=True)
    stages = list(rows[-1][3]["timings"])
    print("\n| training rows | errors | distinct candidates | wall (s) | peak RSS (GiB) | " + " | ".join(stages) + " |")
    print("|---" * (5 + len(stages)) + "|")
    for n, wall, peak, m in rows:
        c = m["counts"]
        print(f"| {n:,} | {c['errors']} | {c['distinct_candidates']:,} | {wall:.0f} | {peak:.2f} | "
              + " | ".join(f"{m['timings'].get(s, 0):.1f}" for s in stages) + " |")
    plot(rows, stages, out_root / "flow_cost.png")


def plot(rows, stages, path: Path) -> None:
    fig, ax = log_log_axes((6, 3.6))
    sizes = [r[0] for r in rows]
    ax.plot(sizes, [r[1] for r in rows], "o-", color="black", label="wall (whole command)")
    for stage in stages:
        vals = [r[3]["timings"].get(stage, 0) for r in rows]
        if max(vals) >= 1.0:
            ax.plot(sizes, vals, ".--", label=stage)
    ax.set_xlabel("training rows")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("index")
    a.add_argument("--rows", type=int, default=1_000_000)
    a.add_argument("--dims", type=int, default=64)
    a.add_argument("--queries", type=int, default=1000)
    b = sub.add_parser("flow")
    b.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    b.add_argument("--out", type=Path, default=Path("runs/large-n"))
    args = ap.parse_args()
    if args.what == "index":
        index_study(args.rows, args.dims, args.queries)
    else:
        flow_study(args.sizes, args.out)
    print(f"\n(peak memory of this script: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")


if __name__ == "__main__":
    main()
