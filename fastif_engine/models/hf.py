"""``hf:PATH``: a local Hugging Face classifier (what ``save_pretrained`` writes), as a model.

The directory holds an ``AutoModelForSequenceClassification`` (with its tokenizer; text data) or an
``AutoModelForImageClassification`` (with its image processor; an ``image`` column). Any family
transformers loads offline works, encoders and decoders alike; a checkpoint with no classification
head (``BertModel``, a masked LM) gets a new one for the data's classes.

What is differentiated, by ``layers``:

* ``layers=0``, the head: every parameter outside the checkpoint's base model (BERT's classifier,
  RoBERTa's dense + out_proj, DistilBERT's pre_classifier + classifier, GPT-2's score, ViT's
  classifier, …). The base model runs once per split in :meth:`HFClassifierAdapter.prepare`; its
  output is cached and stands in for it (``checkpoint.CachedBase``), so the head runs as the
  checkpoint's own forward runs it (pooling, a decoder's last-token pick). Works for every family.
* ``layers=N`` (the default, 1), the top N blocks, what runs after them in the base model (BERT's
  pooler, a final norm) and the head, for the families whose block list is known
  (``checkpoint.BLOCKS``). The input of the first differentiated block is cached; the lower blocks
  are dropped from the model that is differentiated, and a hook (``checkpoint.FromCache``) hands
  the cached input to its first block.

Loading checks that the cached path reproduces the checkpoint's logits and that per-example
gradients run through it, and says in one line what does not work and what would. BERT-layout
checkpoints with ``layers`` ≥ 1 run on text-minilm's packed path (:class:`BertCheckpointAdapter`).

Training, and every retrain, fine-tunes the differentiated part starting from the checkpoint's
weights; with ``--weights given`` the checkpoint is explained as it is.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..adapter import TrainableAdapter
from ..data.batching import chunk_slices
from ..errors import ModelLoadError
from ..influence.gradients import parameter_summary
from .checkpoint import (TEXT_SETTINGS, BertCheckpointAdapter, CachedBase, Captured, CheckpointNet, FromCache,
                         Rows, blocks_path, class_head, fields_read, first_argument, from_pretrained, in_class_order,
                         is_classifier, read_checkpoint, recipe, run_after, set_submodule, submodule)
from .training import TrainSettings, seeded, train

log = logging.getLogger("fastif")

PROBE_TEXTS = ["a probe", "a somewhat longer probe sentence, to pad the first", "three words here", "x"]


def load_checkpoint(n_classes: int, *, path: str, classes: tuple = (), modality: str = "text", **options):
    """The adapter for checkpoint ``path``: BERT-layout encoders with blocks differentiated take
    text-minilm's packed path (:class:`BertCheckpointAdapter`), everything else :class:`HFClassifierAdapter`."""
    config, _ = read_checkpoint(path, n_classes, modality)
    if config.model_type == "bert" and options.get("layers") != 0:
        return BertCheckpointAdapter(n_classes, path=path, classes=classes, **options)
    return HFClassifierAdapter(n_classes, path=path, classes=classes, modality=modality, **options)


