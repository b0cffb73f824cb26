"""Clean a dataset with the Hugging Face classifier you already have: ``model="hf:DIR"``.

Any ``AutoModelForSequenceClassification`` (BERT, RoBERTa, DistilBERT, DeBERTa, ModernBERT, GPT-2,
Llama, …) or ``AutoModelForImageClassification`` (ViT, ResNet, ConvNeXt, …) directory written by
``save_pretrained`` works, offline. ``layers=0`` takes influence over the classification head alone:
the checkpoint's base model runs once per split and its output is cached, so every gradient and
Hessian-vector product costs only the head. ``layers=N`` adds the top N blocks.

Without a checkpoint of your own, this writes one from the bundled MiniLM encoder (a pretrained
BERT-family model with a new two-class head), as a fine-tuning script would leave it.

    python examples/hf_checkpoint.py                       # the bundled encoder, head only
    python examples/hf_checkpoint.py --checkpoint my-model --layers 1
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

import fastif_engine
from fastif_engine.data.datasets import export


def bundled_checkpoint(folder: Path) -> Path:
    """The bundled MiniLM as a two-class sequence classifier, saved as a user's checkpoint would be."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastif_engine.models import encoder_path

    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_path(), num_labels=2, id2label={0: "fresh", 1: "rotten"}, label2id={"fresh": 0, "rotten": 1})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(encoder_path()).save_pretrained(folder)
    return folder


def main(checkpoint: str | None = None, layers: int = 0, max_train: int = 1000, out: str | None = None,
         **settings) -> fastif_engine.CleanResult:
    """Rotten Tomatoes with 20% of the labels flipped, cleaned through the checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("rotten-tomatoes", Path(tmp) / "data", noise=0.2,
                       max_train=max_train)
        frames = {split: pd.read_parquet(path) for split, path in paths.items()}
        folder = checkpoint or str(bundled_checkpoint(Path(tmp) / "checkpoint"))
        result = fastif_engine.clean(frames["train"], frames["valid"], frames["test"], model=f"hf:{folder}",
                                     model_options={"layers": layers}, out=out,
                                     **{"k": 200, "retrain": True, "seeds": 3, **settings})
    flipped = frames["train"]["noisy"].to_numpy()[result.flags["flagged"].to_numpy()]
    print(f"influence over {result.metrics['solver']['parameters']} parameters "
          f"({result.metrics['solver']['differentiated']})")
    print(f"{len(flipped)} rows flagged, {int(flipped.sum())} of them mislabelled; verdict: {result.verdict}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a directory written by save_pretrained (default: the bundled encoder)")
    ap.add_argument("--layers", type=int, default=0, help="top blocks differentiated with the head (0: the head)")
    ap.add_argument("--max-train", type=int, default=1000)
    args = ap.parse_args()
    main(args.checkpoint, args.layers, args.max_train)
