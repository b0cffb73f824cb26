"""The run report: what a person reads after a cleaning run (markdown and self-contained HTML).

Sections: the verdict of the retrain (helped / no measurable effect / hurt, with 95% CIs), the
accuracy change (with spread over seeds and the random control), how many rows the budget
allowed and how many cleared the evidence floor, the flags' class mix, how the flag score and
harm are distributed, and the top flagged training rows shown as content (text snippet, image
thumbnail or feature values) with given vs predicted label, scores and the errors they harm.
"""
from __future__ import annotations

from ..cleaning.flagging import FLAG_SCORES
from ..influence.gradients import FIT_ADVICE
from .blocks import Block, Code, Img, Raw, _p
from .html import to_html
from .markdown import to_markdown

SIGN_NOTE = ("Scores: I(z, z_test) = −∇L(z_test)ᵀ(H + λI)⁻¹∇L(z); **positive = harmful** (removing the "
             "row should lower the error's loss), negative = helpful. harm_score sums I over the "
             "validation errors that have the row among their k nearest training rows.")


# flag_by → (axis label, what the report says about the score)
NET_NOTE = ("**Net harm** is a row's influence on the whole validation loss, misclassified and correct rows "
            "alike: −(Σ∇L(valid))ᵀ(H + λI)⁻¹∇L(z), positive = removing the row should lower the validation loss. "
            "It is computed from one s_test per validation fold; its t-statistic over the folds says how much "
            "of the validation set agrees.")
SCORE_TEXT = {
    "combined": ("combined score (mean percentile rank)", "Rows are flagged by the **combined** score: the mean "
                 "percentile rank of the row's net harm on the validation loss and of its own training loss. "
                 "Rows near the top both raise the validation loss and carry a label the model disagrees with, "
                 "which is how flipped labels look under random and under systematic (class-conditional) noise "
                 "alike (docs/BENCHMARKS.md). " + NET_NOTE),
    "net-harm": ("net harm on the validation loss (positive = harmful)", "Rows are flagged by **net harm**. "
                 + NET_NOTE),
    "harm": ("harm score (positive = harmful)", SIGN_NOTE),
    "self-influence": ("self-influence", "Rows are flagged by **self-influence** ∇L(z)ᵀ(H + λI)⁻¹∇L(z): how much "
                       "a row's own loss depends on the row itself. It is high for rows the model can only fit "
                       "by memorising them, which is how mislabelled rows look; it does not depend on the "
                       "validation errors."),
    "loss": ("own training loss", "Rows are flagged by their **own training loss** under the fitted model "
             "(cross-entropy of the given label): the rows whose given label the model disagrees with most. "
             "It does not depend on the validation errors."),
}


def _accuracy_items(metrics: dict) -> list:
    acc = metrics.get("accuracy", {})
    items = []
    if "before" in acc:
        items.append(([f"Model as trained: validation accuracy **{acc['before']['valid']:.4f}**"
                       + (f", {acc['before']['eval_split']} accuracy **{acc['before']['eval']:.4f}**"
                          if "eval" in acc["before"] else "")], []))
    fit = metrics.get("model_fit")
    if fit:
        line = (f"Training-loss gradient at the model's weights: ‖∇R‖ = {fit['gradient_norm']:.3g}, "
                f"{fit['ratio']:.3g} × a single row's")
        items.append(([line + ("" if fit["stationary"] else
                               " — **the model is far from a minimum of its training loss**, which influence "
                               f"assumes: its scores may not rank the harmful rows. {FIT_ADVICE}.")], []))
    retrain = acc.get("retrain")
    if retrain:
        split, flagged = retrain["eval_split"], metrics["counts"]["flagged"]
        fixed = (f"with the {flagged} flagged rows relabelled" if retrain.get("fix") == "relabel"
                 else f"without the {flagged} flagged rows")
        control = ("with as many random rows relabelled the same way" if retrain.get("fix") == "relabel"
                   else "without as many random rows")
        variants = [[f"{label}: **{s['mean']:.4f} ± {s['std']:.4f}**"]
                    for name, label in (("original", "all rows as given"), ("cleaned", fixed), ("random", control))
                    if (s := retrain["summary"].get(name))]
        items.append(([f"Retrained with {retrain['seeds']} seeds, evaluated on {split} ({retrain['eval_rows']} rows; "
                       f"one accuracy measured there has a standard error of about {retrain['accuracy_stderr']:.4f}):"],
                      variants))
        items.append(([f"Change from fixing the flags, paired by seed: {_ci(retrain['fixed_minus_original'])} vs the "
                       f"original, {_ci(retrain['fixed_minus_random'])} vs the random control"], []))
    else:
        items.append((["No retraining in this run (use `--retrain` to measure the effect of fixing the flags)."], []))
    return items


