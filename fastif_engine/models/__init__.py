"""Built-in model adapters, each with the training recipe used for first training and retrains.

``create_model(name, info)`` builds one for a dataset: a built-in name
(``tabular-logreg``, ``tabular-mlp``, ``image-cnn``, ``text-minilm``) or
``package.module:callable``, the user's own factory, called as ``callable(info, **options)``
and returning a :class:`~fastif_engine.adapter.TrainableAdapter`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

from ..adapter import TrainableAdapter
from ..errors import FastIFError
from ..training import TrainSettings
from .image import CNNAdapter
from .tabular import LogisticRegressionAdapter, MLPAdapter

# Options of every built-in that change its training recipe rather than its architecture.
RECIPE_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainSettings) if f.name != "seed")
_DATA_ARGUMENTS = {"self", "n_features", "n_classes", "side", "settings", "dtype", "path"}

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


def _builtin_class(name: str):
    if name == "tabular-logreg":
        return LogisticRegressionAdapter
    if name == "tabular-mlp":
        return MLPAdapter
    if name == "image-cnn":
        return CNNAdapter
    from .text import MiniLMAdapter  # transformers is slow to import: only when asked

    return MiniLMAdapter


def _number(value):
    """YAML 1.1 reads ``1e-3`` as a string: accept numeric strings for the numeric options."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def builtin_options(name: str, options: dict) -> dict:
    """Check a built-in's options; recipe options (epochs, lr, …) become its ``settings``.

    Raises ModelLoadError naming an unknown option, or a recipe value that is out of range.
    """
    cls = _builtin_class(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted((set(params) - _DATA_ARGUMENTS) | set(RECIPE_OPTIONS))
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ModelLoadError(f"model {name}: unknown option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(k) for k in unknown)} (options: {', '.join(allowed)})")
    kwargs = {k: v for k, v in options.items() if k not in RECIPE_OPTIONS}
    recipe = {k: _number(v) for k, v in options.items() if k in RECIPE_OPTIONS}
    if recipe:
        try:
            kwargs["settings"] = dataclasses.replace(params["settings"].default, **recipe)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"model {name}: {exc}") from None
    return kwargs


def model_recipe(name: str) -> dict:
    """What a trained model depends on besides the data, its options and the seed, for cache keys:
    a built-in's constructor defaults (architecture and training settings), a user factory's
    module file. A changed recipe is a different model: nothing trained under the old one is reused."""
    if name in BUILTIN_MODELS:
        params = inspect.signature(_builtin_class(name).__init__).parameters
        return {k: (dataclasses.asdict(p.default) if dataclasses.is_dataclass(p.default) else repr(p.default))
                for k, p in params.items() if p.default is not inspect.Parameter.empty and k != "path"}
    module = name.partition(":")[0]
    try:
        origin = importlib.util.find_spec(module).origin
        return {"module": module, "source": hashlib.sha256(Path(origin).read_bytes()).hexdigest()}
    except Exception:  # not importable here (validation says so) or not a file: the name alone
        return {"module": module}


def create_model(name: str, info: DataInfo, **options) -> TrainableAdapter:
    if name in BUILTIN_MODELS:
        needs = BUILTIN_MODELS[name]
        if info.modality != needs:
            raise ModelLoadError(f"model {name} needs {needs} inputs, but the data has {info.modality} "
                                 f"inputs; pick a {info.modality} model or other columns")
        kwargs = builtin_options(name, options)
        try:
            if name in ("tabular-logreg", "tabular-mlp"):
                return _builtin_class(name)(info.input_shape[0], info.n_classes, **kwargs)
            if name == "image-cnn":
                _, h, w = info.input_shape
                if h != w:
                    raise ModelLoadError(f"image-cnn needs square images, got {h}×{w}")
                return CNNAdapter(h, info.n_classes, **kwargs)
            return _builtin_class(name)(info.n_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"model {name}: {exc}") from None
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


__all__ = ["BUILTIN_MODELS", "RECIPE_OPTIONS", "builtin_options", "model_recipe", "CNNAdapter", "DataInfo", "LogisticRegressionAdapter", "MLPAdapter",
           "ModelLoadError", "create_model", "load_user_model"]
