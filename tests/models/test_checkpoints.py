"""``hf:DIR`` for every family: tiny random-initialised checkpoints written with save_pretrained here.

The cached trunk must be invisible: the adapter's logits are the checkpoint's own, its per-example
gradients are those of the full model over the same parameters (a loop of autograd calls on the
checkpoint, no cache), and its influence is the one an explicit Hessian of the full model gives.
"""
import numpy as np
import pytest
import torch

from fastif_engine import FastIF, LissaSettings
from fastif_engine.data.batching import take
from fastif_engine.influence.gradients import gradient_matrix
from fastif_engine.models import DataInfo, ModelLoadError, create_model
from fastif_engine.models.hf import BertCheckpointAdapter, HFClassifierAdapter
from fastif_engine.models.tiny import IMAGE_FAMILIES, TEXT_FAMILIES, write_checkpoint

TEXTS = ["a delight from start to finish", "dull", "not bad at all, really not bad", "the plot makes no sense",
         "one of the best of the year", "sharp, funny and warm", "a tedious, overlong and joyless mess", "fine"]
WITH_BLOCKS = [f for f in TEXT_FAMILIES + IMAGE_FAMILIES if f != "albert"]  # ALBERT shares one set of weights


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {f: write_checkpoint(f, root / f, n_classes=2) for f in TEXT_FAMILIES + IMAGE_FAMILIES}


def values_for(family: str, n: int = 8):
    if family in IMAGE_FAMILIES:
        return np.random.default_rng(0).uniform(0, 255, size=(n, 1, 20, 20)).astype(np.float32)
    return TEXTS[:n]


def load(checkpoints, family: str, layers: int) -> HFClassifierAdapter:
    info = DataInfo("image" if family in IMAGE_FAMILIES else "text", 2, ())
    adapter = create_model(f"hf:{checkpoints[family]}", info, layers=layers)
    if family == "bert" and layers:
        assert isinstance(adapter, BertCheckpointAdapter)  # the packed path
        pytest.skip("BERT with blocks runs on text-minilm's path (tests/models/test_models.py)")
    return adapter


def full_model_inputs(adapter: HFClassifierAdapter, values) -> dict:
    raw = adapter._encode(values)
    return {"pixel_values": raw["pixels"]} if "pixels" in raw else {"input_ids": raw["input_ids"],
                                                                   "attention_mask": raw["mask"]}


def full_name(adapter: HFClassifierAdapter, name: str) -> str:
    """The checkpoint's own name of a differentiated parameter (its blocks renumbered: the lower ones dropped)."""
    name = name.removeprefix("hf.")
    if adapter.layers:
        blocks = f"{adapter._full.base_model_prefix}.{adapter._path}."
        if name.startswith(blocks):
            i, _, rest = name[len(blocks):].partition(".")
            n = len(torch.nn.Module.get_submodule(adapter._full.base_model, adapter._path))
            name = f"{blocks}{int(i) + n - adapter.layers}.{rest}"
    return name


def full_loss(adapter: HFClassifierAdapter, values, labels):
    """``loss(θ)`` per row through the whole checkpoint, ``θ`` the differentiated parameters, no cache."""
    names = adapter.parameter_names()
    model = adapter._full
    kwargs = full_model_inputs(adapter, values)

    def loss(theta: dict, rows=slice(None)):
        params = {full_name(adapter, n): t for n, t in theta.items()}
        picked = {k: v[rows] for k, v in kwargs.items()}
        logits = torch.func.functional_call(model, params, (), picked, strict=False).logits
        return adapter.loss(logits, labels[rows])

    return names, loss


@pytest.mark.parametrize("family,layers", [(f, 0) for f in TEXT_FAMILIES + IMAGE_FAMILIES] +
                         [(f, 1) for f in WITH_BLOCKS])
def test_the_cached_trunk_gives_the_checkpoints_logits_and_gradients(checkpoints, family, layers):
    adapter = load(checkpoints, family, layers)
    values = values_for(family)
    labels = torch.arange(len(values)) % 2
    x = adapter.prepare(values)
    with torch.no_grad():
        expected = adapter._full(**full_model_inputs(adapter, values)).logits
        got = adapter.model(adapter.trim_batch(x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    names, loss = full_loss(adapter, values, labels)
    theta = {n: p.detach().clone().requires_grad_() for n, p in adapter.model.named_parameters() if n in names}
    loop = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(theta, slice(i, i + 1)).sum(),
                                                                              [theta[n] for n in names])])
                        for i in range(len(values))])
    vmapped = gradient_matrix(adapter, x, labels, chunk_size=5)
    torch.testing.assert_close(vmapped, loop, rtol=1e-4, atol=1e-6)
    if layers:  # the top block and what runs after it are differentiated; the embeddings are not
        assert any(f".{adapter._path}.0." in n for n in names)
        assert not any("embed" in n for n in names)
    else:
        prefix = "hf." + adapter._full.base_model_prefix + "."
        assert names and not any(n.startswith(prefix) for n in names)