def _ci(ci: dict) -> str:
    if ci["low"] != ci["low"]:  # NaN: one seed
        return f"**{ci['mean']:+.4f}** (one seed: no interval)"
    return f"**{ci['mean']:+.4f}** (95% CI {ci['low']:+.4f} to {ci['high']:+.4f})"


def verdict_line(metrics: dict) -> str | None:
    """The one line a person reads first: did fixing the flags help?"""
    retrain = metrics.get("accuracy", {}).get("retrain")
    if not retrain:
        return None
    what = "relabelling" if retrain.get("fix") == "relabel" else "removing"
    outcome = retrain["verdict"]
    if outcome.startswith("no measurable effect"):
        outcome = "had " + outcome
    ci = retrain["fixed_minus_original"]
    caveat = ""
    if ci["n"] > 1 and ci["low"] == ci["high"]:  # every seed gave the same difference
        caveat = (f"; the retrain is deterministic, so the interval holds no seed noise: compare with the "
                  f"{retrain['eval_split']} split's standard error, ±{retrain['accuracy_stderr']:.4f}")
    return (f"Verdict: {what} the {metrics['counts']['flagged']} flagged rows {outcome} "
            f"({retrain['eval_split']} accuracy {_ci(ci).replace('**', '')}, over {retrain['seeds']} seeds{caveat}).")


def prior_parts(prior: dict | None, evidence: float) -> list | None:
    """What net harm did about the class prior (fastif_engine.influence.net_harm, ``--net-harm-prior``), as parts."""
    if not prior or "z" not in prior:
        return None
    gap = [o - e for o, e in zip(prior["observed"], prior["expected"])]
    c = max(range(len(gap)), key=lambda i: abs(gap[i]))
    mix = [f"validation has {prior['observed'][c]} rows of ", Code(prior["classes"][c]),
           f", the model predicts {prior['expected'][c]:.0f} for them (z = {prior['z']:.2f} over all classes"]
    if prior["setting"] != "auto":
        how = "refitted to validation" if prior["refitted"] else "the model's own"
        return [f"Class prior of net harm's validation loss: {how} (`--net-harm-prior {prior['setting']}`); ", *mix,
                ")."]
    if prior["refitted"]:
        return ["Net harm's validation loss is taken at the class prior refitted to validation: ", *mix,
                f", below {evidence:g}: within sampling noise), so a shift of the class mix alone flags no rows."]
    return ["Validation's class mix differs from the model's predictions beyond sampling noise: ", *mix,
            f", at least {evidence:g}). Net harm keeps the model's class prior, so rows that cause the shift can be "
            "flagged (expected when one class's labels are the noisy ones)."]


