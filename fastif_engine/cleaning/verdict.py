"""Did fixing the flags help? Paired differences over retrain seeds, with a 95% confidence interval.

Every seed retrains the original, the fixed and the random-control training sets with the same
seed, so the per-seed differences (fixed − original, fixed − random) are paired: the seed's own
luck cancels. Their mean and Student-t 95% interval give the verdict:

* **helped**: the interval of fixed − original lies above 0;
* **hurt**: it lies below 0;
* **no measurable effect**: it contains 0 (or there is one seed, hence no interval).

"beyond random" is added where fixed − random is above 0 as well: the flags, not just any
change of the training set, made the difference.
"""
from __future__ import annotations

import math
import statistics
from ..errors import SettingsError
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PairedCI:
    mean: float
    low: float  # NaN with one pair
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_ci(a: list[float], b: list[float], level: float = 0.95) -> PairedCI:
    """Mean of ``a[i] − b[i]`` and its Student-t ``level`` confidence interval."""
    from scipy.stats import t as student_t

    if len(a) != len(b) or not a:
        raise SettingsError(f"paired values needed: got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedCI(mean, math.nan, math.nan, 1)
    half = student_t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedCI(mean, mean - half, mean + half, len(diffs))


def accuracy_stderr(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` rows."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else math.nan


def verdict(vs_original: PairedCI, vs_random: PairedCI) -> str:
    """``helped`` / ``hurt`` / ``no measurable effect``, with ``beyond random`` where it applies."""
    if vs_original.n < 2:
        return "no measurable effect (one seed gives no confidence interval; retrain with 3 or more seeds)"
    if vs_original.low > 0:
        word = "helped"
        if vs_random.low > 0:
            word += ", beyond random removal"
        elif vs_random.high < 0:
            word += ", but random removal helped more"
        else:
            word += ", but not measurably more than random removal"
        return word
    if vs_original.high < 0:
        return "hurt"
    return "no measurable effect"


def retrain_verdict(values: dict[str, list[float]]) -> dict:
    """The verdict block of ``metrics.json`` from per-seed accuracies of original / cleaned / random."""
    vs_original = paired_ci(values["cleaned"], values["original"])
    vs_random = paired_ci(values["cleaned"], values["random"])
    return {"verdict": verdict(vs_original, vs_random), "fixed_minus_original": vs_original.as_dict(),
            "fixed_minus_random": vs_random.as_dict()}
