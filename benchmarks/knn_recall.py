"""kNN recall and speed of the FAISS index kinds against exact search, on real features.

Fashion-MNIST's 55,000 training images (784 raw pixels, scaled to [0, 1]) are indexed; 1,000
validation images query them. Recall@k = share of each query's exact k nearest neighbours that
the index returns (mean over queries). Build and search times are medians over repeats.

    python benchmarks/knn_recall.py [--queries 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time


from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.knn import FaissIndex, recall_at_k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("fashion-mnist", tmp)
        ds = load_dataset({k: str(v) for k, v in paths.items() if k != "test"})
    train = ds.splits["train"].values.reshape(len(ds.splits["train"]), -1)
    queries = ds.splits["valid"].values.reshape(len(ds.splits["valid"]), -1)[: args.queries]
    exact = FaissIndex("flat").build(train)
    _, truth = exact.search(queries, 100)
    configs = [("flat", {}), ("ivf", {"nprobe": 1}), ("ivf", {"nprobe": 8}), ("ivf", {"nprobe": 32}),
               ("hnsw", {"ef_search": 64}), ("hnsw", {"ef_search": 256})]
    print(f"machine: {platform.machine()}; {len(train)} rows × {train.shape[1]} dims, {len(queries)} queries; "
          f"median of {args.repeats}")
    print("| index | settings | recall@10 | recall@100 | build (s) | search (s) | search speed-up vs flat |")
    print("|---|---|---|---|---|---|---|")
    flat_search = None
    for kind, params in configs:
        builds, searches = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter(); index = FaissIndex(kind, **params).build(train); builds.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); _, found = index.search(queries, 100); searches.append(time.perf_counter() - t0)
        b, s = statistics.median(builds), statistics.median(searches)
        flat_search = flat_search or s
        r10 = recall_at_k(found[:, :10], truth[:, :10])
        r100 = recall_at_k(found, truth)
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "exact"
        if kind == "ivf":
            shown = f"nlist={index._index.nlist}, " + shown
        print(f"| {kind} | {shown} | {r10:.3f} | {r100:.3f} | {b:.2f} | {s:.3f} | {flat_search / s:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