def _flagging_blocks(metrics: dict) -> list[Block]:
    f = metrics.get("flagging")
    if not f:
        return []
    blocks = [_p(f"The budget allowed **{f['within_budget']}** rows with a positive {f['score']} score; "
                 f"**{f['flagged']}** were flagged.")]
    prior = prior_parts(f.get("class_prior"), f["min_evidence"])
    if prior:
        blocks.append(_p(*prior))
    if f["min_evidence"] > 0 and f["below_evidence"]:
        were = "was" if f["below_evidence"] == 1 else "were"
        blocks.append(_p(f"{f['below_evidence']} {were} not: their net harm on the validation loss did not reach the "
                         f"evidence floor (t ≥ {f['min_evidence']:g} over {f['folds']} validation folds"
                         + (f"; for {f['net_harm_not_positive']} of them it was not even positive" if
                            f["net_harm_not_positive"] else "")
                         + "), so removing them is not expected to help. A budget is a ceiling, not a quota "
                           "(`--flag-evidence 0` turns the floor off)."))
    if f.get("past_budget"):
        blocks.append(_p(f"A further **{f['past_budget']}** rows past the budget clear the evidence floor too. The floor "
                         "is lenient (the demo's data has 880 such rows for its 262 mislabelled ones), so this count is "
                         "no estimate of the label errors left; but where you expect more of them than the budget "
                         "holds, a larger budget (`--flag-fraction`, `--flag-top`) flags more, and the retrain verdict "
                         "says whether that paid (docs/decisions/flag-budget.md)."))
    mix = metrics.get("class_mix")
    if mix and f["flagged"]:
        blocks.append(Block("table", header=["given label", "training rows", "share", "flagged", "share of flags"],
                            rows=[[Raw(c["label"]), str(c["train"]), f"{c['train_share']:.1%}", str(c["flagged"]),
                                   f"{c['flagged_share']:.1%}"] for c in mix["classes"]]))
        if mix["distance"] >= 0.3 and f["flagged"] >= 10:
            blocks.append(_p(f"**The flags are far from the training rows' class mix** (total-variation distance "
                             f"{mix['distance']:.2f}): fixing them also shifts the class balance, which can change "
                             "accuracy by itself. That is expected when one class's labels are the noisy ones; "
                             "otherwise look at the rows before acting."))
    return blocks


def _history_blocks(metrics: dict, shown: int = 20) -> list[Block]:
    """What changed since the previous recorded run, and the trend over the last runs."""
    h = metrics.get("history")
    if not h:
        return []
    blocks = [Block("h2", ["Since the last run"])]
    c = h["changes"]
    if c is None:
        blocks.append(_p("This is the first run recorded in ", Code(h["path"]), "; the next one will say which flags "
                         "are new, still there or gone."))
    else:
        blocks.append(_p(f"Against the run of {c['previous_time']}: **{len(c['new'])} new** flags, {len(c['still'])} "
                         f"still flagged, **{len(c['gone'])} gone** (no longer flagged: fixed, or no longer suspect)."))
        items = []
        for name in ("new", "gone"):
            if c[name]:
                more = f" (and {len(c[name]) - shown} more)" if len(c[name]) > shown else ""
                items.append(([f"{name}: ", Raw(", ".join(str(i) for i in c[name][:shown])), more], []))
        if items:
            blocks.append(Block("ul", items=items))
    blocks.append(Block("table", header=["run (UTC)", "errors", "flagged", "validation accuracy", "retrain verdict"],
                        rows=[[Raw(r["time"]), str(r["errors"]), str(r["flagged"]), f"{r['valid_accuracy']:.4f}",
                               Raw(r["verdict"] or "—")] for r in h["trend"]]))
    return blocks


def _top_rows_block(top_rows: list[dict], flag_by: str, assets: dict) -> Block:
    own = [] if flag_by == "harm" else [flag_by]
    header = ["rank", "train id", "content", "given", "predicted", "suggested action", *own,
              "net harm (t)", "harm score", "errors harmed", "errors it harms most (influence; true → predicted)"]
    rows = []
    for row in top_rows:
        if "image_png" in row:
            assets[f"row_{row['rank']}.png"] = row["image_png"]
            content = Img(f"row_{row['rank']}.png", f"row {row['train_id']}")
        else:
            content = Raw(row["content"])
        action = ["relabel to ", Raw(row["suggested"])] if row.get("suggested") else "remove"
        rows.append([str(row["rank"]), Raw(row["train_id"]), content, Raw(row["given"]), Raw(row["predicted"]), action,
                     *(f"{row[FLAG_SCORES[name]]:.4g}" for name in own),
                     f"{row['net_harm']:.4g} ({row['net_harm_t']:.1f})", f"{row['harm_score']:.4g}",
                     str(row["n_errors_harmed"]), Raw(row["harms"])])
    return Block("table", header=header, rows=rows)


