"""Net harm's class prior: the model's own, refitted to validation, or chosen by the prior check.

    python benchmarks/studies/class_prior.py --results benchmarks/studies/results --datasets rotten-tomatoes --noise-modes uniform class-conditional --seeds 0 1 2
    python benchmarks/studies/class_prior.py --summary      # the table, from benchmarks/studies/results/class_prior-*.json

Per dataset, noise kind and seed (the exports, models and solver settings of ``cleaning.py``):
train the built-in model on the noisy labels, compute net harm twice (``prior="model"`` and
``prior="refit"``, fastif_engine.influence.net_harm) and the own training loss, and flag as the product
does by default (``combined`` score, top 10%, net-harm t ≥ 2) under each prior and under
``auto`` (refit unless the prior check's z ≥ 2). Reports the check's z, and per prior the
recall of flipped rows in the combined score's top 10%, the flags, the flipped rows among them
and the flags' class mix. No retraining: ``cleaning.py`` measures what fixing the flags does.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from fastif_engine import __version__
from fastif_engine.cleaning.flagging import rank_fusion
from fastif_engine.influence.api import FastIF
from fastif_engine.influence.net_harm import net_harm, refits_prior

import _path  # noqa: F401  (benchmarks/ on the path)
from cleaning import MIN_EVIDENCE, REMOVAL, floored_flags, noisy_setup, row_losses, study_arguments


def run(dataset: str, mode: str, seed: int, workdir: Path) -> dict:
    setup = noisy_setup(dataset, mode, seed, workdir)
    model_name, k, solver_name, lissa = setup.model_name, setup.k, setup.solver_name, setup.lissa
    ds, flipped, model, x, y = setup.ds, setup.flipped, setup.model, setup.x, setup.y
    labels = ds.splits["train"].labels
    model.fit(x["train"], y["train"], seed=seed)
    fi = FastIF(model, x["train"], y["train"], solver=solver_name, lissa=lissa, k=min(k, len(labels)))
    t = time.perf_counter()
    nets = {prior: net_harm(model, x["train"], y["train"], x["valid"], y["valid"], fi.solver, seed=seed,
                            chunk_size=64, flat=fi.flat, prior=prior) for prior in ("model", "refit")}
    seconds = time.perf_counter() - t
    check = nets["refit"].prior
    auto = "refit" if refits_prior("auto", check.z, MIN_EVIDENCE) else "model"
    nets["auto"] = nets[auto]
    losses = row_losses(model, x["train"], y["train"])
    n, budget = len(labels), round(REMOVAL * len(labels))
    out = {}
    for prior, net in nets.items():
        combined = rank_fusion(net.score, losses)
        order = np.lexsort((np.arange(n), -combined))
        top, flags = order[:budget], floored_flags(order, budget, combined, net.t >= MIN_EVIDENCE)
        out[prior] = {"recall@10%": float(flipped[top].sum() / flipped.sum()), "flagged": int(len(flags)),
                      "flipped_in_flagged": int(flipped[flags].sum()),
                      "class_mix": np.bincount(labels[flags], minlength=ds.n_classes).tolist()}
    return {"version": __version__, "dataset": dataset, "noise": mode, "seed": seed, "model": model_name,
            "train_rows": n, "flipped": int(flipped.sum()), "valid_rows": len(y["valid"]),
            "prior_check": check.as_dict(), "auto": auto,
            "priors": out, "seconds_net_harm_both": seconds}


def summary(results_dir: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("class_prior-*.json"))]
    print("| dataset, noise, seed | validation rows | prior check z | auto takes | "
          + " | ".join(f"{p}: recall@10%, flags (flipped)" for p in ("model", "refit", "auto")) + " |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        cells = [f"{r['priors'][p]['recall@10%']:.3f}, {r['priors'][p]['flagged']} ({r['priors'][p]['flipped_in_flagged']})"
                 for p in ("model", "refit", "auto")]
        print(f"| {r['dataset']}, {r['noise']}, {r['seed']} | {r['valid_rows']} | {r['prior_check']['z']:.2f} | "
              f"{r['auto']} | " + " | ".join(cells) + " |")


def main() -> None:
    args = study_arguments().parse_args()
    if not args.summary:
        args.results.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for dataset in args.datasets:
                for mode in args.noise_modes:
                    for seed in args.seeds:
                        result = run(dataset, mode, seed, Path(tmp))
                        (args.results / f"class_prior-{dataset}-{mode}-{seed}.json").write_text(
                            json.dumps(result, indent=1))
                        print(json.dumps({k: result[k] for k in ("dataset", "noise", "seed", "auto")}
                                         | {"z": result["prior_check"]["z"]}), flush=True)
    summary(args.results)


if __name__ == "__main__":
    main()
