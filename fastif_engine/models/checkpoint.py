"""Reading a Hugging Face checkpoint directory, and the pieces that run it over a cached trunk.

:mod:`fastif_engine.models.hf` builds the adapter from these: what kind of classifier a directory
holds (or a one-line refusal), where a family keeps its blocks, the class-scoring layer, the label
order, and the modules that stand in for the part of the model that runs once per split
(:class:`CachedBase` for the whole base model, :class:`FromCache` for the blocks below the
differentiated ones). BERT-layout checkpoints with blocks differentiated run on text-minilm's packed
path instead (:class:`BertCheckpointAdapter`).
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .text import MiniLMAdapter, _TopLayers
from .training import TrainSettings, seeded

log = logging.getLogger("fastif")

# Where each family keeps its list of blocks, from the base model (the first path that exists: layouts
# move between transformers releases, e.g. ViT's from encoder.layer to layers). Others run head-only.
BLOCKS = {
    "bert": "encoder.layer", "roberta": "encoder.layer", "xlm-roberta": "encoder.layer",
    "camembert": "encoder.layer", "electra": "encoder.layer", "deberta": "encoder.layer",
    "deberta-v2": "encoder.layer", "mpnet": "encoder.layer", "distilbert": "transformer.layer",
    "modernbert": "layers", "gpt2": "h", "llama": "layers", "qwen2": "layers", "qwen3": "layers",
    "mistral": "layers", "vit": "layers|encoder.layer", "resnet": "encoder.stages", "convnext": "encoder.stages",
}
FIRST_ARGUMENT = ("hidden_states", "hidden_state", "x", "hidden_states_input")  # a block's input, when passed by name
TEXT_SETTINGS = TrainSettings(optimizer="adam", epochs=3, lr=1e-4, batch_size=32)
HEAD_SETTINGS = TrainSettings(optimizer="adam", epochs=20, lr=1e-3, batch_size=32, schedule="linear")


def recipe(layers: int | None) -> TrainSettings:
    """The training recipe a checkpoint is fine-tuned with: a few epochs at a small rate where blocks
    are differentiated (as text-minilm), more at a larger rate for a head alone over the cached trunk."""
    return HEAD_SETTINGS if layers == 0 else TEXT_SETTINGS


class Captured(Exception):
    """Stops a forward pass once the input of the first differentiated block is recorded."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _hidden_name(args: tuple, kwargs: dict) -> str | None:
    """Where a block's hidden-state input is: ``None`` for the first positional argument, else its keyword."""
    if args:
        return None
    for name in FIRST_ARGUMENT:
        if name in kwargs:
            return name
    raise ModelLoadError(f"a block was called without a hidden-state argument (got {sorted(kwargs)})")


def first_argument(args: tuple, kwargs: dict):
    """A block's hidden-state input, as it was called."""
    name = _hidden_name(args, kwargs)
    return args[0] if name is None else kwargs[name]


class Rows:
    """The inputs of the forward pass now running, read by :class:`CachedBase` and :class:`FromCache`."""

    current: dict | None = None


