"""The "passes" ratio per built-in model at default settings: influence stages ÷ the training stage.

    python benchmarks/passes.py [--demo-metrics runs/demo/metrics.json]

``fastif clean`` with only the data, ``--model`` and ``--no-retrain`` (every other setting at its
default) for the tabular models and image-cnn on digits (10% uniform flips; the tabular models
see the 64 pixels as columns) and text-minilm on a 400-row Rotten Tomatoes slice; with
``--demo-metrics`` the demo's own run is added. From each run's ``metrics.json`` timings: the
influence stages (resolve solver, s_test, influence + net harm — two stages before 0.3.3 —,
self-influence) divided by the same run's training stage. The ratio says how many training
runs' worth of work explaining the model costs; fixed costs (the solver's probes) dominate it
where training takes a second.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import fastif_engine
from fastif_engine.data.datasets import export, pixels_as_columns
from flows.cli import main as fastif
from _shared import results_dir

INFLUENCE_STAGES = ("resolve solver", "s_test", "influence", "net harm", "influence + net harm", "self-influence")
RESULTS = results_dir() / "passes.json"


def ratio(metrics: dict) -> dict:
    t = metrics["timings"]
    influence = sum(t.get(s, 0.0) for s in INFLUENCE_STAGES)
    return {"solver": metrics["solver"]["name"], "parameters": metrics["solver"]["parameters"],
            "train_s": round(t["train model"], 2), "influence_s": round(influence, 2),
            "passes": round(influence / t["train model"], 2),
            "stages": {s: t[s] for s in INFLUENCE_STAGES if s in t}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-metrics", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = export("digits", tmp / "digits", noise=0.1, seed=0)
        data = {"image": images, "tabular": pixels_as_columns(images)}
        text = export("rotten-tomatoes", tmp / "rt", noise=0.1, seed=0, max_train=400)
        runs = [("tabular-logreg", "digits", data["tabular"]), ("tabular-mlp", "digits", data["tabular"]),
                ("image-cnn", "digits", data["image"]), ("text-minilm", "rotten-tomatoes, 400 rows", text)]
        for model, dataset, paths in runs:
            out = tmp / model
            assert fastif(["clean", "--train", str(paths["train"]), "--valid", str(paths["valid"]),
                           "--out", str(out), "--model", model, "--no-retrain"]) == 0
            rows.append({"model": model, "data": dataset, **ratio(json.loads((out / "metrics.json").read_text()))})
    if args.demo_metrics:
        rows.append({"model": "text-minilm", "data": "the demo (2,000 rows)",
                     **ratio(json.loads(args.demo_metrics.read_text()))})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"version": fastif_engine.__version__, "runs": rows}, indent=1))
    print("| model | data | solver | parameters | training stage (s) | influence stages (s) | passes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['data']} | {r['solver']} | {r['parameters']:,} | {r['train_s']:.1f} | "
              f"{r['influence_s']:.1f} | **{r['passes']:.1f}** |")


if __name__ == "__main__":
    main()
