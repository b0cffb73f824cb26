"""At what ``fit_check`` ratio do influence scores degrade? Scores along one training run against the converged end.

    OMP_NUM_THREADS=1 python benchmarks/studies/fit_check.py [--models tabular-logreg tabular-mlp image-cnn]
        [--noise 0.2] [--seed 0] [--out benchmarks/studies/results/fit_check.json]
    python benchmarks/studies/fit_check.py --summary     # the table again, from the saved JSON
    OMP_NUM_THREADS=1 python benchmarks/studies/fit_check.py --text [--text-epochs 1 2 3 5 8]
        # the demo's data and model through clean(): ratio vs flag quality (results/fit_check-text.json)
    OMP_NUM_THREADS=1 python benchmarks/studies/fit_check.py --undertrained
        # deliberately under-trained tabular states, ratios 0.1–0.5 (results/fit_check-undertrained.json)

All three models: about 13 minutes on one CPU thread (tabular-logreg 10 s, tabular-mlp 3 min, image-cnn 9 min).

fastif warns when ``fit_check(...)["ratio"]`` (‖∇R(θ̂)‖ over the RMS of one row's gradient,
``fastif_engine.influence.gradients``) exceeds ``STATIONARY_RATIO`` (0.1 when this study was made; 0.35 since,
by its findings: docs/decisions/fit-check.md). This study measures how
the scores behave as that ratio grows. Data: the bundled ``digits`` export (1,079 training rows,
359 validation rows) with 20% uniform label noise (seed 0). For each built-in model:

* **The run.** The model is trained with its own recipe, with the training length cut short:
  ``dataclasses.replace(adapter.settings, epochs=e)`` then ``adapter.fit(x, y, seed=0)``, for a range
  of e (L-BFGS iterations for ``tabular-logreg``, Adam epochs for the others). ``tabular-mlp``'s
  constant learning rate makes each short run a prefix of the 60-epoch recipe run; ``image-cnn``'s
  linear schedule makes each e its own run.
* **The reference.** The recipe's model continued by full-batch L-BFGS on the training objective
  (only the differentiated parameters: ``image-cnn``'s top layers, its convolutions held) until the
  ratio is under 0.001 (or the rounds run out; the reached ratio is recorded). For ``tabular-mlp``
  the same is done from seed 1 as well: how far two converged models of the same recipe agree.
* **Scores at each θ̂.** Net harm of every training row on the summed validation loss,
  I(z) = −∇L_valᵀ (H + λI)⁻¹ ∇L(z) (positive = harmful), from the explicit full-data Hessian of
  the differentiated parameters, Cholesky-solved in float64. The ridge follows one rule at every
  θ̂: λ = f × the Hessian's top eigenvalue (Lanczos on the explicit H), f = 0.3 (the product's
  ``RIDGE_OF_TOP``) and f = 0.03 (a light ridge, where the curvature shapes the answer more).
  No class-prior refit and no folds: the plain influence on the validation loss.
* **Agreement with the reference**: Pearson and Spearman correlation of the net-harm vectors, the
  overlap of the top-15% most harmful rows with the reference's, and the share of actually
  mislabeled rows among each top 15%.
* **Ground truth, 24 groups of 5% of the rows** (54 rows), fixed per model: 12 random groups,
  6 slices of the reference's net-harm ranking (ranks 0–5%, 5–10%, 10–15%, 15–20%, the middle
  5%, the bottom 5%) and 6 groups with 0, 20, …, 100% mislabeled rows. The predicted change of mean
  validation loss on removing group G is −Σ_{z∈G} I(z) / (N · n_val). Two actual changes:
  - ``converged``: from the reference, L-BFGS to convergence on the rows without G, minus the
    reference's validation loss (what influence at a minimum describes; the same for every e);
  - ``same-run``: the e-length recipe run repeated from the same initial weights and, for Adam, the
    same minibatch stream with G's rows dropped from each batch (L-BFGS: on the kept rows), minus
    θ̂_e's validation loss — what a user who trains for e gets by removing G.
  Reported: Pearson and Spearman of predicted against actual over the 24 groups, and the least
  squares slope actual/predicted; ``--summary`` adds Pearson over the 12 random groups alone (the
  designed groups' effects spread far wider, which lifts the 24-group correlation).

Two later parts ask the question the warning is for: do the **flags** (what a user acts on) get worse?

* ``--text``: ``fastif demo``'s data (rotten-tomatoes, 2,000 training rows, 30% of the 'rotten' rows
  labelled 'fresh') and settings (k = 200), no retrain, through ``fastif_engine.clean(...,
  model="text-minilm", model_options={"epochs": e[, "lr": lr]})``. Per run: ``model_fit.ratio``, the
  validation accuracy, the flags, the flipped rows among them, and the AUC of flags.parquet's net harm
  (and combined score) for the flipped rows. About 4–5 minutes a run on one thread.
  Writes ``results/fit_check-text.json``.
* ``--undertrained``: tabular-logreg and tabular-mlp on digits (and on breast-cancer, whose binary
  task reaches ratios up to 0.32: digits' ten classes start at 0.11–0.14 at the initial weights and
  no state we tried went above 0.17) after a handful of Adam minibatch steps from the recipe's
  initial weights (lr 3e-3, batch 64). Per state: the plain net harm above (explicit Hessian,
  both ridges; agreement with the converged reference, flipped share of its top 15%, AUC) and the
  product's own flags for exactly that θ̂ (``clean(model=<the adapter>, weights="given", k=200,
  retrain=False)``: combined score, evidence floor, class-prior check, solver auto), or the product's
  refusal. About 4 minutes. Writes ``results/fit_check-undertrained.json``.

Writes ``--out`` (JSON, every number: per model and e, the ratio, fit, agreement, the group
predictions and actual changes, and the per-row net harm at the product ridge) and prints a table.
One CPU thread throughout.
"""
from __future__ import annotations

