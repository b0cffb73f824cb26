"""The run report: what a person reads after a cleaning run (markdown and self-contained HTML).

Sections: the verdict of the retrain (helped / no measurable effect / hurt, with 95% CIs), the
accuracy change (with spread over seeds and the random control), how many rows the budget
allowed and how many cleared the evidence floor, the flags' class mix, how the flag score and
harm are distributed, and the top flagged training rows shown as content (text snippet, image
thumbnail or feature values) with given vs predicted label, scores and the errors they harm.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from .ranking import FLAG_SCORES

SIGN_NOTE = ("Scores: I(z, z_test) = −∇L(z_test)ᵀ(H + λI)⁻¹∇L(z); **positive = harmful** (removing the "
             "row should lower the error's loss), negative = helpful. harm_score sums I over the "
             "validation errors that have the row among their k nearest training rows.")


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


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


def plot_score_distribution(values: np.ndarray, flagged: np.ndarray, flag_by: str) -> bytes:
    """Histogram of one score, flagged rows in red; for harm, only rows retrieved as candidates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    scored = values != 0 if flag_by == "harm" else np.isfinite(values)
    bins = np.histogram_bin_edges(values[scored] if scored.any() else values, bins=50)
    ax.hist(values[scored & ~flagged], bins=bins, color="#8fa8c8", label="not flagged")
    ax.hist(values[scored & flagged], bins=bins, color="#d9534f", label="flagged")
    ax.set_yscale("log")
    ax.set_xlabel(SCORE_TEXT[flag_by][0])
    ax.set_ylabel("training rows")
    rows = "rows retrieved as candidates" if flag_by == "harm" else "training rows"
    ax.set_title(f"{flag_by.capitalize()} scores of the {int(scored.sum())} {rows}")
    ax.legend()
    return _figure_png(fig)


