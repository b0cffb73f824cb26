"""Peak memory of scoring candidates (the stage that set the demo's peak) against the memory budget.

    python benchmarks/memory.py [--candidates 250 1000 4000] [--budgets 0.25 0.5 1.0 2.0] [--errors 74]
                                [--trim-every N]

text-minilm (top layer + head: 1.78M differentiated parameters) on Rotten Tomatoes snippets: each
configuration runs in a fresh process, which loads the model, the prepared inputs of the candidate
rows and ``--errors`` s_test vectors, notes its RSS (the baseline), then scores every
candidate against every s_test with gradient chunks sized by ``--memory-budget`` (``chunk_rows``).
Baseline = the RSS just before scoring; peak = the highest RSS during it (the kernel's high-water
mark, reset just before). A bounded design shows a peak that follows the budget, not the number
of candidates.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS starts again from now


def child(inputs_path: str, candidates: int, budget: float, errors: int, trim_every: int | None) -> None:
    from fastif_engine.influence.gradients import FlatParams, chunk_rows
    from fastif_engine.influence.scores import influence_on_candidates
    from fastif_engine.models import DataInfo, create_model
    from fastif_engine.store import memory
    from fastif_engine.store.files import load_tensors

    if trim_every:
        memory.TRIM_EVERY = trim_every
    torch.manual_seed(0)
    model = create_model("text-minilm", DataInfo("text", 2, ()))
    blob = load_tensors(inputs_path)
    x = {"hidden": blob["hidden"][:candidates], "mask": blob["mask"][:candidates]}
    y = blob["labels"][:candidates]
    flat = FlatParams.of(model)
    s = torch.randn(errors, flat.size) * 1e-3
    chunk = chunk_rows(flat.size, budget)
    _reset_peak()
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    influence_on_candidates(model, x, y, s, [torch.arange(candidates).numpy()] * errors,
                            chunk_size=chunk, flat=flat)
    print(json.dumps({"candidates": candidates, "budget_gb": budget, "chunk_rows": chunk, "baseline_mb": base,
                      "peak_mb": _status_mb("VmHWM"), "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, nargs="+", default=[250, 1000, 4000])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--errors", type=int, default=74)
    ap.add_argument("--trim-every", type=int, default=None,
                    help="gradient chunks between two trims of freed memory (default: the engine's TRIM_EVERY)")
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]), args.errors, args.trim_every)
        return
    inputs_path = args.cache / f"rt{max(args.candidates)}-minilm-inputs.safetensors"
    if not inputs_path.exists():
        from fastif_engine.data.datasets import export
        from fastif_engine.data.tables import load_dataset
        from fastif_engine.models import DataInfo, create_model
        from fastif_engine.store.files import save_tensors

        paths = export("rotten-tomatoes", args.cache / "rt-memory", seed=0, max_train=max(args.candidates))
        ds = load_dataset({k: str(v) for k, v in paths.items()})
        prepared = create_model("text-minilm", DataInfo("text", 2, ())).prepare(ds.splits["train"].values)
        save_tensors(inputs_path, {**prepared, "labels": torch.as_tensor(ds.splits["train"].labels)})
    print(f"{args.errors} s_test vectors; one fresh process per row; freed memory trimmed every "
          f"{args.trim_every or 'TRIM_EVERY'} chunks\n")
    print("| candidates | --memory-budget (GB) | rows per chunk | baseline RSS (MB) | peak RSS (MB) | "
          "peak − baseline (MB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        for c in args.candidates:
            trim = ["--trim-every", str(args.trim_every)] if args.trim_every else []
            out = subprocess.run([sys.executable, __file__, "--errors", str(args.errors), *trim, "--child",
                                  str(inputs_path), str(c), str(budget)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {c:,} | {budget:g} | {r['chunk_rows']} | {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | "
                  f"{r['peak_mb'] - r['baseline_mb']:.0f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
