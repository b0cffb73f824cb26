"""Every built-in adapter on small slices of real data, and bring-your-own models."""
import numpy as np
import pytest
import torch

from fastif_engine import FastIF, LissaSettings
from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.gradients import (
    FlatParams,
    directional_derivatives,
    gradient_matrix,
)
from fastif_engine.influence.hessian import hvp_on_batch
from fastif_engine.models import DataInfo, ModelLoadError, create_model
from fastif_engine.models.training import evaluate, objective, seeded
from tests.exact import loop_gradients


@pytest.fixture(scope="module")
def digits_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    paths = export("digits", out)
    return load_dataset({k: str(v) for k, v in paths.items()})


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    out = tmp_path_factory.mktemp("rt")
    paths = export("rotten-tomatoes", out, max_train=500)
    return load_dataset({k: str(v) for k, v in paths.items()})


@pytest.fixture(scope="module")
def minilm(reviews):
    info = DataInfo(reviews.modality, reviews.n_classes, reviews.input_shape)
    return create_model("text-minilm", info, epochs=4, lr=3e-4, batch_size=16)


def info_of(ds):
    return DataInfo(ds.modality, ds.n_classes, ds.input_shape)


def test_image_cnn_trains_and_differentiates_its_top_layers(digits_images):
    model = create_model("image-cnn", info_of(digits_images))
    tr, va = digits_images.splits["train"], digits_images.splits["valid"]
    x, y = model.prepare(tr.values), torch.as_tensor(tr.labels)
    model.fit(x, y, seed=0)
    assert evaluate(model, model.prepare(va.values), torch.as_tensor(va.labels)).accuracy > 0.9
    assert FlatParams.of(model).names == ("fc.weight", "fc.bias", "head.weight", "head.bias")
    torch.testing.assert_close(gradient_matrix(model, x[:9], y[:9], chunk_size=4),
                               loop_gradients(model, x[:9], y[:9]), rtol=1e-4, atol=1e-6)
    assert model.features(x[:5]).shape == (5, 64)


def test_same_seed_same_model(digits_images):
    tr = digits_images.splits["train"]
    a = create_model("image-cnn", info_of(digits_images), epochs=1)
    x, y = a.prepare(tr.values), torch.as_tensor(tr.labels)
    w1 = a.fit(x, y, seed=5).model.head.weight.clone()
    w2 = a.fit(x, y, seed=5).model.head.weight.clone()
    w3 = a.fit(x, y, seed=6).model.head.weight.clone()
    torch.testing.assert_close(w1, w2, rtol=0, atol=0)
    assert not torch.equal(w1, w3)


