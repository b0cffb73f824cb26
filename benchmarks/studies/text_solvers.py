"""Every inverse-HVP solver on the text model, against a converged reference, in one run.

    python benchmarks/studies/text_solvers.py [--rows 400] [--errors 8] [--skip-lissa]

text-minilm (top layer + head, 1.78M differentiated parameters) fine-tuned on a Rotten Tomatoes
slice of ``--rows`` training rows, at the default ridge λ = damping × scale. The reference is
conjugate gradient on the full-data damped Hessian to a relative residual of 1e-3 (EK-FAC
preconditioned). Against it, for the first ``--errors`` misclassified validation rows: s_test
cosine and the Pearson correlation of influence over every training row, with the time each
solver took (build + solve), for

* ``none``: no Hessian at all, S = V / λ (the baseline every figure is read against);
* ``ekfac``: EK-FAC (Kronecker-factored Gauss-Newton per Linear weight);
* ``lowrank``: auto's low-rank candidate (Lanczos on 128 rows, top 8, stopped when settled);
* ``lowrank-1``: the top Hessian eigenvector alone (same Lanczos run); ``--lowrank 4x128,8x64``:
  more low-rank variants (rank × sampled rows, Lanczos stopped the same way);
* ``lissa``: LiSSA at the previous defaults (J = 300, B = 16) and ``lissa-demo``: J = 100, B = 1 at
  the same ridge (skipped with ``--skip-lissa``);
* ``gauss-newton``: CG on the exact Gauss-Newton matrix (what EK-FAC approximates), to tell the
  Kronecker approximation's error from the Gauss-Newton's.

Also prints the Hessian's top eigenvalues beside λ. Writes benchmarks/studies/results/text_solvers.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, jvp, vjp

from fastif_engine.data.batching import chunk_slices, take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.kfac import EkfacSolver
from fastif_engine.influence.krylov import CgSolver, LowRankSolver
from fastif_engine.influence.planning import AUTO_RANK, auto_sample_rows
from fastif_engine.influence.scores import influence_on_candidates
from fastif_engine.influence.solvers import LissaSettings, LissaSolver, with_scale

import _path  # noqa: F401  (benchmarks/ on the path)
from _shared import model_for


class GaussNewtonCg(CgSolver):
    """CG whose operator is the exact Gauss-Newton matrix (1/N) Σ Jᵀ H_softmax J + l2 (+ λ)."""

    def _operator(self, vectors: torch.Tensor) -> torch.Tensor:
        adapter, flat = self.adapter, self.flat
        params, model = flat.as_dict(), adapter.model
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in set(flat.names)}
        n = len(self.labels)
        out = torch.zeros_like(vectors)
        for rows in chunk_slices(n, 50):
            x = adapter.trim_batch(take(self.inputs, torch.arange(rows.start, rows.stop)))

            def logits_of(p, x=x):
                return functional_call(model, (p, frozen), (x,), strict=False)

            _, back = vjp(logits_of, params)
            for i in range(len(vectors)):
                logits, jv = jvp(logits_of, (params,), (flat.unflatten(vectors[i]),))
                p = logits.softmax(-1)
                out[i] += flat.flatten(back(p * jv - p * (p * jv).sum(-1, keepdim=True))[0]) / n
        return out + adapter.l2 * flat.l2_mask * vectors + self._ridge * vectors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--errors", type=int, default=8)
    ap.add_argument("--skip-lissa", action="store_true")
    ap.add_argument("--skip-gauss-newton", action="store_true")
    ap.add_argument("--damping", type=float, help="d (λ = d × scale); default: fastif's")
    ap.add_argument("--lowrank", default="", help="more low-rank variants, rank x rows: e.g. 4x128,8x64")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset({k: str(v) for k, v in export("rotten-tomatoes", tmp, max_train=args.rows).items()})
    model, inputs = model_for("text-minilm", ds)
    x, y = inputs("train"), torch.as_tensor(ds.splits["train"].labels)
    xv, yv = inputs("valid"), torch.as_tensor(ds.splits["valid"].labels)
    model.fit(x, y, seed=0)
    wrong = (model.predict(xv) != yv).nonzero().ravel()[:args.errors]
    v = gradient_matrix(model, take(xv, wrong), yv[wrong])
    flat = FlatParams.of(model)
    settings = with_scale(model, x, y, LissaSettings(**({} if args.damping is None else {"damping": args.damping})), flat)
    ridge = settings.ridge
    print(f"{len(y)} training rows, {len(wrong)} errors, {flat.size:,} parameters, ridge λ = {ridge:.4g}", flush=True)

    timed: dict[str, tuple[torch.Tensor, float]] = {}

    def run(name, build):
        started = time.perf_counter()
        s = build()
        timed[name] = (s, time.perf_counter() - started)
        print(f"  {name}: {timed[name][1]:.1f} s", flush=True)

    ekfac_holder = {}

    def ekfac():
        ekfac_holder["solver"] = EkfacSolver(model, x, y, ridge=ridge, flat=flat)
        return ekfac_holder["solver"].solve(v)

    run("ekfac", ekfac)
    reference = CgSolver(model, x, y, ridge=ridge, preconditioner=ekfac_holder["solver"], flat=flat,
                         tolerance=1e-3, max_iterations=40, chunk_size=50)
    run("reference (CG on H)", lambda: reference.solve(v))
    run("none", lambda: v / ridge)
    low_holder = {}

    def lowrank():
        low_holder["solver"] = LowRankSolver(model, x, y, ridge=ridge, rank=AUTO_RANK, rows=auto_sample_rows(len(y)),
                                             flat=flat, iterations=3 * AUTO_RANK, early_stop=True)
        return low_holder["solver"].solve(v)

    run("lowrank", lowrank)
    low = low_holder["solver"]
    run("lowrank-1", lambda: LowRankSolver.from_eigenpairs(low.eigenvalues[:1], low.eigenvectors[:1], ridge).solve(v))
    for variant in filter(None, args.lowrank.split(",")):
        rank, sample = (int(t) for t in variant.split("x"))
        run(f"lowrank-{rank}x{sample}", lambda: LowRankSolver(
            model, x, y, ridge=ridge, rank=rank, rows=sample, flat=flat, iterations=3 * rank, early_stop=True).solve(v))
    if not args.skip_gauss_newton:
        run("gauss-newton", lambda: GaussNewtonCg(model, x, y, ridge=ridge, preconditioner=ekfac_holder["solver"],
                                                  flat=flat, tolerance=1e-3, max_iterations=40).solve(v))
    if not args.skip_lissa:
        run("lissa", lambda: LissaSolver(model, x, y, settings, flat=flat).solve(v))
        demo = LissaSettings(depth=100, batch_size=1, damping=settings.damping, scale=settings.scale)
        run("lissa-demo", lambda: LissaSolver(model, x, y, demo, flat=flat).solve(v))

    s_ref = timed.pop("reference (CG on H)")[0]
    inf_ref = influence_on_candidates(model, x, y, s_ref).as_matrix(len(wrong), len(y))
    rows = {}
    print(f"\nHessian's top eigenvalues (Lanczos, {auto_sample_rows(len(y))} rows): "
          f"{', '.join(f'{e:.3g}' for e in low.eigenvalues[:4].tolist())}; λ = {ridge:.3g}")
    print(f"reference: CG, {reference.iterations_used[0]} iterations, max relative residual "
          f"{float(reference.residuals.max()):.1e}")
    print(f"{'solver':<16}{'seconds':>9}{'cosine':>9}{'Pearson mean':>14}{'min':>8}")
    for name, (s, seconds) in timed.items():
        inf = influence_on_candidates(model, x, y, s).as_matrix(len(wrong), len(y))
        pearson = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(inf, inf_ref)]
        cos = torch.nn.functional.cosine_similarity(s, s_ref, dim=1)
        rows[name] = {"seconds": round(seconds, 2), "cosine_mean": round(float(cos.mean()), 4),
                      "pearson_mean": round(float(np.mean(pearson)), 4), "pearson_min": round(min(pearson), 4)}
        r = rows[name]
        print(f"{name:<16}{r['seconds']:>9.1f}{r['cosine_mean']:>9.3f}{r['pearson_mean']:>14.4f}{r['pearson_min']:>8.4f}")
    suffix = "" if args.damping is None else f"-d{args.damping:g}"
    out = Path(__file__).parent / "results" / f"text_solvers{suffix}.json"
    out.write_text(json.dumps({"rows": len(y), "errors": len(wrong), "ridge": ridge,
                               "top_eigenvalues": low.eigenvalues[:8].tolist(), "solvers": rows}, indent=1))


if __name__ == "__main__":
    main()