def report_blocks(metrics: dict, top_rows: list[dict], plots: dict[str, bytes]) -> tuple[list[Block], dict]:
    """The report's content, once, for both renderings; returns (blocks, assets by file name)."""
    counts, cfg = metrics["counts"], metrics["config"]
    flag_by = metrics.get("flag_by", "harm")
    verdict = verdict_line(metrics)
    blocks = [Block("h1", ["fastif cleaning report"])]
    if verdict:
        blocks.append(_p(f"**{verdict}**"))
    blocks += [_p("Model ", Code(cfg["model"]), " on ", Code(cfg["train"]),
                  f" ({counts['train']} training rows); {counts['errors']} of {counts['valid']} validation examples "
                  f"misclassified; k = {cfg['k']} neighbours each ({counts['distinct_candidates']} distinct training "
                  f"rows scored); **{counts['flagged']} rows flagged** by {flag_by}."),
               Block("h2", ["Accuracy"]), Block("ul", items=_accuracy_items(metrics)),
               Block("h2", ["Flags"]), *_flagging_blocks(metrics)]
    if counts["errors"] == 0:
        blocks.append(_p("**The model made no mistakes on the validation set: there is nothing to explain"
                         + (", and no row is flagged.**" if flag_by in ("combined", "net-harm", "harm") else ".**")))
    blocks += _history_blocks(metrics)
    solver = metrics.get("solver", {})
    blocks += [Block("h2", ["Scores"]), _p(SCORE_TEXT[flag_by][1])]
    if flag_by != "harm":  # harm's own note is the sign convention; other scores still show harm
        blocks.append(_p(SIGN_NOTE))
    spec = solver.get("spectrum")
    blocks.append(_p(f"Solver: {solver.get('name', '?')}, ridge λ = {solver.get('ridge', float('nan')):.4g}"
                     + (f" ({solver['ridge_rule']})" if solver.get("ridge_rule") else "")
                     + (f", scale {solver['scale']:.4g}" if solver.get("scale") else "")
                     + (f"; λ is {spec['ridge_over_largest']:.3g} × the Hessian's largest eigenvalue and "
                        f"{spec['ridge_over_mean']:.3g} × its mean (estimated)" if spec else "") + "."))
    assets = {}
    for name, png in plots.items():
        assets[f"{name}.png"] = png
        blocks.append(Block("img", [Img(f"{name}.png", name)]))
    blocks.append(Block("h2", [f"Top flagged training rows (by {flag_by})"]))
    blocks.append(_top_rows_block(top_rows, flag_by, assets) if top_rows else _p("No row was flagged."))
    blocks += [Block("h2", ["Run"]),
               Block("table", header=["stage", "seconds"],
                     rows=[[k, f"{v:.1f}"] for k, v in metrics.get("timings", {}).items()]),
               _p(f"Versions: {', '.join(f'{k} {v}' for k, v in metrics.get('versions', {}).items())}")]
    return blocks, assets


def render(metrics: dict, top_rows: list[dict], plots: dict[str, bytes]) -> tuple[str, str, dict[str, bytes]]:
    """Return (markdown, html, assets): markdown refers to ``report_assets/NAME.png`` files; the HTML
    inlines them. Both come from the same blocks."""
    blocks, assets = report_blocks(metrics, top_rows, plots)
    return to_markdown(blocks), to_html(blocks, assets), assets


# ---- Markdown ----