@pytest.mark.parametrize("family,layers", [("roberta", 0), ("gpt2", 0), ("vit", 0), ("distilbert", 1)])
def test_influence_equals_the_explicit_hessian_of_the_full_model(tmp_path, family, layers):
    """Influence over the cached trunk vs −∇L_testᵀ (H + λI)⁻¹ ∇L_train with H the explicit Hessian of the
    training objective of the whole checkpoint (autograd, no cache) over the same parameters."""
    folder = write_checkpoint(family, tmp_path / family, n_classes=2, width=16)
    info = DataInfo("image" if family in IMAGE_FAMILIES else "text", 2, ())
    adapter = create_model(f"hf:{folder}", info, layers=layers)
    train_values = values_for(family, 8) if family in IMAGE_FAMILIES else TEXTS * 2
    n = len(train_values)
    y = torch.tensor(np.random.default_rng(1).integers(0, 2, n))
    x = adapter.prepare(train_values)
    adapter.fit(x, y)
    ridge = 0.5  # a tiny fit is far from a minimum: a ridge that keeps H + λI positive definite
    fi = FastIF(adapter, x, y, k=None, solver="exact", lissa=LissaSettings(damping=0.5, scale=ridge / 0.5))
    test_rows = [0, 3, 5]
    got = fi.influence(take(x, test_rows), y[test_rows]).sort_values(["test_pos", "train_index"])

    names, loss = full_loss(adapter, train_values, y)
    theta = {n: p.detach().clone() for n, p in adapter.model.named_parameters() if n in names}
    shapes = [theta[k].shape for k in names]
    flat = torch.cat([theta[k].reshape(-1) for k in names]).double()

    def unflat(v):
        out, at = {}, 0
        for k, s in zip(names, shapes):
            out[k] = v[at:at + s.numel()].view(s).float()
            at += s.numel()
        return out

    def objective(v):
        params = unflat(v)
        reg = sum((params[k] ** 2).sum() for k in names if adapter.regularized(k))
        return loss(params).mean().double() + 0.5 * adapter.l2 * reg.double()

    hessian = torch.autograd.functional.hessian(objective, flat)
    grads = torch.stack([torch.autograd.functional.jacobian(lambda v: loss(unflat(v), slice(i, i + 1)).sum().double(),
                                                            flat) for i in range(n)])
    s_test = torch.linalg.solve(hessian + ridge * torch.eye(len(flat), dtype=torch.float64), grads[test_rows].T).T
    expected = -(s_test @ grads.T)  # [tests, train]
    assert len(got) == len(test_rows) * n
    pearson = np.corrcoef(got["influence"].to_numpy(), expected.numpy().reshape(-1))[0, 1]
    assert pearson >= 0.999, pearson


def test_a_checkpoint_without_a_classification_head_gets_a_new_one(tmp_path):
    import transformers as T

    folder = tmp_path / "base"
    write_checkpoint("roberta", folder)
    T.AutoModel.from_pretrained(folder).save_pretrained(folder)  # RobertaModel: no head
    assert T.AutoConfig.from_pretrained(folder).architectures == ["RobertaModel"]
    adapter = create_model(f"hf:{folder}", DataInfo("text", 3, ()), layers=0)
    assert adapter.model(adapter.trim_batch(adapter.prepare(TEXTS[:2]))).shape == (2, 3)  # the data's 3 classes


def test_the_checkpoints_label_order_is_matched_to_the_datas_classes(tmp_path):
    folder = write_checkpoint("distilbert", tmp_path / "d", n_classes=2, labels=["rotten", "fresh"])
    import transformers as T

    own = T.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    adapter = create_model(f"hf:{folder}", DataInfo("text", 2, (), ("fresh", "rotten")), layers=0)
    x = adapter.prepare(TEXTS[:3])
    with torch.no_grad():
        theirs = own(**full_model_inputs(adapter, TEXTS[:3])).logits
    torch.testing.assert_close(adapter.model(adapter.trim_batch(x)), theirs[:, [1, 0]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["remote code", "not a classifier", "image model on text", "albert blocks",
                                  "no weights"])
def test_what_cannot_be_loaded_is_refused_in_one_line(tmp_path, checkpoints, case):
    import json

    folder = tmp_path / "ckpt"
    folder.mkdir()
    info, options = DataInfo("text", 2, ()), {}
    if case == "remote code":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {
            "AutoModelForSequenceClassification": "modeling_mine.MyClassifier"}}))
        expect = "remote code"
    elif case == "not a classifier":
        (folder / "config.json").write_text(json.dumps({"model_type": "whisper"}))
        expect = "TorchClassifier"
    elif case == "image model on text":
        folder = checkpoints["vit"]
        expect = "image classifier, but the data has text inputs"
    elif case == "albert blocks":
        folder, options = checkpoints["albert"], {"layers": 1}
        expect = "layers must be 0"
    else:
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": [
            "GPT2ForSequenceClassification"], "num_labels": 2}))
        expect = "does not load"
    with pytest.raises(ModelLoadError) as err:
        create_model(f"hf:{folder}", info, **options)
    assert expect in str(err.value) and "\n" not in str(err.value)
