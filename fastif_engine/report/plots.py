"""The report's figures (PNG bytes): the flag score's distribution, retrained accuracy, image thumbnails."""
from __future__ import annotations

import io

import numpy as np

from .content import SCORE_TEXT


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


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