class FromCache:
    """Forward pre-hook on the first differentiated block: its input becomes the cached ``hidden``."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __call__(self, module, args, kwargs):
        hidden, name = self.rows.current["hidden"], _hidden_name(args, kwargs)
        return ((hidden, *args[1:]), kwargs) if name is None else (args, {**kwargs, name: hidden})


class CachedBase(nn.Module):
    """Stands in for the checkpoint's base model (head-only): its cached output for the rows now running."""

    def __init__(self, output_type: type, fields: tuple[str, ...], rows: Rows, unused: tuple[str, ...] = ()):
        super().__init__()
        self.output_type, self.fields, self.rows, self.unused = output_type, fields, rows, unused

    def forward(self, *args, **kwargs):
        out = {f: self.rows.current["base_" + f] for f in self.fields}
        some = next(iter(out.values()))
        # a field the head never reads keeps its place in the output (heads index it as a tuple)
        out.update({f: some.new_zeros(len(some), 1) for f in self.unused})
        return self.output_type(**out)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[n, L]`` 0/1 → ``[n, 1, 1, L]`` scores added before the softmax (a prepared mask: transformers
    builds none, and its builder's check of whether any token is padded cannot run under vmap)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class CheckpointNet(nn.Module):
    """The checkpoint with its trunk cached: ``inputs`` (a dict) → logits."""

    def __init__(self, hf: nn.Module, modality: str, rows: Rows):
        super().__init__()
        self.hf, self.modality, self.rows = hf, modality, rows
        self.mask_form = "2d"  # "4d": an additive mask is passed (see additive_mask)

    def forward(self, inputs: dict) -> torch.Tensor:
        self.rows.current = inputs
        try:
            if self.modality == "image":
                return self.hf(pixel_values=inputs.get("pixels")).logits
            mask = inputs["mask"]
            if self.mask_form == "4d":
                mask = additive_mask(mask, next(self.parameters()).dtype)
            return self.hf(input_ids=inputs["input_ids"], attention_mask=mask).logits
        finally:
            self.rows.current = None


def fields_read(full: nn.Module, modality: str, probe: dict, out) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(read, ignored)``: the base model's output fields (``out``, on the ``probe`` rows) that the
    checkpoint's head reads, and those it ignores. An ignored field is not cached: filled with NaN
    in the stand-in, it leaves the logits finite."""
    fields = tuple(k for k, v in out.items() if torch.is_tensor(v))
    read = []
    for f in fields:
        rows = Rows()
        hf = copy.copy(full)
        hf._modules = {**full._modules, full.base_model_prefix: CachedBase(type(out), fields, rows)}
        cached = {"base_" + k: (torch.full_like(out[k], float("nan")) if k == f else out[k]) for k in fields}
        with torch.no_grad():
            if not torch.isfinite(CheckpointNet(hf, modality, rows)({**probe, **cached})).all():
                read.append(f)
    return tuple(read), tuple(f for f in fields if f not in read)


def run_after(net: CheckpointNet, blocks: nn.ModuleList, probe: dict) -> list[nn.Module]:
    """The base model's modules with parameters that run after the blocks (a pooler, a final norm),
    differentiated with them: found by running ``probe`` and watching the order of calls."""
    inside = {id(m) for m in blocks.modules()}
    owners = [m for m in net.hf.base_model.modules()
              if id(m) not in inside and any(True for _ in m.parameters(recurse=False))]
    started, after = [], []
    handles = [blocks[0].register_forward_pre_hook(lambda module, args: started.append(True))]
    handles += [m.register_forward_pre_hook(lambda module, args: after.append(module) if started and module
                                            not in after else None) for m in owners]
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for h in handles:
            h.remove()
    return after


def submodule(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def blocks_path(base: nn.Module, family: str) -> str | None:
    """Where ``family``'s blocks are in ``base``, or None where fastif does not know."""
    for path in BLOCKS.get(family, "").split("|"):
        try:
            if path and isinstance(submodule(base, path), nn.ModuleList):
                return path
        except AttributeError:
            continue
    return None


def set_submodule(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(submodule(root, parent) if parent else root, name, value)


def class_head(model: nn.Module, n_classes: int) -> nn.Linear:
    """The head's last ``nn.Linear`` to ``n_classes`` outputs: the one that scores the classes."""
    prefix = model.base_model_prefix + "."
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(prefix)
               and m.out_features == n_classes]
    if not linears:
        raise ModelLoadError(f"found no linear layer with {n_classes} outputs in the classification head")
    return linears[-1]


def in_class_order(linear: nn.Linear, id2label: dict, classes: tuple, where: str) -> None:
    """Reorder the class-scoring rows (in place) so that row i scores the data's class i.

    Named labels must be the data's classes (in any order); the default ``LABEL_0``, ``LABEL_1``, …
    are taken to be in the data's (sorted) order."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    wanted = [str(c) for c in classes]
    if not wanted or names == [f"LABEL_{i}" for i in range(len(names))] or names == wanted:
        return
    if sorted(names) != sorted(wanted):
        raise ModelLoadError(f"{where}: the checkpoint's labels {names} are not the data's classes {wanted}")
    order = [names.index(c) for c in wanted]
    with torch.no_grad():
        linear.weight.copy_(linear.weight[order].clone())
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[order].clone())


def read_checkpoint(path: str, n_classes: int, modality: str):
    """``(config, kind)`` for a checkpoint directory, ``kind`` "text" or "image"; a one-line
    :class:`ModelLoadError` for anything fastif cannot load (and what would work instead)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    where = f"hf:{path}"
    if not (Path(path) / "config.json").exists():
        raise ModelLoadError(f"{where}: no config.json there (expected a directory written by save_pretrained)")
    other = ("wrap the model in fastif_engine.TorchClassifier (any nn.Module), or use a Hugging Face "
             "sequence or image classifier")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # an unknown model_type: remote code, or a newer transformers than this one
        raise ModelLoadError(f"{where}: transformers cannot read this config without running the checkpoint's "
                             f"own code ({str(exc).splitlines()[0][:160]}); fastif does not run remote code: "
                             f"{other}") from None
    if getattr(config, "auto_map", None):
        raise ModelLoadError(f"{where}: the checkpoint needs its own code (auto_map in config.json); fastif "
                             f"does not run remote code: {other}")
    kinds = {"text": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "image": MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES}
    kind = next((k for k, names in kinds.items() if config.model_type in names), None)
    if kind is None:
        raise ModelLoadError(f"{where}: {config.model_type!r} ({', '.join(config.architectures or [])}) has no "
                             f"sequence or image classification model in transformers; {other}")
    if kind != modality:
        raise ModelLoadError(f"{where}: a {'text' if kind == 'text' else 'image'} classifier, but the data has "
                             f"{modality} inputs")
    return config, kind


def from_pretrained(auto, path: str, extra: dict) -> nn.Module:
    """The checkpoint's model in eval mode (eager attention: the one every family has); a one-line
    :class:`ModelLoadError` when its files do not load."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return auto.from_pretrained(path, attn_implementation="eager", **extra).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"hf:{path}: the checkpoint does not load ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None


def is_classifier(config) -> bool:
    return any(a.endswith(("ForSequenceClassification", "ForImageClassification")) for a in config.architectures or [])


class BertCheckpointAdapter(MiniLMAdapter):
    """A BERT-layout checkpoint (``model_type`` ``bert``: BERT, MiniLM, …) with its top ``layers`` encoder
    layers, pooler and classifier differentiated, on text-minilm's packed path (the top layers run on
    the real tokens only). Same arguments as :class:`HFClassifierAdapter`."""

    def __init__(self, n_classes: int, *, path: str, classes: tuple = (), layers: int | None = 1,
                 max_length: int = 64, l2: float = 1e-2, settings: TrainSettings | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        where = f"hf:{path}"
        config, _ = read_checkpoint(path, n_classes, "text")
        if is_classifier(config) and config.num_labels != n_classes:
            raise ModelLoadError(f"{where}: the checkpoint classifies {config.num_labels} classes, the data has {n_classes}")
        layers = 1 if layers is None else layers
        settings = settings or recipe(layers)
        with seeded(settings.seed):
            model = from_pretrained(AutoModelForSequenceClassification, path,
                                     {} if is_classifier(config) else {"num_labels": n_classes})
        encoder = model.bert
        n_layers = len(encoder.encoder.layer)
        if not isinstance(layers, int) or not 1 <= layers <= n_layers:
            raise ModelLoadError(f"{where}: layers must be between 0 and {n_layers}, got {layers!r}")
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
        self._classifier = copy.deepcopy(model.classifier)
        if is_classifier(config):
            in_class_order(self._classifier, config.id2label, classes, where)
        with seeded(settings.seed):
            self._net = self._build()
        log.info("%s: BertForSequenceClassification, the top %d layer%s, pooler and classifier: %d parameters "
                 "differentiated", where, layers, "s" if layers > 1 else "",
                 sum(p.numel() for p in self._net.parameters() if p.requires_grad))

    def _build(self) -> _TopLayers:
        """The checkpoint's top layers and head (training and retrains start from them)."""
        return _TopLayers([copy.deepcopy(layer) for layer in self._pretrained_top], self.dim, self.n_classes,
                          head=copy.deepcopy(self._classifier), pooler=copy.deepcopy(self._pooler)).eval()