def plot_accuracy(summary: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("original", "cleaned", "random") if n in summary]
    means = [summary[n]["mean"] for n in names]
    stds = [summary[n]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.bar(names, means, yerr=stds, capsize=6, color=["#8fa8c8", "#5cb85c", "#bbbbbb"][: len(names)])
    for i, v in enumerate(summary[n]["values"] for n in names):
        ax.scatter([i] * len(v), v, color="black", s=10, zorder=3)
    lo = min(min(summary[n]["values"]) for n in names)
    hi = max(max(summary[n]["values"]) for n in names)
    pad = max(0.01, (hi - lo) * 0.6)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.set_ylabel("accuracy")
    ax.set_title("Retrained accuracy: mean ± std over seeds (dots: seeds)")
    return _figure_png(fig)


def thumbnail(image: np.ndarray, size: int = 84) -> bytes:
    from PIL import Image

    img = np.asarray(image, dtype=np.float64).squeeze()
    lo, hi = float(img.min()), float(img.max())
    scaled = ((img - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(img)).astype(np.uint8)
    pil = Image.fromarray(scaled).resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _accuracy_lines(metrics: dict) -> list[str]:
    acc = metrics.get("accuracy", {})
    lines = []
    if "before" in acc:
        lines.append(f"- Model as trained: validation accuracy **{acc['before']['valid']:.4f}**"
                     + (f", {acc['before']['eval_split']} accuracy **{acc['before']['eval']:.4f}**"
                        if "eval" in acc["before"] else ""))
    retrain = acc.get("retrain")
    if retrain:
        split, flagged = retrain["eval_split"], metrics["counts"]["flagged"]
        fixed = (f"with the {flagged} flagged rows relabelled" if retrain.get("fix") == "relabel"
                 else f"without the {flagged} flagged rows")
        control = ("with as many random rows relabelled the same way" if retrain.get("fix") == "relabel"
                   else "without as many random rows")
        lines.append(f"- Retrained with {retrain['seeds']} seeds, evaluated on {split} ({retrain['eval_rows']} rows; "
                     f"one accuracy measured there has a standard error of about "
                     f"{retrain['accuracy_stderr']:.4f}):")
        for name, label in (("original", "all rows as given"), ("cleaned", fixed), ("random", control)):
            s = retrain["summary"].get(name)
            if s:
                lines.append(f"  - {label}: **{s['mean']:.4f} ± {s['std']:.4f}**")
        lines.append(f"- Change from fixing the flags, paired by seed: {_ci(retrain['fixed_minus_original'])} vs the "
                     f"original, {_ci(retrain['fixed_minus_random'])} vs the random control")
    else:
        lines.append("- No retraining in this run (use `--retrain` to measure the effect of fixing the flags).")
    return lines


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


def _flagging_lines(metrics: dict) -> list[str]:
    f = metrics.get("flagging")
    if not f:
        return []
    lines = [f"The budget allowed **{f['within_budget']}** rows with a positive {f['score']} score; "
             f"**{f['flagged']}** were flagged."]
    if f["min_evidence"] > 0 and f["below_evidence"]:
        were = "was" if f["below_evidence"] == 1 else "were"
        lines.append(f"{f['below_evidence']} {were} not: their net harm on the validation loss did not reach the "
                     f"evidence floor (t ≥ {f['min_evidence']:g} over {f['folds']} validation folds"
                     + (f"; for {f['net_harm_not_positive']} of them it was not even positive" if
                        f["net_harm_not_positive"] else "")
                     + "), so removing them is not expected to help. A budget is a ceiling, not a quota "
                       "(`--flag-evidence 0` turns the floor off).")
    mix = metrics.get("class_mix")
    if mix and f["flagged"]:
        lines += ["", "| given label | training rows | share | flagged | share of flags |", "|---|---|---|---|---|"]
        lines += [f"| {_cell(c['label'])} | {c['train']} | {c['train_share']:.1%} | {c['flagged']} | "
                  f"{c['flagged_share']:.1%} |" for c in mix["classes"]]
        if mix["distance"] >= 0.3 and f["flagged"] >= 10:
            lines += ["", f"**The flags are far from the training rows' class mix** (total-variation distance "
                          f"{mix['distance']:.2f}): fixing them also shifts the class balance, which can change "
                          "accuracy by itself. That is expected when one class's labels are the noisy ones; "
                          "otherwise look at the rows before acting."]
    return lines


def _history_lines(metrics: dict, shown: int = 20) -> list[str]:
    """What changed since the previous recorded run, and the trend over the last runs."""
    h = metrics.get("history")
    if not h:
        return []
    lines = ["## Since the last run", ""]
    c = h["changes"]
    if c is None:
        lines += [f"This is the first run recorded in `{h['path']}`; the next one will say which flags are new, "
                  "still there or gone.", ""]
    else:
        lines += [f"Against the run of {c['previous_time']}: **{len(c['new'])} new** flags, {len(c['still'])} still "
                  f"flagged, **{len(c['gone'])} gone** (no longer flagged: fixed, or no longer suspect).", ""]
        listed = [name for name in ("new", "gone") if c[name]]
        for name in listed:
            more = f" (and {len(c[name]) - shown} more)" if len(c[name]) > shown else ""
            lines.append(f"- {name}: " + ", ".join(_cell(i) for i in c[name][:shown]) + more)
        lines += [""] if listed else []
    lines += ["| run (UTC) | errors | flagged | validation accuracy | retrain verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['time']} | {r['errors']} | {r['flagged']} | {r['valid_accuracy']:.4f} | "
              f"{_cell(r['verdict'] or '—')} |" for r in h["trend"]]
    return lines + [""]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(metrics: dict, top_rows: list[dict], plots: dict[str, bytes]) -> tuple[str, str, dict[str, bytes]]:
    """Return (markdown, html, assets): markdown refers to ``report_assets/NAME.png`` files."""
    counts = metrics["counts"]
    cfg = metrics["config"]
    flag_by = metrics.get("flag_by", "harm")
    verdict = verdict_line(metrics)
    head = [
        "# fastif cleaning report", "",
        *([f"**{verdict}**", ""] if verdict else []),
        f"Model `{cfg['model']}` on `{cfg['train']}` ({counts['train']} training rows); "
        f"{counts['errors']} of {counts['valid']} validation examples misclassified; "
        f"k = {cfg['k']} neighbours each ({counts['distinct_candidates']} distinct training rows scored); "
        f"**{counts['flagged']} rows flagged** by {flag_by}.", "",
        "## Accuracy", "", *_accuracy_lines(metrics), "",
        "## Flags", "", *_flagging_lines(metrics), "",
    ]
    if counts["errors"] == 0:
        head += ["**The model made no mistakes on the validation set: there is nothing to explain"
                 + (", and no row is flagged.**" if flag_by in ("combined", "net-harm", "harm") else ".**"), ""]
    head += _history_lines(metrics)
    solver = metrics.get("solver", {})
    head += ["## Scores", "", SCORE_TEXT[flag_by][1], ""]
    if flag_by != "harm":  # harm's own note is the sign convention; other scores still show harm
        head += [SIGN_NOTE, ""]
    head += [f"Solver: {solver.get('name', '?')}, ridge λ = {solver.get('ridge', float('nan')):.4g}"
             + (f", scale {solver['scale']:.4g}" if solver.get("scale") else "") + ".", ""]
    assets = {}
    md = list(head)
    for name, png in plots.items():
        assets[f"{name}.png"] = png
        md += [f"![{name}](report_assets/{name}.png)", ""]
    md += [f"## Top flagged training rows (by {flag_by})", ""]
    own = [] if flag_by == "harm" else [flag_by]
    if not top_rows:
        md += ["No row was flagged.", ""]
    else:
        header = ["rank", "train id", "content", "given", "predicted", "suggested action", *own,
                  "net harm (t)", "harm score", "errors harmed", "errors it harms most (influence; true → predicted)"]
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in top_rows:
            if "image_png" in row:
                assets[f"row_{row['rank']}.png"] = row["image_png"]
                content = f"![row {row['train_id']}](report_assets/row_{row['rank']}.png)"
            else:
                content = _cell(row["content"])
            cells = [row["rank"], _cell(row["train_id"]), content, _cell(row["given"]), _cell(row["predicted"]),
                     f"relabel to {_cell(row['suggested'])}" if row.get("suggested") else "remove",
                     *(f"{row[FLAG_SCORES[name]]:.4g}" for name in own),
                     f"{row['net_harm']:.4g} ({row['net_harm_t']:.1f})", f"{row['harm_score']:.4g}",
                     row["n_errors_harmed"], _cell(row["harms"])]
            md.append("| " + " | ".join(str(c) for c in cells) + " |")
        md.append("")
    md += ["## Run", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in metrics.get("timings", {}).items()]
    md += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in metrics.get('versions', {}).items())}", ""]
    markdown = "\n".join(md)
    return markdown, _html(markdown, assets), assets


