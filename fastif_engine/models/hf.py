"""``hf:PATH``: a local Hugging Face sequence classifier (what ``save_pretrained`` writes), as a model.

The checkpoint directory holds an ``AutoModelForSequenceClassification`` and its tokenizer.
As with ``text-minilm``, influence is taken over the top N encoder layers (``layers``, default
1) and the checkpoint's own head — for BERT-style encoders the pooler (first token, dense +
tanh) and the classifier; the embeddings and lower layers stay frozen and run once per split.
Features for the kNN search are what the classifier sees (the pooled vector). Training, and
every retrain, fine-tunes those layers starting from the checkpoint's weights; with
``--weights given`` the checkpoint is explained as it is.

Supported: encoders with BERT's layout (``model_type`` ``bert``: BERT, MiniLM, …). Any other
architecture is refused with its name.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from ..errors import ModelLoadError
from .text import MiniLMAdapter, _TopLayers
from .training import TrainSettings, seeded

SUPPORTED = ("bert",)  # model_type values whose layout (embeddings, encoder.layer, pooler, classifier) is read


class HFClassifierAdapter(MiniLMAdapter):
    """Args:
        path: the checkpoint directory.
        classes: the data's class names in code order (the checkpoint's ``id2label`` is matched to them).
        layers: top encoder layers fine-tuned and differentiated, with the head.
        max_length: tokens kept per text.
    """

    def __init__(self, n_classes: int, *, path: str, classes: tuple = (), layers: int = 1, max_length: int = 64,
                 l2: float = 1e-2,
                 settings: TrainSettings = TrainSettings(optimizer="adam", epochs=3, lr=1e-4, batch_size=32)):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        where = f"hf:{path}"
        if not (Path(path) / "config.json").exists():
            raise ModelLoadError(f"{where}: no config.json there (expected a directory written by save_pretrained)")
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in SUPPORTED:
            raise ModelLoadError(f"{where}: architecture {config.model_type!r} ({', '.join(config.architectures or [])}) "
                              f"is not supported; fastif reads BERT-style sequence classifiers "
                              f"(model_type {', '.join(SUPPORTED)})")
        if config.num_labels != n_classes:
            raise ModelLoadError(f"{where}: the checkpoint classifies {config.num_labels} classes, the data has {n_classes}")
        model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
        encoder = model.bert
        n_layers = len(encoder.encoder.layer)
        if not 1 <= layers <= n_layers:
            raise ModelLoadError(f"{where}: layers must be between 1 and {n_layers}, got {layers}")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.n_classes, self.top_layers, self.max_length = n_classes, layers, max_length
        self.l2, self.settings = l2, settings
        self.dim = config.hidden_size
        self._frozen_layers = nn.ModuleList(encoder.encoder.layer[: n_layers - layers])
        self._embeddings = encoder.embeddings
        for p in list(self._embeddings.parameters()) + list(self._frozen_layers.parameters()):
            p.requires_grad_(False)
        self._pretrained_top = [copy.deepcopy(layer) for layer in encoder.encoder.layer[n_layers - layers:]]
        self._pooler = copy.deepcopy(encoder.pooler)
        self._classifier = _in_class_order(copy.deepcopy(model.classifier), config.id2label, classes, where)
        with seeded(settings.seed):
            self._net = self._build()

    def _build(self) -> _TopLayers:
        """The checkpoint's top layers and head (training and retrains start from them)."""
        return _TopLayers([copy.deepcopy(layer) for layer in self._pretrained_top], self.dim, self.n_classes,
                          head=copy.deepcopy(self._classifier), pooler=copy.deepcopy(self._pooler)).eval()


def _in_class_order(classifier: nn.Linear, id2label: dict, classes: tuple, where: str) -> nn.Linear:
    """The classifier's rows reordered so that row i scores the data's class i.

    Named labels must be the data's classes (in any order); the default ``LABEL_0``, ``LABEL_1``, …
    are taken to be in the data's (sorted) order."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    wanted = [str(c) for c in classes]
    if not wanted or names == [f"LABEL_{i}" for i in range(len(names))] or names == wanted:
        return classifier
    if sorted(names) != sorted(wanted):
        raise ModelLoadError(f"{where}: the checkpoint's labels {names} are not the data's classes {wanted}")
    order = [names.index(c) for c in wanted]
    with_order = copy.deepcopy(classifier)
    with_order.weight.data = classifier.weight.data[order].clone()
    with_order.bias.data = classifier.bias.data[order].clone()
    return with_order