class HFClassifierAdapter(TrainableAdapter):
    """Args:
        path: the checkpoint directory.
        classes: the data's class names in code order (the checkpoint's ``id2label`` is matched to them).
        modality: "text" or "image", the data's.
        layers: top blocks fine-tuned and differentiated with the head; 0 = the head alone. Default:
            1 where the family's blocks are known (``checkpoint.BLOCKS``), else 0.
        max_length: tokens kept per text (at most the checkpoint's own limit).
        settings: the training recipe; by default :func:`recipe` for ``layers``.
    """

    def __init__(self, n_classes: int, *, path: str, classes: tuple = (), modality: str = "text",
                 layers: int | None = None, max_length: int = 64, l2: float = 1e-2,
                 settings: TrainSettings | None = None):
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

        config, kind = read_checkpoint(path, n_classes, modality)
        where = f"hf:{path}"
        self.where, self.modality, self.n_classes, self.l2 = where, kind, n_classes, l2
        auto = AutoModelForSequenceClassification if kind == "text" else AutoModelForImageClassification
        fresh_head = not is_classifier(config)
        if not fresh_head and config.num_labels != n_classes:
            raise ModelLoadError(f"{where}: the checkpoint classifies {config.num_labels} classes, the data has {n_classes}")
        extra = {"num_labels": n_classes} if fresh_head else {}
        with seeded((settings or TEXT_SETTINGS).seed):  # a new head is drawn from the seed, as every built-in's
            full = from_pretrained(auto, path, extra)
        if fresh_head:
            log.info("%s: no classification head in the checkpoint (%s): a new one for the data's %d classes",
                     where, ", ".join(config.architectures or [config.model_type]), n_classes)
        else:
            in_class_order(class_head(full, n_classes), config.id2label, classes, where)
        for p in full.parameters():
            p.requires_grad_(False)
        self.family = config.model_type
        if kind == "text":
            self._load_tokenizer(path, full, max_length)
        else:
            self._load_processor(path, full)
        self._full = full  # runs the trunk in prepare (frozen, never differentiated)
        if layers is None:  # the default: the top block where the family's blocks are known, else the head
            layers = 1 if blocks_path(full.base_model, self.family) is not None else 0
        self.layers = layers
        n_blocks = self._n_blocks(layers)
        self.settings = settings or recipe(layers)
        if layers == 0:
            self._fields = self._base_fields()
        self._template = self._differentiated(n_blocks)
        self._check()
        self._net = self._build()
        names = self.parameter_names()
        log.info("%s: %s (%s), %s: %d parameters differentiated (%s)", where, type(full).__name__, self.family,
                 "the head only" if layers == 0 else f"the top {layers} block{'s' if layers > 1 else ''} and the head",
                 sum(p.numel() for n, p in self._net.named_parameters() if n in set(names)), parameter_summary(names))

    # ---- loading ----

    def _load_tokenizer(self, path: str, full: nn.Module, max_length: int) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "right"  # rows are right-padded into one [n, max_length] layout
        if tok.pad_token is None:  # decoders (GPT-2, Llama) ship without one: pad with end-of-text
            if tok.eos_token is None and tok.unk_token is None:
                raise ModelLoadError(f"{self.where}: the tokenizer has no pad, end-of-text or unknown token to pad with")
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        if full.config.pad_token_id is None:  # a decoder's classifier finds each row's last token by it
            full.config.pad_token_id = tok.pad_token_id
        limits = [max_length, getattr(full.config, "max_position_embeddings", None), tok.model_max_length]
        self.max_length = int(min(v for v in limits if isinstance(v, int) and v > 0))
        self.tokenizer = tok

    def _load_processor(self, path: str, full: nn.Module) -> None:
        from transformers import AutoImageProcessor

        if not (Path(path) / "preprocessor_config.json").exists():
            raise ModelLoadError(f"{self.where}: no preprocessor_config.json (save the image processor with "
                                 "save_pretrained beside the model)")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.processor = AutoImageProcessor.from_pretrained(path)
        self.channels = int(getattr(full.config, "num_channels", 3))

    def _n_blocks(self, layers: int) -> int:
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
            raise ModelLoadError(f"{self.where}: layers must be a whole number >= 0, got {layers!r}")
        if layers == 0:
            return 0
        self._path = blocks_path(self._full.base_model, self.family)
        if self._path is None:
            raise ModelLoadError(f"{self.where}: fastif does not know where {self.family!r} keeps its blocks, so "
                                 "layers must be 0 (the head only)")
        blocks = submodule(self._full.base_model, self._path)
        if not 1 <= layers <= len(blocks):
            raise ModelLoadError(f"{self.where}: layers must be between 0 and {len(blocks)}, got {layers}")
        return len(blocks)

    def _differentiated(self, n_blocks: int) -> CheckpointNet:
        """The model that is run and differentiated: the checkpoint with its trunk replaced by the cache
        (the base model, or its lower blocks), the differentiated parameters trainable, the rest frozen."""
        hf = copy.copy(self._full)  # shallow copies down to the replaced module; deep-copied below
        hf._modules = dict(self._full._modules)
        prefix = self._full.base_model_prefix
        rows = Rows()
        if self.layers == 0:
            hf._modules[prefix] = CachedBase(type(self._probe_output), self._fields, rows, self._unused)
            net = copy.deepcopy(CheckpointNet(hf, self.modality, rows))
            for p in net.parameters():
                p.requires_grad_(True)  # the base model is gone: what is left is the head
            return net
        base = copy.copy(self._full.base_model)
        base._modules = dict(base._modules)
        path = self._path
        owner_path, _, attr = path.rpartition(".")
        owner = base
        if owner_path:
            owner = copy.copy(submodule(base, owner_path))
            owner._modules = dict(owner._modules)
            set_submodule(base, owner_path, owner)
        owner._modules[attr] = nn.ModuleList(list(getattr(owner, attr))[n_blocks - self.layers:])
        hf._modules[prefix] = base
        net = copy.deepcopy(CheckpointNet(hf, self.modality, rows))
        blocks = submodule(net.hf.base_model, path)
        blocks[0].register_forward_pre_hook(FromCache(net.rows), with_kwargs=True)
        trainable = [m for n, m in net.hf.named_modules() if not n.startswith(prefix + ".") and n != prefix]
        probe = self.trim_batch(self.prepare(self._probe_values()))
        for module in [*trainable, blocks, *run_after(net, blocks, probe)]:
            for p in module.parameters(recurse=module is blocks):
                p.requires_grad_(True)
        return net

    def _base_fields(self) -> tuple[str, ...]:
        """The base model's output fields the head reads (see :func:`~.checkpoint.fields_read`)."""
        probe = self._encode(self._probe_values())
        with torch.no_grad():
            self._probe_output = self._run_base(probe)
        used, self._unused = fields_read(self._full, self.modality, probe, self._probe_output)
        return used

    # ---- the trunk, run once per split ----

    def _probe_values(self):
        """A few rows to check the cached path on: texts of several lengths, or random 32×32 images."""
        if self.modality == "image":
            return np.random.default_rng(0).uniform(0, 255, size=(3, 1, 32, 32)).astype(np.float32)
        return PROBE_TEXTS

    def _encode(self, values) -> dict:
        """Raw inputs of one chunk: tokens (right-padded to the chunk's longest) or pixel values."""
        if self.modality == "image":
            images = np.clip(np.round(np.asarray(values, dtype=np.float32)), 0, 255).astype(np.uint8)[:, 0]
            images = np.repeat(images[..., None], self.channels, axis=-1)  # [n, H, W, C]
            return {"pixels": self.processor(images=list(images), return_tensors="pt")["pixel_values"]}
        enc = self.tokenizer(list(values), truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "mask": enc["attention_mask"]}

    def _run_base(self, raw: dict):
        if self.modality == "image":
            return self._full.base_model(pixel_values=raw["pixels"])
        return self._full.base_model(input_ids=raw["input_ids"], attention_mask=raw["mask"])

    def _block_input(self, raw: dict) -> torch.Tensor:
        """The input of the first differentiated block, computed by the checkpoint's own forward."""
        blocks = submodule(self._full.base_model, self._path)

        def capture(module, args, kwargs):
            raise Captured(first_argument(args, kwargs))

        handle = blocks[len(blocks) - self.layers].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self._run_base(raw)
        except Captured as got:
            return got.hidden
        finally:
            handle.remove()
        raise ModelLoadError(f"{self.where}: the first differentiated block never ran")

    @property
    def rows_on_disk(self) -> tuple[str, ...]:  # what the flow writes to disk and reads by rows
        return ("hidden", "pixels") + tuple("base_" + f for f in getattr(self, "_fields", ()))

    @torch.no_grad()
    def prepare(self, values, chunk_size: int = 128) -> dict:
        """Run the trunk once: ``{"input_ids", "mask"}`` (text, ``[n, max_length]``) or ``{"pixels"}``
        (image, where blocks are differentiated), and the cache: ``hidden`` (the first differentiated
        block's input) or ``base_<field>`` (the base model's output the head reads). Texts run in
        chunks of similar length and land right-padded with zeros; nothing reads a pad position."""
        values = list(values) if self.modality == "text" else np.asarray(values)
        n = len(values)
        order = np.arange(n)
        if self.modality == "text":
            lengths = [len(t) for t in self.tokenizer(values, truncation=True, max_length=self.max_length)["input_ids"]]
            order = np.argsort(lengths, kind="stable")
        out: dict[str, torch.Tensor] = {}
        for part in chunk_slices(n, chunk_size):
            rows = order[part]
            raw = self._encode([values[i] for i in rows] if self.modality == "text" else values[rows])
            if self.layers == 0:
                base = self._run_base(raw)
                cached = {"base_" + f: base[f] for f in self._fields}
                if self.modality == "image":
                    raw = {}
            else:
                cached = {"hidden": self._block_input(raw)}
            for name, tensor in {**raw, **cached}.items():
                if name not in out:
                    shape = list(tensor.shape)
                    shape[0] = n
                    if self._sequence(name, tensor):
                        shape[1] = self.max_length
                    out[name] = torch.zeros(shape, dtype=tensor.dtype)
                if self._sequence(name, tensor):
                    out[name][rows, :tensor.shape[1]] = tensor
                else:
                    out[name][rows] = tensor
        return out

    def _sequence(self, name: str, tensor: torch.Tensor) -> bool:
        """Whether a text input leaf has a token dimension (dim 1), padded to ``max_length``."""
        return self.modality == "text" and (name in ("input_ids", "mask") or tensor.dim() >= 3)

    def trim_batch(self, inputs: dict) -> dict:
        if self.modality != "text":
            return inputs
        width = int(inputs["mask"].sum(1).max()) if len(inputs["mask"]) else 1
        return {k: v[:, :width] if self._sequence(k, v) else v for k, v in inputs.items()}

    def row_lengths(self, inputs: dict):
        return inputs["mask"].sum(1).cpu().numpy() if self.modality == "text" else None

    # ---- the model ----

    @property
    def model(self) -> nn.Module:
        return self._net

    def parameter_names(self) -> list[str]:
        return [n for n, p in self._net.named_parameters() if p.requires_grad]

    def _build(self) -> CheckpointNet:
        """A fresh copy of the checkpoint's differentiated part (every fit starts from it)."""
        return copy.deepcopy(self._template).eval()

    @torch.no_grad()
    def features(self, inputs: dict) -> torch.Tensor:
        """What the class-scoring layer sees; for a decoder's, which scores every token, the row's last."""
        seen = []
        hook = class_head(self._net.hf, self.n_classes).register_forward_hook(
            lambda mod, args, out: seen.append(args[0]))
        try:
            self._net(inputs)
        finally:
            hook.remove()
        x = seen[-1]
        if x.dim() == 3:
            last = (inputs["mask"].sum(1) - 1).clamp_min(0)
            x = x[torch.arange(len(x), device=x.device), last]
        return x.reshape(len(x), -1)

    def fit(self, inputs: dict, labels: torch.Tensor, seed: int = 0) -> "HFClassifierAdapter":
        """Restart from the checkpoint's weights and fine-tune the differentiated part."""
        with seeded(seed):
            self._net = self._placed(self._build())
            train(self, inputs, labels, dataclasses.replace(self.settings, seed=seed))
        return self

    # ---- the load-time check ----

    def _check(self) -> None:
        """The cached path gives the checkpoint's own logits on a probe batch, and per-example gradients
        run through it: with the mask as transformers takes it, else prepared (``additive_mask``)."""
        from ..influence.gradients import per_sample_gradients

        probe = self._probe_values()
        inputs = self.prepare(probe)
        raw = self._encode(probe)
        with torch.no_grad():
            expected = (self._full(pixel_values=raw["pixels"]) if self.modality == "image" else
                        self._full(input_ids=raw["input_ids"], attention_mask=raw["mask"])).logits
        labels = torch.arange(len(probe)) % self.n_classes
        problems = []
        for form in (("2d", "4d") if self.modality == "text" else ("2d",)):
            self._template.mask_form = form
            with torch.no_grad():
                got = self._template(self.trim_batch(inputs))
            if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
                problems.append(f"with a {form} mask the cached path gives other logits than the checkpoint "
                                f"(largest difference {float((got - expected).abs().max()):.3g})")
                continue
            self._net = self._template
            try:
                for _ in per_sample_gradients(self, inputs, labels, chunk_size=len(probe)):
                    pass
            except Exception as exc:  # noqa: BLE001 - reported in the one line below
                problems.append(f"with a {form} mask per-example gradients fail ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120]})")
                continue
            self._limit_window(form)
            return
        fix = "" if self.layers == 0 else "; layers=0 (the head only) avoids the blocks"
        raise ModelLoadError(f"{self.where}: {self.family} with layers={self.layers} cannot be differentiated "
                             f"here: {'; '.join(problems)}{fix}")

    def _limit_window(self, form: str) -> None:
        """A prepared mask is used for every layer: local (sliding-window) attention is then right
        only where every text fits its window."""
        window = getattr(self._full.config, "local_attention", None)
        if form == "4d" and self.layers and window and self.max_length > window // 2:
            raise ModelLoadError(f"{self.where}: {self.family}'s local attention (window {window}) with "
                                 f"layers={self.layers} needs max_length <= {window // 2}, got {self.max_length}; "
                                 "lower max_length, or layers=0 (the head only)")
