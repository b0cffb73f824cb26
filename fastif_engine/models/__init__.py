"""Built-in model adapters, each with the training recipe used for first training and retrains.

``create_model(name, info)`` builds one for a dataset: a built-in name
(``tabular-logreg``, ``tabular-mlp``, ``image-cnn``, ``text-minilm``) or
``package.module:callable``, the user's own factory, called as ``callable(info, **options)``
and returning a :class:`~fastif_engine.adapter.TrainableAdapter`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..adapter import TrainableAdapter
from ..errors import FastIFError
from .image import CNNAdapter
from .tabular import LogisticRegressionAdapter, MLPAdapter

BUILTIN_MODELS = {
    "tabular-logreg": "tabular",
    "tabular-mlp": "tabular",
    "image-cnn": "image",
    "text-minilm": "text",
}


class ModelLoadError(FastIFError):
    """A model name that is unknown, does not fit the data, or a user factory that fails."""


@dataclass(frozen=True)
class DataInfo:
    """What a model factory is told about the data."""

    modality: str  # "text" | "tabular" | "image"
    n_classes: int
    input_shape: tuple[int, ...]  # (F,) tabular, (1, H, W) image, () text


def create_model(name: str, info: DataInfo, **options) -> TrainableAdapter:
    if name in BUILTIN_MODELS:
        needs = BUILTIN_MODELS[name]
        if info.modality != needs:
            raise ModelLoadError(f"model {name} needs {needs} inputs, but the data has {info.modality} "
                                 f"inputs; pick a {info.modality} model or other columns")
        if name == "tabular-logreg":
            return LogisticRegressionAdapter(info.input_shape[0], info.n_classes, **options)
        if name == "tabular-mlp":
            return MLPAdapter(info.input_shape[0], info.n_classes, **options)
        if name == "image-cnn":
            _, h, w = info.input_shape
            if h != w:
                raise ModelLoadError(f"image-cnn needs square images, got {h}×{w}")
            return CNNAdapter(h, info.n_classes, **options)
        from .text import MiniLMAdapter  # transformers is slow to import: only when asked

        return MiniLMAdapter(info.n_classes, **options)
    if ":" not in name:
        raise ModelLoadError(f"unknown model {name!r}: use one of {', '.join(BUILTIN_MODELS)} "
                             "or package.module:callable")
    return load_user_model(name, info, **options)


def load_user_model(spec: str, info: DataInfo, **options) -> TrainableAdapter:
    """Import ``package.module:callable`` and call it with the data's :class:`DataInfo`."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelLoadError(f"--model {spec}: cannot import module {module_name!r} "
                             f"({type(exc).__name__}: {exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"--model {spec}: module {module_name!r} has no callable {attr!r}")
    try:
        adapter = factory(info, **options)
    except Exception as exc:
        raise ModelLoadError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(adapter, TrainableAdapter):
        raise ModelLoadError(f"--model {spec}: returned {type(adapter).__name__}, "
                             "not a fastif_engine.TrainableAdapter")
    return adapter


__all__ = ["BUILTIN_MODELS", "CNNAdapter", "DataInfo", "LogisticRegressionAdapter", "MLPAdapter",
           "ModelLoadError", "create_model", "load_user_model"]
