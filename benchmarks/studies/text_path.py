"""The text model's hot loops, side by side: transformers' padded layer vs fastif's packed tokens.

    python benchmarks/studies/text_path.py [--rows 2000] [--repeats 3] [--vectors 16]

text-minilm (top layer + head, 1.78M differentiated parameters) on the demo's Rotten Tomatoes
snippets. For each path, alternating, ``--repeats`` times: one fine-tuning fit (the recipe of
every retrain: 3 epochs, minibatches of 32), and ten LiSSA steps for ``--vectors`` vectors at
B = 1 (the demo's s_test) and B = 16 (the default). "padded" forces the layer transformers ships
(every position of a minibatch padded to its longest row); "packed" is what fastif runs:
token-wise work on the real tokens only. Prints medians and the padded / packed ratio, and the
share of padding in a random minibatch.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.gradients import FlatParams
from fastif_engine.influence.solvers import LissaSettings, LissaSolver
from fastif_engine.models import text
from fastif_engine.models.training import minibatches

import _path  # noqa: F401  (benchmarks/ on the path)
from _shared import model_for


@contextmanager
def padded_layers(on: bool):
    """Run transformers' own layer on padded batches (the path before packing) while ``on``."""
    original = text._inside_vmap
    if on:
        text._inside_vmap = lambda t: True
    try:
        yield
    finally:
        text._inside_vmap = original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("rotten-tomatoes", tmp, max_train=args.rows, noise=0.3, noise_mode="class-conditional")
        ds = load_dataset({s: str(p) for s, p in paths.items()})
    model, inputs = model_for("text-minilm", ds)
    x, y = inputs("train"), torch.as_tensor(ds.splits["train"].labels)
    lengths = model.row_lengths(x)
    batches = minibatches(len(y), model.settings.batch_size, torch.Generator().manual_seed(0))
    padded_tokens = sum(int(lengths[b.numpy()].max()) * len(b) for b in batches)
    print(f"{len(y)} snippets, {lengths.mean():.1f} tokens on average (max {lengths.max()}); a random minibatch of "
          f"{model.settings.batch_size} pads to {padded_tokens / lengths.sum():.2f}× its real tokens")
    model.fit(x, y, seed=0)
    flat = FlatParams.of(model)
    v = torch.randn(args.vectors, flat.size, generator=torch.Generator().manual_seed(0)) * 1e-3
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for path in ("padded", "packed"):
            with padded_layers(path == "padded"):
                t = time.perf_counter()
                model.fit(x, y, seed=r)
                times.setdefault(("fit (3 epochs)", path), []).append(time.perf_counter() - t)
                for b in (1, 16):
                    solver = LissaSolver(model, x, y, LissaSettings(depth=args.steps, batch_size=b, scale=100.0,
                                                                    damping=0.05, seed=r))
                    t = time.perf_counter()
                    solver.solve(v)
                    times.setdefault((f"LiSSA step, B = {b}, {args.vectors} vectors", path), []).append(
                        (time.perf_counter() - t) / args.steps)
    print(f"\nmedians of {args.repeats} (s), paths alternating\n")
    print("| work | padded | packed | padded / packed |\n|---|---|---|---|")
    for work in dict.fromkeys(w for w, _ in times):
        pad, pack = statistics.median(times[(work, "padded")]), statistics.median(times[(work, "packed")])
        print(f"| {work} | {pad:.3f} | {pack:.3f} | {pad / pack:.2f}× |")
    print(f"\nraw: { {f'{w} / {p}': np.round(t, 3).tolist() for (w, p), t in times.items()} }")


if __name__ == "__main__":
    main()