def _html(markdown: str, assets: dict[str, bytes]) -> str:
    """A small markdown → HTML conversion for exactly what :func:`render` writes; images inlined."""
    out, in_list, table = [], False, []

    def inline(text: str) -> str:
        import re

        esc = html.escape(text, quote=False)
        esc = re.sub(r"!\[([^\]]*)\]\(report_assets/([^)]+)\)",
                     lambda m: f'<img alt="{m.group(1)}" src="data:image/png;base64,'
                               f'{base64.b64encode(assets[m.group(2)]).decode()}">', esc)
        esc = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", esc)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc)

    def flush_table():
        if not table:
            return
        rows = [r.strip().strip("|").split(" | ") for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
        cells = lambda tag, r: "".join(f"<{tag}>{inline(c.strip().replace(chr(92) + '|', '|'))}</{tag}>" for c in r)
        out.append("<table><thead><tr>" + cells("th", rows[0]) + "</tr></thead><tbody>"
                   + "".join("<tr>" + cells("td", r) + "</tr>" for r in rows[1:]) + "</tbody></table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("- ") or line.startswith("  - "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{inline(line.strip()[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    if in_list:
        out.append("</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top;text-align:left}th{background:#f3f3f3}td{max-width:420px}code{background:#f3f3f3}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>fastif cleaning report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
