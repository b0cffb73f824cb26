"""Block CG against CG one vector at a time, with and without the EK-FAC preconditioner.

    python benchmarks/studies/cg_block.py [--image] [--vectors 16] [--singles 4]

Digits (the first 1,257 rows, float32 as ``fastif clean`` runs) trains ``tabular-logreg`` and
``tabular-mlp``; ``--image`` adds image-cnn on 10,000 Fashion-MNIST images (10% of labels flipped,
seed 0: ``vs_kronfluence.py --model image-cnn``'s problem). At λ = 0.3 × and 0.03 × the Hessian's
sampled top eigenvalue (the default ridge and 10× less), ``--vectors`` training-loss gradients of
test rows are solved to a relative residual of 1e-4 by :class:`CgSolver` as one block, and the
first ``--singles`` of them one at a time (a block of one vector is plain CG: the iterations
0.3.4's per-vector CG needed), each unpreconditioned and preconditioned by EK-FAC factors from
256 sampled rows (auto's preconditioner up to 0.3.4). Reported: iterations (block; the most over
the single solves), the block's seconds, and its largest relative residual. One thread.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import _path  # noqa: F401  (benchmarks/ on the path)
from _shared import results_dir
from fastif_engine.data.batching import take
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.hessian import spectrum
from fastif_engine.influence.kfac import EkfacSolver
from fastif_engine.influence.krylov import CgSolver
from fastif_engine.models.tabular import LogisticRegressionAdapter, MLPAdapter
from vs_peers import digits

PRECONDITIONER_ROWS = 256


def digits_problems():
    x, y, xt, yt = digits()
    x, xt = x.float(), xt.float()
    for name, model in (("tabular-logreg", LogisticRegressionAdapter), ("tabular-mlp", MLPAdapter)):
        adapter = model(64, 10)
        adapter.fit(x, y)
        yield name, adapter, x, y, xt, yt


def image_problem(tmp: Path):
    from vs_kronfluence import demo_problem
    adapter, x, y, xq, yq = demo_problem(tmp, 10_000, "image-cnn")
    return "image-cnn (Fashion-MNIST, 10k)", adapter, x, y, xq, yq


def study(name, adapter, x, y, xt, yt, vectors: int, singles: int) -> list[dict]:
    flat = FlatParams.of(adapter)
    top = spectrum(adapter, flat, x, y).largest
    v = gradient_matrix(adapter, take(xt, slice(0, vectors)), yt[:vectors], flat=flat)
    rows = []
    for fraction in (0.3, 0.03):
        ridge = fraction * top
        pre_rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:PRECONDITIONER_ROWS]
        ekfac = EkfacSolver(adapter, take(x, pre_rows), y[pre_rows], ridge=ridge, flat=flat)
        for label, pre in (("none", None), ("EK-FAC (256 rows)", ekfac)):
            block = CgSolver(adapter, x, y, ridge=ridge, flat=flat, preconditioner=pre)
            started = time.perf_counter()
            block.solve(v)
            seconds = time.perf_counter() - started
            alone = CgSolver(adapter, x, y, ridge=ridge, flat=flat, preconditioner=pre)
            for i in range(min(singles, len(v))):
                alone.solve(v[i:i + 1])
            rows.append({"model": name, "parameters": flat.size, "ridge_over_top": fraction, "preconditioner": label,
                         "vectors": len(v), "block_iterations": block.iterations_used[0], "block_seconds": seconds,
                         "block_max_residual": float(block.residuals.max()),
                         "single_iterations_max": max(alone.iterations_used), "singles": len(alone.iterations_used)})
            r = rows[-1]
            print(f"| {name} | {fraction:g} × top | {label} | {r['block_iterations']} | {seconds:.2f} | "
                  f"{r['block_max_residual']:.1e} | {r['single_iterations_max']} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="store_true", help="add image-cnn on 10,000 Fashion-MNIST images")
    parser.add_argument("--vectors", type=int, default=16)
    parser.add_argument("--singles", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | ridge | preconditioner | block CG iterations | block s | max residual | "
          "one at a time: iterations (max) |\n|---|---|---|---|---|---|---|")
    rows = []
    for problem in digits_problems():
        rows += study(*problem, args.vectors, args.singles)
    if args.image:
        with tempfile.TemporaryDirectory() as tmp:
            rows += study(*image_problem(Path(tmp)), args.vectors, args.singles)
    out = results_dir() / "cg_block.json"
    out.write_text(json.dumps({"vectors": args.vectors, "singles": args.singles, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