import torch

torch.set_num_threads(1)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fastif_engine import __version__  # noqa: E402
from fastif_engine.data.datasets import export  # noqa: E402
from fastif_engine.data.tables import load_dataset  # noqa: E402
from fastif_engine.influence.gradients import STATIONARY_RATIO, FlatParams, fit_check, gradient_matrix  # noqa: E402
from fastif_engine.influence.hessian import explicit_hessian, lanczos_eigenpairs  # noqa: E402
from fastif_engine.influence.solvers import RIDGE_OF_TOP  # noqa: E402
from fastif_engine.models.training import TrainSettings, evaluate, minibatches, objective, seeded, train  # noqa: E402

import _path  # noqa: F401,E402  (benchmarks/ on the path)
from _shared import model_for  # noqa: E402

# training lengths per model (tabular-logreg: L-BFGS iterations; the last of each list is the recipe's)
LENGTHS = {"tabular-logreg": [1, 2, 4, 5, 6, 7, 8, 10, 12, 20, 500],
           "tabular-mlp": [1, 2, 3, 5, 8, 12, 20, 30, 60],
           "image-cnn": [1, 2, 3, 5, 8, 12]}
RIDGES = {"0.3·top": RIDGE_OF_TOP, "0.03·top": 0.03}
PRODUCT_RIDGE = "0.3·top"
FLAG_SHARE = 0.15  # the product's flag budget
GROUP_SHARE = 0.05
RANDOM_GROUPS = 12
NOISE_MIXES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
CONVERGED_RATIO = 1e-3  # the reference is continued until its ratio is under this
LBFGS_ROUND = 200  # L-BFGS iterations per round of the continuation
MAX_ROUNDS = 15


def load_digits(noise: float, seed: int):
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("digits", tmp, noise=noise, noise_mode="uniform", seed=seed)
        return load_dataset({s: str(p) for s, p in paths.items()})


# ---------------------------------------------------------------- training helpers