def test_minilm_cached_lower_layers_reproduce_the_full_encoder(minilm, reviews):
    """prepare() + the (still pretrained) top layer == the whole MiniLM's mean-pooled output."""
    from transformers import AutoModel, AutoTokenizer

    from fastif_engine.models.text import encoder_path

    texts = reviews.splits["valid"].values[:7]
    tok = AutoTokenizer.from_pretrained(encoder_path())
    full = AutoModel.from_pretrained(encoder_path(), attn_implementation="eager").eval()
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = full(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = (h * m).sum(1) / m.sum(1)
    minilm._net = minilm._build()  # pretrained top layer, untrained head
    inputs = minilm.prepare(texts)
    torch.testing.assert_close(minilm.features(inputs), expected, rtol=1e-4, atol=1e-4)
    # trimming padding columns changes nothing
    torch.testing.assert_close(minilm.features(minilm.trim_batch(inputs)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_minilm_gradients_through_the_top_layer(minilm, reviews):
    tr, va = reviews.splits["train"], reviews.splits["valid"]
    x, y = minilm.prepare(tr.values), torch.as_tensor(tr.labels)
    minilm.fit(x, y, seed=0)
    flat = FlatParams.of(minilm)
    assert all(n.startswith(("layers.0.", "head.")) for n in flat.names)
    assert 1_700_000 < flat.size < 1_800_000  # one MiniLM layer (~1.78M) + a 384×2 head
    x3 = take(x, slice(0, 3))
    g = gradient_matrix(minilm, x3, y[:3], chunk_size=2)
    torch.testing.assert_close(g, loop_gradients(minilm, x3, y[:3]), rtol=1e-3, atol=1e-5)
    hv = hvp_on_batch(minilm, flat, take(x, slice(0, 4)), y[:4], g)
    assert torch.isfinite(hv).all() and float((hv * g).sum(1).min()) > -1e-3 * float(g.norm(dim=1).max()) ** 2
    # the whole FastIF path runs on the text model (tiny LiSSA: this checks plumbing, not accuracy)
    xv, yv = minilm.prepare(va.values[:3]), torch.as_tensor(va.labels[:3])
    fi = FastIF(minilm, x, y, k=10, solver="lissa", lissa=LissaSettings(depth=3, batch_size=2, scale=100.0))
    table = fi.influence(xv, yv)
    assert len(table) == 30 and np.isfinite(table.influence).all()
    # candidates are chunked by length (less padding); each score must still land on its own pair
    s = fi.s_test(xv, yv)
    first = table[table.test_pos == 0]
    rows = torch.as_tensor(first.train_index.to_numpy().copy())
    direct = -(loop_gradients(minilm, take(x, rows), y[rows]) @ s[0])
    np.testing.assert_allclose(first.influence.to_numpy(), direct.numpy(), rtol=5e-3)  # float32, 1.78M terms
    # forward mode (one test example's candidates, chunked by length) gives the same dot products
    forward = directional_derivatives(minilm, x, y, s[0], index=rows.numpy(), chunk_size=4)
    np.testing.assert_allclose(-forward, direct.numpy(), rtol=5e-3)
    acc = evaluate(minilm, minilm.prepare(va.values), torch.as_tensor(va.labels)).accuracy
    assert acc > 0.6  # 500 training snippets, 4 epochs of one layer + head


def test_minilm_packed_tokens_match_the_padded_layer(minilm, reviews, monkeypatch):
    """Training, inference and HVPs run the top layer on real tokens only; per-example gradients
    (vmap over rows) run transformers' own layer on the padded batch. Same function, same HVP."""
    from fastif_engine.models import text

    va = reviews.splits["valid"]
    x, y = minilm.prepare(va.values[:12]), torch.as_tensor(va.labels[:12])
    lengths = x["mask"].sum(1)
    assert lengths.min() < lengths.max()  # the batch has padding to skip
    flat = FlatParams.of(minilm)
    v = torch.randn(3, flat.size, generator=torch.Generator().manual_seed(0)) * 1e-2
    packed = minilm.logits(x), hvp_on_batch(minilm, flat, x, y, v)
    monkeypatch.setattr(text, "_inside_vmap", lambda t: True)  # force the padded path
    padded = minilm.logits(x), hvp_on_batch(minilm, flat, x, y, v)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[1], padded[1], rtol=1e-3, atol=1e-3 * float(padded[1].abs().max()))


def test_builtin_options_are_checked():
    info = DataInfo("image", 10, (1, 8, 8))
    model = create_model("image-cnn", info, epochs=2, lr=0.01, width=8)
    assert model.settings.epochs == 2 and model.settings.lr == 0.01 and model.width == 8
    with pytest.raises(ModelLoadError, match="unknown option 'wings'.*options: .*epochs"):
        create_model("image-cnn", info, wings=3)
    with pytest.raises(ModelLoadError, match="epochs must be a whole number"):
        create_model("image-cnn", info, epochs=0)
    with pytest.raises(ModelLoadError, match="schedule must be 'constant' or 'linear', got 'cosine'"):
        create_model("image-cnn", info, schedule="cosine")


def test_linear_schedule_is_adam_with_a_falling_rate():
    """Three full-batch Adam steps at lr, 2/3 lr, 1/3 lr, stepped by hand, give the same weights."""
    info = DataInfo("tabular", 3, (4,))
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    model = create_model("tabular-mlp", info, epochs=3, lr=0.05, batch_size=16, schedule="linear")
    fitted = model.fit(x, y, seed=2).model

    by_hand = create_model("tabular-mlp", info)
    with seeded(2):  # the same initial weights and input scaling as fit(seed=2)
        net = by_hand._build()
    net.scale.fit(x)
    by_hand._net = net
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05)
    net.train()
    for step in range(3):
        opt.param_groups[0]["lr"] = 0.05 * (3 - step) / 3
        opt.zero_grad()
        objective(by_hand, x, y).backward()
        opt.step()
    for a, b in zip(fitted.parameters(), net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    constant = create_model("tabular-mlp", info, epochs=3, lr=0.05, batch_size=16).fit(x, y, seed=2).model
    assert not torch.allclose(constant.head.weight, fitted.head.weight, atol=1e-4)


def test_model_must_fit_the_data():
    with pytest.raises(ModelLoadError, match="text-minilm needs text inputs, but the data has tabular"):
        create_model("text-minilm", DataInfo("tabular", 2, (5,)))
    with pytest.raises(ModelLoadError, match="unknown model 'resnet'"):
        create_model("resnet", DataInfo("tabular", 2, (5,)))


def test_user_model_from_the_example(digits_images):
    info = DataInfo("tabular", 10, (64,))
    model = create_model("examples.custom_model.softplus_mlp:make_model", info)
    tr, va = digits_images.splits["train"], digits_images.splits["valid"]
    x = model.prepare(tr.values.reshape(len(tr), -1))
    model.fit(x, torch.as_tensor(tr.labels))
    xv = model.prepare(va.values.reshape(len(va), -1))
    assert evaluate(model, xv, torch.as_tensor(va.labels)).accuracy > 0.9
    table = FastIF(model, x, torch.as_tensor(tr.labels), k=20, solver="exact",
                   lissa=LissaSettings(damping=0.01)).influence(xv[:4], torch.as_tensor(va.labels[:4]))
    assert len(table) == 80


def test_user_model_errors(tmp_path, monkeypatch):
    info = DataInfo("tabular", 2, (3,))
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_pkg.mod'"):
        create_model("no_such_pkg.mod:make", info)
    with pytest.raises(ModelLoadError, match="has no callable 'nothing'"):
        create_model("examples.custom_model.softplus_mlp:nothing", info)
    with pytest.raises(ModelLoadError, match="the factory raised ValueError: .*not image inputs"):
        create_model("examples.custom_model.softplus_mlp:make_model", DataInfo("image", 2, (1, 8, 8)))
    (tmp_path / "bad_factory.py").write_text("def make(info):\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="returned int, not a fastif_engine.TrainableAdapter"):
        create_model("bad_factory:make", info)


def test_same_seed_same_weights_across_threads():
    """Models built at once in a thread pool must not share the global RNG stream."""
    from concurrent.futures import ThreadPoolExecutor

    info = DataInfo("tabular", 10, (64,))
    x, y = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 10

    def build(_):
        model = create_model("tabular-mlp", info, epochs=2)
        return model.fit(x, y, seed=7).model.head.weight.detach().clone()

    with ThreadPoolExecutor(4) as pool:
        weights = list(pool.map(build, range(8)))
    for w in weights[1:]:
        torch.testing.assert_close(w, weights[0], rtol=0, atol=0)


def test_dropout_from_a_continued_stream_draws_the_global_masks():
    """training.dropout under drawing_from(continued_stream()) == F.dropout on the global stream, to the bit."""
    import torch.nn.functional as F

    from fastif_engine.models.training import Dropout, continued_stream, drawing_from, dropout

    x = torch.randn(7, 33, 5)
    with seeded(11):
        torch.randn(3)  # a model's build draws first
        stream = continued_stream()
        expected = [F.dropout(x, p=0.1, training=True), F.dropout(x, p=0.3, training=True)]
    with drawing_from(stream):
        got = [dropout(x, 0.1, True), Dropout(0.3).train()(x)]
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert torch.equal(dropout(x, 0.1, False), x)
    with drawing_from(continued_stream()):
        assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x)) and torch.equal(dropout(x, 0.0, True), x)


def test_minilm_fit_trains_without_the_seed_lock(minilm, reviews, monkeypatch):
    """What lets fits run at once: while text-minilm trains, another thread can take the seed lock."""
    import threading

    from fastif_engine.models import text, training

    free = []

    def checking_train(*args, **kwargs):
        def probe():
            if training._SEED_LOCK.acquire(blocking=False):
                training._SEED_LOCK.release()
                free.append(True)
        t = threading.Thread(target=probe)
        t.start()
        t.join()
        return training.train(*args, **kwargs)

    monkeypatch.setattr(text, "train", checking_train)
    tr = reviews.splits["train"]
    minilm.fit(minilm.prepare(tr.values[:16]), torch.as_tensor(tr.labels[:16]), seed=0)
    assert free == [True]


def test_minilm_fits_at_once_in_threads_equal_one_after_the_other(minilm, reviews):
    """concurrent_fits: fits in threads at once (seed lock for the build only, dropout on each fit's own
    generator) give the weights the same fits give one after the other, at one torch thread each."""
    import copy
    from concurrent.futures import ThreadPoolExecutor

    assert minilm.concurrent_fits and not create_model("tabular-mlp", DataInfo("tabular", 2, (3,))).concurrent_fits
    tr = reviews.splits["train"]
    x, y = minilm.prepare(tr.values[:96]), torch.as_tensor(tr.labels[:96])
    before = torch.get_num_threads()

    def fit(seed):
        torch.set_num_threads(1)
        model = copy.deepcopy(minilm).fit(x, y, seed=seed).model
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    try:
        alone = [fit(s) for s in (1, 2, 3)]
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(fit, (1, 2, 3)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(alone, together):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(alone[0]["head.weight"], alone[1]["head.weight"])


def test_length_grouped_minibatches_cover_each_row_once_with_less_padding():
    from fastif_engine.models.training import minibatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 65, size=1000)
    batches = minibatches(1000, 32, torch.Generator().manual_seed(1), lengths)
    rows = torch.cat(batches).numpy()
    assert sorted(rows.tolist()) == list(range(1000))
    plain = minibatches(1000, 32, torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(plain), torch.randperm(1000, generator=torch.Generator().manual_seed(1)))
    padded = lambda bs: sum(len(b) * int(lengths[b.numpy()].max()) for b in bs)  # noqa: E731
    assert padded(batches) < 0.7 * padded(plain)  # random batches pad to near the longest row


def test_torch_classifier_wraps_any_module(digits):
    """TorchClassifier: parameters by name pattern, features = what the last Linear sees, every fit from a copy
    of the module as given (so retrains never inherit one another's weights), clear errors for bad names."""
    from torch import nn

    from fastif_engine import TorchClassifier
    from fastif_engine.errors import FastIFError
    from fastif_engine.models.training import TrainSettings

    x, y = digits["train"]
    x = x / 16.0  # pixels in [0, 1]: the frozen tanh layer does not saturate
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    given = {k: v.clone() for k, v in net.state_dict().items()}
    model = TorchClassifier(net, differentiate=["2.*"], settings=TrainSettings(optimizer="adam", epochs=100, lr=1e-2))
    assert model.parameter_names() == ["2.weight", "2.bias"]
    torch.testing.assert_close(model.features(x[:5]), torch.tanh(net[0](x[:5])))
    model.fit(x, y, seed=0)
    fitted = model.model.state_dict()
    assert torch.equal(fitted["0.weight"], given["0.weight"])  # not differentiated: kept as given
    assert not torch.equal(fitted["2.weight"], given["2.weight"])
    assert float((model.predict(x) == y).double().mean()) > 0.7  # the head learned (10 classes: chance 0.1)
    again = model.fit(x, y, seed=0).model.state_dict()
    assert torch.equal(again["2.weight"], fitted["2.weight"])  # from the given copy, deterministic for the seed
    with pytest.raises(FastIFError, match=r"differentiate=\['head.\*'\] matches no parameter"):
        TorchClassifier(net, differentiate=["head.*"])
    with pytest.raises(FastIFError, match="features='body' is not a submodule"):
        TorchClassifier(net, features="body")
