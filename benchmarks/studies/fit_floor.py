"""How fast can the demo's retrain fits go on this machine? One text-minilm fit, arranged five ways.

    python benchmarks/studies/fit_floor.py [--repeats 2]

The demo's verdict needs 14 fits (5 seeds × original / flags removed / random control, the
seed-0 original reused). Each arrangement fits the demo's 2,000 snippets (its export: one class
30% under-reported) with the recipe every retrain uses (3 epochs, minibatches of 32), ``--repeats``
times, alternating:

* one fit with 2 torch threads (what the flow does, one task at a time), and with 1;
* one fit with 2 threads under ``torch.autocast("cpu", torch.bfloat16)`` (this CPU has AVX-512 BF16);
* two fits at once in two Python threads, 1 torch thread each and 2 each (per fit: time / 2).

Prints seconds per fit (median) and the test accuracy each arrangement's models reach.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import threading
import time

import torch

from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.models.training import evaluate

import _path  # noqa: F401  (benchmarks/ on the path)
from _shared import model_for

FITS_IN_THE_DEMO = 14


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("rotten-tomatoes", tmp, max_train=2000, noise=0.3, noise_mode="class-conditional", seed=0)
        ds = load_dataset({s: str(p) for s, p in paths.items()})
    model, inputs = model_for("text-minilm", ds)
    x, y = inputs("train"), torch.as_tensor(ds.splits["train"].labels)
    xt, yt = inputs("test"), torch.as_tensor(ds.splits["test"].labels)
    models = [model, copy.deepcopy(model)]

    def one(threads: int, bf16: bool = False):
        def fit(seed: int) -> list[float]:
            torch.set_num_threads(threads)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model.fit(x, y, seed=seed)
            return [time.perf_counter() - t]
        return fit

    def two_at_once(threads: int):
        def fit(seed: int) -> list[float]:
            torch.set_num_threads(threads)
            workers = [threading.Thread(target=m.fit, args=(x, y), kwargs={"seed": seed + i})
                       for i, m in enumerate(models)]
            t = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return [(time.perf_counter() - t) / 2] * 2
        return fit

    arrangements = {"one fit, 2 threads (the flow)": one(2), "one fit, 1 thread": one(1),
                    "one fit, 2 threads, bf16 autocast": one(2, bf16=True),
                    "two fits at once, 1 thread each": two_at_once(1),
                    "two fits at once, 2 threads each": two_at_once(2)}
    seconds: dict[str, list[float]] = {name: [] for name in arrangements}
    accuracy: dict[str, list[float]] = {name: [] for name in arrangements}
    for r in range(args.repeats):
        for name, fit in arrangements.items():
            seconds[name] += fit(seed=2 * r)
            fitted = models if name.startswith("two") else [model]
            accuracy[name] += [evaluate(m, xt, yt).accuracy for m in fitted]
            print(f"{name}, repeat {r}: {seconds[name][-1]:.1f} s per fit, test accuracy "
                  f"{', '.join(f'{a:.3f}' for a in accuracy[name][-len(fitted):])}", flush=True)
    torch.set_num_threads(2)
    base = statistics.median(seconds["one fit, 2 threads (the flow)"])
    print(f"\n| arrangement (medians of {args.repeats}) | s per fit | vs the flow's | test accuracy | "
          f"{FITS_IN_THE_DEMO} such fits (s) |\n|---|---|---|---|---|")
    for name in arrangements:
        per_fit = statistics.median(seconds[name])
        acc = ", ".join(f"{a:.3f}" for a in accuracy[name])
        print(f"| {name} | {per_fit:.1f} | {base / per_fit:.2f}× | {acc} | {FITS_IN_THE_DEMO * per_fit:.0f} |")


if __name__ == "__main__":
    main()