@contextlib.contextmanager
def only_differentiated(adapter):
    """Inside the block only the parameters influence differentiates are trainable (image-cnn: fc and
    head); the objective's L2 term then covers just those, the rest being held constant."""
    tracked = set(adapter.parameter_names())
    held = [p for n, p in adapter.model.named_parameters() if n not in tracked and p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


def initial_state(adapter, x: torch.Tensor, seed: int) -> dict:
    """The weights ``adapter.fit(x, ·, seed)`` starts its training from (the same build, under the same
    seed, with the input standardisation fit on all of ``x``). Uses the built-ins' ``_build``;
    :func:`check_replay` confirms that replaying the recipe from here gives ``fit``'s model."""
    with seeded(seed):
        net = adapter._build()
        if hasattr(net, "scale"):  # tabular: per-feature standardisation
            net.scale.fit(x.to(adapter.dtype))
        else:  # image-cnn: one mean and std over all pixels
            net.mean.fill_(float(x.mean()))
            net.std.fill_(float(x.std().clamp_min(1e-6)))
    return {k: v.clone() for k, v in net.state_dict().items()}


def load(adapter, state: dict) -> None:
    adapter.model.load_state_dict(state)
    adapter.model.eval()


def snapshot(adapter) -> dict:
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def replay(adapter, start: dict, x: torch.Tensor, y: torch.Tensor, keep: np.ndarray, settings: TrainSettings,
           seed: int) -> None:
    """The recipe run from ``start`` with only the ``keep`` rows. Adam: the same minibatch stream as the
    full run (a permutation of all N rows), each batch without the dropped rows, the same learning-rate
    schedule; L-BFGS (full batch): on the kept rows."""
    load(adapter, start)
    rows = torch.as_tensor(np.flatnonzero(keep))
    if settings.optimizer == "lbfgs":
        train(adapter, x[rows], y[rows], dataclasses.replace(settings, seed=seed))
        return
    keep_t = torch.as_tensor(keep)
    model = adapter.model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = settings.epochs * -(-n // settings.batch_size)
    step = 0
    model.train()
    for _ in range(settings.epochs):
        for idx in minibatches(n, settings.batch_size, gen):
            if settings.schedule == "linear":
                opt.param_groups[0]["lr"] = settings.lr * (1 - step / steps)
            step += 1
            idx = idx[keep_t[idx]]
            if len(idx) == 0:
                continue
            opt.zero_grad()
            objective(adapter, x[idx], y[idx]).backward()
            opt.step()
    model.eval()


def check_replay(adapter, x, y, settings: TrainSettings, seed: int) -> float:
    """Largest |difference| between ``adapter.fit``'s weights and :func:`replay` with every row kept."""
    adapter.settings = settings
    adapter.fit(x, y, seed=seed)
    fitted = snapshot(adapter)
    replay(adapter, initial_state(adapter, x, seed), x, y, np.ones(len(y), bool), settings, seed)
    return max(float((fitted[k] - v).abs().max()) for k, v in snapshot(adapter).items())


def full_ratio(adapter, x, y) -> float:
    """``fit_check``'s ratio with the mean gradient over every row. Its default sums 1,024 sampled rows,
    which on digits' 1,079 leaves a floor of about 0.007 (the 55 rows left out) however well fit."""
    return fit_check(adapter, x, y, rows=len(y))["ratio"]


def converge(adapter, x: torch.Tensor, y: torch.Tensor, *, target: float = CONVERGED_RATIO,
             max_rounds: int = MAX_ROUNDS) -> dict:
    """Full-batch L-BFGS on the differentiated parameters, in rounds, until the full-data ratio is under
    ``target`` (or a round no longer halves it)."""
    ratio, rounds = full_ratio(adapter, x, y), 0
    while ratio >= target and rounds < max_rounds:
        with only_differentiated(adapter):
            train(adapter, x, y, TrainSettings(optimizer="lbfgs", epochs=LBFGS_ROUND, lr=1.0))
        before, ratio, rounds = ratio, full_ratio(adapter, x, y), rounds + 1
        if ratio > 0.5 * before:
            break
    return {"ratio": ratio, "lbfgs_rounds": rounds}


def val_loss(adapter, xv, yv) -> float:
    return evaluate(adapter, xv, yv).loss


# ---------------------------------------------------------------- influence at θ̂


def influence_at(adapter, x, y, xv, yv) -> dict:
    """Net harm of every training row (one vector per ridge rule) and the fit facts at the current θ̂."""
    t0 = time.perf_counter()
    flat = FlatParams.of(adapter)
    fit = fit_check(adapter, x, y, flat=flat)
    full = fit_check(adapter, x, y, flat=flat, rows=len(y))
    h = explicit_hessian(adapter, flat, x, y).double()
    top = float(lanczos_eigenpairs(lambda v: v @ h, flat.size, iterations=80, dtype=torch.float64,
                                   converged=1, rtol=1e-6)[0][0])
    g_train = gradient_matrix(adapter, x, y, flat=flat).double()
    g_valid = gradient_matrix(adapter, xv, yv, flat=flat).double().sum(0)
    # exact full-data RMS of a row's gradient (fit_check samples 64 rows)
    rms_all = float(g_train.pow(2).sum(1).mean().sqrt())
    harm = {}
    for name, factor in RIDGES.items():
        chol, info = torch.linalg.cholesky_ex(h + factor * top * torch.eye(flat.size, dtype=h.dtype))
        if int(info):
            harm[name] = None  # H + λI indefinite at this θ̂
            continue
        s = torch.cholesky_solve(g_valid[:, None], chol)[:, 0]
        harm[name] = (-(g_train @ s)).numpy()
    ev = evaluate(adapter, x, y)
    evv = evaluate(adapter, xv, yv)
    return {"fit": {k: fit[k] for k in ("ratio", "gradient_norm", "row_gradient_rms")},
            "ratio_full": full["ratio"], "ratio_exact": full["gradient_norm"] / rms_all, "top_eigenvalue": top, "parameters": flat.size,
            "train_loss": ev.loss, "train_accuracy": ev.accuracy, "valid_loss": evv.loss,
            "valid_accuracy": evv.accuracy, "harm": harm, "seconds": time.perf_counter() - t0}


def top_rows(score: np.ndarray, share: float = FLAG_SHARE) -> np.ndarray:
    return np.argsort(-score, kind="stable")[:int(round(share * len(score)))]


def agreement(score: np.ndarray, reference: np.ndarray, noisy: np.ndarray) -> dict:
    mine, theirs = top_rows(score), top_rows(reference)
    return {"pearson": float(pearsonr(score, reference)[0]), "spearman": float(spearmanr(score, reference)[0]),
            "top15_overlap": len(np.intersect1d(mine, theirs)) / len(theirs),
            "top15_mislabeled": float(noisy[mine].mean()), "mislabeled_auc": float(roc_auc_score(noisy, score))}


def group_fit(predicted: np.ndarray, actual: np.ndarray) -> dict:
    slope = float(predicted @ actual / (predicted @ predicted)) if predicted.any() else float("nan")
    return {"pearson": float(pearsonr(predicted, actual)[0]), "spearman": float(spearmanr(predicted, actual)[0]),
            "slope": slope}


def predicted_changes(harm: np.ndarray, groups: list[np.ndarray], n_valid: int) -> np.ndarray:
    """First-order change of the mean validation loss on removing each group (ε = −1/N per row)."""
    return np.array([-harm[g].sum() / (len(harm) * n_valid) for g in groups])


def make_groups(reference: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[list[np.ndarray], list[str]]:
    n = len(reference)
    m = int(round(GROUP_SHARE * n))
    rng = np.random.default_rng(seed + 100)
    groups, names = [], []
    for i in range(RANDOM_GROUPS):
        groups.append(np.sort(rng.choice(n, m, replace=False)))
        names.append(f"random-{i}")
    order = np.argsort(-reference, kind="stable")
    for label, start in (("rank-0-5%", 0), ("rank-5-10%", m), ("rank-10-15%", 2 * m), ("rank-15-20%", 3 * m),
                         ("rank-middle", n // 2 - m // 2), ("rank-bottom", n - m)):
        groups.append(np.sort(order[start:start + m]))
        names.append(label)
    flipped, clean = np.flatnonzero(noisy), np.flatnonzero(~noisy)
    for share in NOISE_MIXES:
        k = int(round(share * m))
        groups.append(np.sort(np.concatenate([rng.choice(flipped, k, replace=False),
                                              rng.choice(clean, m - k, replace=False)])))
        names.append(f"mislabeled-{int(share * 100)}%")
    return groups, names


# ---------------------------------------------------------------- one model


def study(model_name: str, ds, seed: int, log) -> dict:
    t_model = time.perf_counter()
    adapter, inputs = model_for(model_name, ds)
    x, xv = inputs("train"), inputs("valid")
    y, yv = torch.as_tensor(ds.splits["train"].labels), torch.as_tensor(ds.splits["valid"].labels)
    noisy = ds.splits["train"].extra["noisy"].to_numpy().astype(bool)
    recipe = adapter.settings
    lengths = LENGTHS[model_name]
    n, n_valid = len(y), len(yv)
    log(f"\n## {model_name}: recipe {recipe}, l2 {adapter.l2}, N = {n}, {noisy.sum()} mislabeled")

    replay_error = check_replay(adapter, x, y, dataclasses.replace(recipe, epochs=lengths[0]), seed)
    log(f"replay check (fit vs replay, every row kept, {lengths[0]} epoch): max |Δθ| = {replay_error:.2e}")
    start = initial_state(adapter, x, seed)

    # the short runs
    states = {}
    for e in lengths:
        adapter.settings = dataclasses.replace(recipe, epochs=e)
        adapter.fit(x, y, seed=seed)
        states[e] = snapshot(adapter)

    # the reference: the recipe run continued to convergence
    load(adapter, states[lengths[-1]])
    adapter.settings = recipe
    reached = converge(adapter, x, y)
    reference_state = snapshot(adapter)
    reference = influence_at(adapter, x, y, xv, yv)
    reference["continuation"] = reached
    ref_harm = reference["harm"]
    log(f"reference: ratio {reference['fit']['ratio']:.2e} (all rows {reference['ratio_full']:.2e}) after {reached['lbfgs_rounds']} L-BFGS rounds, "
        f"valid loss {reference['valid_loss']:.4f}, top eigenvalue {reference['top_eigenvalue']:.4g}, "
        f"P = {reference['parameters']}")

    groups, names = make_groups(ref_harm[PRODUCT_RIDGE], noisy, seed)

    # ground truth at the minimum: from the reference, converge without each group
    converged_actual, converged_ratio = [], []
    for g in groups:
        keep = np.ones(n, bool)
        keep[g] = False
        load(adapter, reference_state)
        rows = torch.as_tensor(np.flatnonzero(keep))
        reached_g = converge(adapter, x[rows], y[rows])
        converged_actual.append(val_loss(adapter, xv, yv) - reference["valid_loss"])
        converged_ratio.append(reached_g["ratio"])
    converged_actual = np.array(converged_actual)
    log(f"converged leave-group-out: {len(groups)} groups, worst ratio reached {max(converged_ratio):.2e}, "
        f"actual Δ valid loss from {converged_actual.min():+.4f} to {converged_actual.max():+.4f}")

    def ground_truth_fits(harm: dict, same_run: np.ndarray | None) -> dict:
        out = {}
        for name, h in harm.items():
            if h is None:
                out[name] = None
                continue
            pred = predicted_changes(h, groups, n_valid)
            out[name] = {"predicted": pred.tolist(), "vs_converged": group_fit(pred, converged_actual)}
            if same_run is not None:
                out[name]["vs_same_run"] = group_fit(pred, same_run)
        return out

    reference["groups"] = ground_truth_fits(ref_harm, None)
    reference["self_agreement"] = {name: (agreement(h, h, noisy) if h is not None else None)
                                   for name, h in ref_harm.items()}

    rows_out = []
    for e in lengths:
        load(adapter, states[e])
        at = influence_at(adapter, x, y, xv, yv)
        settings = dataclasses.replace(recipe, epochs=e)
        same_run = []
        for g in groups:
            keep = np.ones(n, bool)
            keep[g] = False
            replay(adapter, start, x, y, keep, settings, seed)
            same_run.append(val_loss(adapter, xv, yv) - at["valid_loss"])
        same_run = np.array(same_run)
        at["epochs"] = e
        at["same_run_actual"] = same_run.tolist()
        at["groups"] = ground_truth_fits(at["harm"], same_run)
        at["agreement"] = {name: (agreement(h, ref_harm[name], noisy) if h is not None and ref_harm[name] is not None
                                  else None) for name, h in at["harm"].items()}
        rows_out.append(at)
        a, gfit = at["agreement"][PRODUCT_RIDGE], at["groups"][PRODUCT_RIDGE]
        log(f"e={e:>3}: ratio {at['fit']['ratio']:.3g} (all rows {at['ratio_full']:.3g})  valid loss {at['valid_loss']:.3f}  "
            f"pearson {a['pearson']:.3f} spearman {a['spearman']:.3f} top15 {a['top15_overlap']:.2f} "
            f"AUC {a['mislabeled_auc']:.3f}  groups r(conv) {gfit['vs_converged']['pearson']:.3f} r(same-run) {gfit['vs_same_run']['pearson']:.3f} "
            f"({at['seconds']:.0f}s)")

    control = None
    if model_name == "tabular-mlp":  # another seed, converged: how far two minima of the recipe agree
        adapter.settings = recipe
        adapter.fit(x, y, seed=seed + 1)
        reached = converge(adapter, x, y)
        other = influence_at(adapter, x, y, xv, yv)
        control = {"seed": seed + 1, "continuation": reached, "fit": other["fit"], "ratio_full": other["ratio_full"],
                   "valid_loss": other["valid_loss"],
                   "agreement": {name: (agreement(h, ref_harm[name], noisy) if h is not None else None)
                                 for name, h in other["harm"].items()},
                   "groups": ground_truth_fits(other["harm"], None)}
        for r in control["groups"].values():
            if r is not None:
                r.pop("predicted")
        a = control["agreement"][PRODUCT_RIDGE]
        log(f"seed {seed + 1} converged vs reference: ratio {other['ratio_full']:.2e}, pearson {a['pearson']:.3f} "
            f"spearman {a['spearman']:.3f} top15 {a['top15_overlap']:.2f}")

    def public(entry: dict) -> dict:  # per-row net harm kept for the product ridge only
        entry = dict(entry)
        harm = entry.pop("harm")
        entry["net_harm"] = None if harm[PRODUCT_RIDGE] is None else np.round(harm[PRODUCT_RIDGE], 8).tolist()
        return entry

    return {"model": model_name, "recipe": dataclasses.asdict(recipe), "l2": adapter.l2, "train_rows": n,
            "valid_rows": n_valid, "mislabeled": int(noisy.sum()), "replay_max_abs_error": replay_error,
            "groups": {"names": names, "size": int(len(groups[0])), "rows": [g.tolist() for g in groups],
                       "mislabeled_share": [float(noisy[g].mean()) for g in groups]},
            "converged_actual": converged_actual.tolist(), "converged_retrain_ratio": converged_ratio,
            "reference": public(reference), "runs": [public(r) for r in rows_out], "seed_control": control,
            "seconds": time.perf_counter() - t_model}


def random_only(predicted: list[float], actual: list[float], names: list[str]) -> str:
    """Pearson over the random groups alone (their effects spread far less than the designed groups')."""
    at = [i for i, name in enumerate(names) if name.startswith("random")]
    return f"{pearsonr(np.asarray(predicted)[at], np.asarray(actual)[at])[0]:.3f}"


def table(results: list[dict]) -> list[str]:
    """The markdown table of a run's results (``--summary`` prints it from a saved JSON)."""
    lines = ["| model | e | ratio | ratio, all rows | valid loss | ridge | pearson | spearman | top-15% overlap "
             "| top-15% mislabeled | mislabeled AUC | groups r vs converged (random only) "
             "| groups r vs same-run (random only) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def row(res, label, entry, ridge, agree, groups, same_run=None):
        head = (f"| {res['model']} | {label} | {entry['fit']['ratio']:.3g} | {entry['ratio_full']:.3g} | "
                f"{entry['valid_loss']:.3f} | {ridge} ")
        if groups is None:
            return head + "| H + λI indefinite | | | | | | |"
        names = res["groups"]["names"]
        conv = f"{groups['vs_converged']['pearson']:.3f}"
        same = "–"
        if "predicted" in groups:
            conv += f" ({random_only(groups['predicted'], res['converged_actual'], names)})"
            if same_run is not None:
                same = (f"{groups['vs_same_run']['pearson']:.3f} "
                        f"({random_only(groups['predicted'], same_run, names)})")
        return head + (f"| {agree['pearson']:.3f} | {agree['spearman']:.3f} | {agree['top15_overlap']:.2f} | "
                       f"{agree['top15_mislabeled']:.2f} | {agree['mislabeled_auc']:.3f} | {conv} | {same} |")

    for res in results:
        ref = res["reference"]
        for ridge in RIDGES:
            lines.append(row(res, "converged", ref, ridge, ref["self_agreement"][ridge], ref["groups"][ridge]))
        for run in res["runs"]:
            for ridge in RIDGES:
                lines.append(row(res, run["epochs"], run, ridge, run["agreement"][ridge], run["groups"][ridge],
                                 run["same_run_actual"]))
        c = res["seed_control"]
        if c:
            for ridge in RIDGES:
                lines.append(row(res, f"seed {c['seed']} converged", c, ridge, c["agreement"][ridge],
                                 c["groups"][ridge]))
    return lines


# ---------------------------------------------------------------- the demo's model through clean()

TEXT_EPOCHS = [1, 2, 3, 5, 8]  # text-minilm's recipe: 3


def flag_quality(flags, share: float = FLAG_SHARE) -> dict:
    """What a user acts on, from flags.parquet (every training row, with the export's ``noisy`` truth)."""
    noisy = flags["noisy"].to_numpy().astype(bool)
    flagged = flags["flagged"].to_numpy().astype(bool)
    net = flags["net_harm"].to_numpy(dtype=float)
    combined = flags["combined_score"].to_numpy(dtype=float)
    loss = flags["train_loss"].to_numpy(dtype=float)
    n_top = int(round(share * len(flags)))
    top_net = np.argsort(-net, kind="stable")[:n_top]
    by_loss = np.argsort(-loss, kind="stable")[:max(int(flagged.sum()), 1)]
    return {"rows": int(len(flags)), "flipped": int(noisy.sum()), "flagged": int(flagged.sum()),
            "flipped_among_flags": int(noisy[flagged].sum()),
            "flipped_share_of_flags": float(noisy[flagged].mean()) if flagged.any() else float("nan"),
            "recall_of_flipped": float(noisy[flagged].sum() / noisy.sum()),
            "net_harm_auc": float(roc_auc_score(noisy, net)),
            "combined_auc": float(roc_auc_score(noisy, combined)),
            "loss_auc": float(roc_auc_score(noisy, loss)),
            "top15_net_harm_flipped_share": float(noisy[top_net].mean()),
            "same_count_by_loss_flipped_share": float(noisy[by_loss].mean())}


def text_study(points: list[str], out: Path, max_train: int, work: Path, log, runs: list | None = None,
               prior: str = "auto") -> dict:
    """``fastif demo``'s data (flows/cli.py: DEMO_NOISE, --max-train 2000) and settings (k = 200), no
    retrain, text-minilm with ``model_options={"epochs": e}``; one output folder shared by the runs
    so the stages that do not depend on the model (the export, the frozen layers' pass) are reused.
    ``points``: epoch counts, or ``E@LR`` for E epochs at learning rate LR (the recipe's: 1e-4)."""
    import shutil

    import pandas as pd

    import fastif_engine
    from flows.cli import DEMO_NOISE

    data = work / "data"
    paths = export("rotten-tomatoes", data, max_train=max_train, **DEMO_NOISE)
    log(f"fastif {__version__}, the demo's data: rotten-tomatoes, max_train {max_train}, {DEMO_NOISE}, k 200, "
        f"no retrain, torch threads {torch.get_num_threads()}")
    runs = list(runs or [])
    for point in points:
        e, _, lr = str(point).partition("@")
        e = int(e)
        options = {"epochs": e, **({"lr": float(lr)} if lr else {})}
        t0 = time.perf_counter()
        run_dir = work / "run"
        result = fastif_engine.clean(str(paths["train"]), str(paths["valid"]), str(paths["test"]),
                                     model="text-minilm", model_options=options, k=200, retrain=False,
                                     net_harm_prior=prior,
                                     out=run_dir, progress=False)
        m = result.metrics
        flags = pd.read_parquet(run_dir / "flags.parquet")
        q = flag_quality(flags)
        fit = m["model_fit"]
        entry = {"epochs": e, "lr": options.get("lr", 1e-4), "net_harm_prior": prior, "model_fit": fit, "valid_accuracy": m["accuracy"]["before"]["valid"],
                 "eval_accuracy": m["accuracy"]["before"].get("eval"), "counts": m["counts"],
                 "flagging": {k: v for k, v in m["flagging"].items() if k != "class_prior"},
                 "class_prior_refitted": m["flagging"].get("class_prior", {}).get("refitted"),
                 "solver": {k: m["solver"].get(k) for k in ("name", "ridge", "ridge_rule", "parameters")},
                 "timings": m["timings"], "seconds": time.perf_counter() - t0, **q,
                 "flagged_ids": flags.loc[flags["flagged"], "train_id"].tolist()}
        runs.append(entry)
        log(f"e={e} lr {entry['lr']:g} prior {prior}: ratio {fit['ratio']:.3g}  valid acc {entry['valid_accuracy']:.4f}  errors {m['counts']['errors']}  "
            f"flagged {q['flagged']}  flipped among them {q['flipped_among_flags']} ({q['flipped_share_of_flags']:.2f}; "
            f"recall {q['recall_of_flipped']:.2f})  net-harm AUC {q['net_harm_auc']:.3f}  combined AUC "
            f"{q['combined_auc']:.3f}  top15 by net harm {q['top15_net_harm_flipped_share']:.2f}  "
            f"same count by loss {q['same_count_by_loss_flipped_share']:.2f}  ({entry['seconds']:.0f} s)")
        out.write_text(json.dumps({"version": __version__, "dataset": "rotten-tomatoes", "max_train": max_train,
                                   "noise": DEMO_NOISE, "k": 200, "stationary_ratio": STATIONARY_RATIO,
                                   "runs": runs}, indent=1))
        for name in ("flags.parquet", "metrics.json", "influence.parquet", "fixes.csv", "report.html", "report.md"):
            (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"runs": runs}


def text_table(runs: list[dict]) -> list[str]:
    lines = ["| model | epochs | lr | net-harm prior | ratio | valid accuracy | errors | flagged | flipped among flags | share | recall "
             "| net-harm AUC | combined AUC | top-15% by net harm: flipped | same count by own loss: flipped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        prior = r.get("net_harm_prior", "auto") + (" (refitted)" if r.get("class_prior_refitted") else "")
        lines.append(f"| text-minilm | {r['epochs']} | {r.get('lr', 1e-4):g} | {prior} | {r['model_fit']['ratio']:.3g} | {r['valid_accuracy']:.4f} | "
                     f"{r['counts']['errors']} | {r['flagged']} | {r['flipped_among_flags']} | "
                     f"{r['flipped_share_of_flags']:.3f} | {r['recall_of_flipped']:.3f} | {r['net_harm_auc']:.3f} | "
                     f"{r['combined_auc']:.3f} | {r['top15_net_harm_flipped_share']:.3f} | "
                     f"{r['same_count_by_loss_flipped_share']:.3f} |")
    return lines


# ---------------------------------------------------------------- deliberately under-trained tabular states

# Adam minibatch steps from the recipe's initial weights (the recipe's minibatch stream, batch 64).
# tabular-mlp at lr 3e-3 is its recipe's first epoch cut short (17 steps = 1 epoch on digits);
# tabular-logreg (recipe: L-BFGS) gets Adam at lr 3e-3. Digits' ratio is 0.11–0.14 at the initial
# weights, so breast-cancer (binary, 0.32 at the initial weights) is added to reach 0.1–0.35.
UNDER_STEPS = {"digits": [0, 2, 5, 8, 12, 17, 34], "breast-cancer": [0, 2, 4, 6, 8, 12, 17, 40]}
UNDER_LR = 3e-3
UNDER_MODELS = ("tabular-logreg", "tabular-mlp")
# digits' pixels read as 64 feature columns by the product too (the study's other parts flatten the image
# themselves; the tabular models standardise each column, so the 0–16 vs 0–1 pixel scale cancels)
UNDER_COLUMNS = {"digits": {"embedding_column": "image"}, "breast-cancer": {}}


def adam_steps(adapter, start: dict, x, y, steps: int, lr: float, batch_size: int, seed: int) -> None:
    """``steps`` Adam minibatch steps from ``start`` over the recipe's minibatch stream."""
    load(adapter, start)
    model = adapter.model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        for idx in minibatches(len(y), batch_size, gen):
            if done >= steps:
                break
            opt.zero_grad()
            objective(adapter, x[idx], y[idx]).backward()
            opt.step()
            done += 1
    model.eval()


def product_flags(adapter, paths: dict, work: Path, k: int, columns: dict) -> dict:
    """``clean(model=<this state>, weights="given", k=k, retrain=False)``: the product's flags (combined
    score, evidence floor, class-prior check, 10 folds, solver auto) for exactly this θ̂."""
    import copy
    import shutil

    import pandas as pd

    import fastif_engine

    from fastif_engine.errors import FastIFError

    run_dir = work / "product"
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        result = fastif_engine.clean(str(paths["train"]), str(paths["valid"]), str(paths["test"]),
                                     model=copy.deepcopy(adapter), weights="given", k=k, retrain=False, out=run_dir,
                                     progress=False, **columns)
    except FastIFError as exc:  # e.g. the solver refusing an indefinite H + λI: what a user gets
        shutil.rmtree(run_dir, ignore_errors=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
    m = result.metrics
    flags = pd.read_parquet(run_dir / "flags.parquet")
    out = flag_quality(flags)
    out.update(ratio=m["model_fit"]["ratio"], valid_accuracy=m["accuracy"]["before"]["valid"],
               errors=m["counts"]["errors"], solver=m["solver"]["name"],
               class_prior_refitted=m["flagging"].get("class_prior", {}).get("refitted"),
               below_evidence=m["flagging"].get("below_evidence"))
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def undertrained_study(dataset: str, model_name: str, paths: dict, work: Path, seed: int, k: int, log) -> dict:
    from fastif_engine.data.tables import Columns

    columns = UNDER_COLUMNS[dataset]
    ds = load_dataset({s: str(p) for s, p in paths.items()},
                      Columns(embedding=columns["embedding_column"]) if columns else Columns())
    adapter, inputs = model_for(model_name, ds)
    x, xv = inputs("train"), inputs("valid")
    y, yv = torch.as_tensor(ds.splits["train"].labels), torch.as_tensor(ds.splits["valid"].labels)
    noisy = ds.splits["train"].extra["noisy"].to_numpy().astype(bool)
    recipe = adapter.settings
    log(f"\n## {dataset}, {model_name}: N = {len(y)}, {noisy.sum()} mislabeled; Adam steps at lr {UNDER_LR:g}, "
        f"batch {recipe.batch_size} (recipe {recipe})")
    start = initial_state(adapter, x, seed)

    adapter.fit(x, y, seed=seed)
    recipe_state = snapshot(adapter)
    reached = converge(adapter, x, y)
    reference = influence_at(adapter, x, y, xv, yv)
    ref_harm = reference["harm"]
    log(f"reference: recipe + L-BFGS, ratio {reference['fit']['ratio']:.2e} ({reached['lbfgs_rounds']} rounds), "
        f"valid loss {reference['valid_loss']:.4f}")

    states = [(f"{s} steps", s, None) for s in UNDER_STEPS[dataset]]
    states.append(("recipe", None, recipe_state))
    states.append(("converged", None, snapshot(adapter)))
    rows = []
    for label, steps, state in states:
        t0 = time.perf_counter()
        if state is None:
            adam_steps(adapter, start, x, y, steps, UNDER_LR, recipe.batch_size, seed)
        else:
            load(adapter, state)
        at = influence_at(adapter, x, y, xv, yv)
        agree = {name: (agreement(h, ref_harm[name], noisy) if h is not None and ref_harm[name] is not None else None)
                 for name, h in at["harm"].items()}
        prod = product_flags(adapter, paths, work, k, columns)
        entry = {"state": label, "steps": steps, "fit": at["fit"], "ratio_full": at["ratio_full"],
                 "valid_loss": at["valid_loss"], "valid_accuracy": at["valid_accuracy"],
                 "train_accuracy": at["train_accuracy"], "top_eigenvalue": at["top_eigenvalue"],
                 "agreement": agree, "product": prod, "seconds": time.perf_counter() - t0}
        rows.append(entry)
        a = agree[PRODUCT_RIDGE]
        shown = (f"product: {prod['error']}" if "error" in prod else
                 f"product: ratio {prod['ratio']:.3g} flagged {prod['flagged']} flipped {prod['flipped_among_flags']} "
                 f"({prod['flipped_share_of_flags']:.2f}, recall {prod['recall_of_flipped']:.2f}) net-harm AUC "
                 f"{prod['net_harm_auc']:.3f} top15 {prod['top15_net_harm_flipped_share']:.2f} by-loss "
                 f"{prod['same_count_by_loss_flipped_share']:.2f}")
        plain = ("H + λI indefinite" if a is None else f"pearson vs conv {a['pearson']:.3f} top15 flipped "
                 f"{a['top15_mislabeled']:.2f} AUC {a['mislabeled_auc']:.3f}")
        log(f"{label:>10}: ratio {at['fit']['ratio']:.3g}  valid acc {at['valid_accuracy']:.3f} loss "
            f"{at['valid_loss']:.3f} | plain net harm (0.3·top): {plain} | {shown} ({entry['seconds']:.0f}s)")
    return {"dataset": dataset, "model": model_name, "train_rows": int(len(y)), "mislabeled": int(noisy.sum()),
            "lr": UNDER_LR, "batch_size": recipe.batch_size, "recipe": dataclasses.asdict(recipe),
            "reference": {"fit": reference["fit"], "ratio_full": reference["ratio_full"], "continuation": reached,
                          "valid_loss": reference["valid_loss"]}, "states": rows}


def undertrained_table(results: list[dict]) -> list[str]:
    lines = ["| data | model | state | ratio | valid acc | plain: pearson vs converged | plain: top-15% flipped "
             "| plain: AUC | plain 0.03·top: top-15% flipped / AUC | product: flagged | product: flipped among flags "
             "(share) | product: net-harm AUC | product: top-15% by net harm flipped | same count by own loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["states"]:
            a, l, p = r["agreement"][PRODUCT_RIDGE], r["agreement"]["0.03·top"], r["product"]
            light = "indefinite" if l is None else f"{l['top15_mislabeled']:.2f} / {l['mislabeled_auc']:.3f}"
            plain = ("indefinite | | " if a is None else
                     f"{a['pearson']:.3f} | {a['top15_mislabeled']:.2f} | {a['mislabeled_auc']:.3f} ")
            head = (f"| {res['dataset']} | {res['model']} | {r['state']} | {r['fit']['ratio']:.3g} | "
                    f"{r['valid_accuracy']:.3f} | {plain}| {light} ")
            if "error" in p:
                lines.append(head + f"| refused: {p['error'].split(':')[0]} | | | | |")
                continue
            lines.append(head + f"| {p['flagged']} | {p['flipped_among_flags']} "
                         f"({p['flipped_share_of_flags']:.2f}) | {p['net_harm_auc']:.3f} | "
                         f"{p['top15_net_harm_flipped_share']:.2f} | {p['same_count_by_loss_flipped_share']:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fit_check.json")
    ap.add_argument("--summary", action="store_true", help="print the table from --out's saved results, run nothing")
    ap.add_argument("--text", action="store_true", help="the demo's data and model through clean(), per epoch count")
    ap.add_argument("--text-epochs", nargs="+", default=[str(e) for e in TEXT_EPOCHS],
                    help="epoch counts, or E@LR (E epochs at learning rate LR)")
    ap.add_argument("--append", action="store_true", help="--text: add to the runs already in --out")
    ap.add_argument("--net-harm-prior", default="auto", choices=["auto", "refit", "model"], help="--text: clean()'s setting")
    ap.add_argument("--max-train", type=int, default=2000, help="--text: training rows (the demo's 2000)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fit_check-text",
                    help="--text: scratch folder (data export and the shared run folder)")
    ap.add_argument("--undertrained", action="store_true", help="under-trained tabular states, plain and product flags")
    ap.add_argument("--k", type=int, default=200, help="--undertrained: the product runs' k")
    args = ap.parse_args()
    results_dir = Path(__file__).parent / "results"
    if args.undertrained:
        out = args.out if args.out != results_dir / "fit_check.json" else results_dir / "fit_check-undertrained.json"
        if args.summary:
            print("\n".join(undertrained_table(json.loads(out.read_text())["results"])))
            return
        t0 = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="fit_check-under-"))
        results = []
        print(f"fastif {__version__}, {args.noise:.0%} uniform label noise, seed {args.seed}, torch threads "
              f"{torch.get_num_threads()}, product runs k {args.k}, no retrain", flush=True)
        for dataset in UNDER_STEPS:
            paths = export(dataset, work / dataset, noise=args.noise, noise_mode="uniform", seed=args.seed)
            for name in UNDER_MODELS:
                results.append(undertrained_study(dataset, name, paths, work, args.seed, args.k,
                                                  lambda line: print(line, flush=True)))
                out.write_text(json.dumps({"version": __version__, "noise": args.noise, "noise_mode": "uniform",
                                           "seed": args.seed, "k": args.k, "flag_share": FLAG_SHARE,
                                           "stationary_ratio": STATIONARY_RATIO, "results": results}, indent=1))
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        print("\n" + "\n".join(undertrained_table(results)))
        print(f"\ntotal {time.perf_counter() - t0:.0f} s; raw numbers in {out}")
        return
    if args.text:
        out = args.out if args.out != results_dir / "fit_check.json" else results_dir / "fit_check-text.json"
        if args.summary:
            print("\n".join(text_table(json.loads(out.read_text())["runs"])))
            return
        t0 = time.perf_counter()
        before = json.loads(out.read_text())["runs"] if args.append and out.exists() else None
        runs = text_study(args.text_epochs, out, args.max_train, args.work, lambda line: print(line, flush=True),
                          before, args.net_harm_prior)["runs"]
        print("\n" + "\n".join(text_table(runs)))
        print(f"\ntotal {time.perf_counter() - t0:.0f} s; raw numbers in {out}")
        return
    if args.summary:
        print("\n".join(table(json.loads(args.out.read_text())["results"])))
        return
    t0 = time.perf_counter()

    def log(line: str) -> None:
        print(line, flush=True)

    ds = load_digits(args.noise, args.seed)
    log(f"fastif {__version__}, digits, {args.noise:.0%} uniform label noise, seed {args.seed}, "
        f"torch threads {torch.get_num_threads()}; the warning line is ratio > {STATIONARY_RATIO}")
    results = []
    for name in args.models:
        results.append(study(name, ds, args.seed, log))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"version": __version__, "dataset": "digits", "noise": args.noise,
                                        "noise_mode": "uniform", "seed": args.seed, "ridges": RIDGES,
                                        "flag_share": FLAG_SHARE, "group_share": GROUP_SHARE,
                                        "stationary_ratio": STATIONARY_RATIO, "results": results}, indent=1))
    log("")
    for line in table(results):
        log(line)
    log(f"\ntotal {time.perf_counter() - t0:.0f} s; raw numbers in {args.out}")


if __name__ == "__main__":
    main()
