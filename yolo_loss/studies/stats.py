"""The statistics of paired comparisons and the verdict rule, defined once for ``results.md``, ``docs/findings.md``
and ``seeds: auto`` (docs/studies.md, "Reading a verdict").

A **comparison** is a variant against its reference in one metric, *paired by seed* (a seed fixes the initial
weights and the data order): ``d_s = variant_s - reference_s`` over the seeds both finished, reported as
``mean(d) +- SE``, ``SE = sd(d) / sqrt(n)``. For each comparison (:class:`Difference`):

- **raw p**: the two-sided paired t-test of ``mean(d) = 0`` (``scipy.stats.ttest_1samp``);
- **MDE**: the minimum detectable effect at 95%, ``t(0.975, n - 1) sd(d) / sqrt(n)``, the half-width of the 95%
  t-interval: a difference smaller than this cannot be told from 0 with these seeds;
- **TOST p**: the two one-sided t-tests of equivalence within ``+-m`` (``m`` the study's ``min_effect``): the larger
  of the p-values of ``mean(d) <= -m`` and ``mean(d) >= m``; below 0.05 when the 90% t-interval lies inside
  ``(-m, m)``;
- **seeds for 80% power**: the smallest n with ``(t(0.975, n - 1) + t(0.80, n - 1)) sd(d) / sqrt(n) <= |mean(d)|``,
  the observed mean and spread taken as the truth;
- **p (sign flip)**: the exact paired permutation test over the ``2^n`` sign patterns, a robustness column shown
  only from :data:`SIGN_FLIP_MIN_N` seeds on (its smallest value is ``2 / 2^n``: 0.0625 at 5 seeds, so below 7
  seeds it could never fall under 0.05); never the decision.

A **family** is a set of comparisons judged together, so that its verdicts hold jointly: each study's comparisons
of its variants with its reference in one metric are one family; the published claims of ``docs/findings.md`` are
another, the project's own questions there a third. Within a family (:func:`judge_family`):

- **Holm p**: Holm's step-down adjustment of the raw p-values (the family-wise error rate held at 5%);
- **BH q**: the Benjamini-Hochberg q-value (``scipy.stats.false_discovery_control``): the false discovery rate,
  shown beside Holm for the reader, never used for a verdict;
- the TOST p-values are Holm-adjusted over the family in the same way.

The **verdict** of a comparison, in this order:

- **preliminary**: fewer than :data:`MIN_SEEDS` paired seeds, whatever its p (three seeds underestimate the
  spread: no row at n >= 5 of the committed studies has a paired sd under 0.005, three at n = 3 do);
- **better** / **worse**: Holm p < :data:`ALPHA`, by the sign of ``mean(d)`` (for a metric where higher is better);
- **equivalent**: the Holm-adjusted TOST p < :data:`ALPHA`: the difference lies within ``+-min_effect``;
- **unresolved**: otherwise; not evidence of no effect, only that these seeds cannot tell.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07_AP50", "VOC_AP50")
TABLE_METRICS = ("AP", "AP50", "AP75")
ALPHA = 0.05  # every test of the verdict rule is at 5%
MIN_SEEDS = 5  # fewer paired seeds read "preliminary"
DEFAULT_MIN_EFFECT = 0.01  # a study's smallest difference of interest when it states none (AP units)
SIGN_FLIP_MIN_N = 7  # the sign-flip p-value's floor 2 / 2^n is below 0.05 from 6 seeds, 0.016 at 7
MAX_POWER_SEEDS = 1000  # the power calculation reports "-" beyond this
EXACT_PERMUTATION_MAX_N = 16  # 2^16 sign patterns; above, a seeded Monte-Carlo sample of 2^16 patterns
VERDICTS = ("better", "worse", "equivalent", "unresolved", "preliminary")


def t_quantile(dof: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t with ``dof`` degrees of freedom (0.975: the two-sided 95% quantile)."""
    return float(scipy_stats.t.ppf(q, dof))


def minimum_detectable_effect(sd: float, n: int) -> float:
    """``t(0.975, n - 1) * sd / sqrt(n)``: the smallest paired difference a 95% t-interval tells from 0 (nan
    below 2 seeds)."""
    return t_quantile(n - 1) * sd / math.sqrt(n) if n >= 2 and not math.isnan(sd) else math.nan


def seeds_for_power(mean: float, sd: float) -> int | None:
    """The smallest n (>= 2) at which a paired t-test at 95% has 80% power for a true difference ``mean`` with
    spread ``sd``: ``(t(0.975, n - 1) + t(0.80, n - 1)) * sd / sqrt(n) <= |mean|``. None when no n up to
    :data:`MAX_POWER_SEEDS` does (or the inputs are nan); 2 when ``sd`` is 0 and ``mean`` is not."""
    if math.isnan(mean) or math.isnan(sd) or mean == 0:
        return None
    n = np.arange(2, MAX_POWER_SEEDS + 1)
    reach = (scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.80, n - 1)) * sd / np.sqrt(n)
    enough = np.nonzero(reach <= abs(mean))[0]
    return int(n[enough[0]]) if enough.size else None


def paired_t_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``mean(d) = 0``; nan below 2 values. Identical differences (sd
    0) give 0 when they are not 0 and 1 when they are (the t statistic is infinite or undefined)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return math.nan
    if np.ptp(d) == 0:
        return 0.0 if d[0] != 0 else 1.0
    return float(scipy_stats.ttest_1samp(d, 0.0).pvalue)


def tost_p_value(differences: Sequence[float], margin: float) -> float:
    """The two one-sided tests of equivalence within ``+-margin``: the larger p of the one-sided paired t-tests of
    ``mean(d) <= -margin`` and ``mean(d) >= margin``; nan below 2 values. Identical differences give 0 inside the
    margin and 1 outside it."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2 or not margin > 0:
        return math.nan
    if np.ptp(d) == 0:
        return 0.0 if abs(d[0]) < margin else 1.0
    above_lower = scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    below_upper = scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(above_lower, below_upper))


def sign_flip_p_value(differences: Sequence[float], *, samples: int = 2 ** 16, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test: the share of sign patterns ``s`` with
    ``|mean(s * d)| >= |mean(d)|``; exact (every pattern) up to :data:`EXACT_PERMUTATION_MAX_N` differences, else
    ``samples`` random patterns from a seeded generator (the observed pattern counted once). nan when empty."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))  # equal means must count as equal despite rounding
    if d.size <= EXACT_PERMUTATION_MAX_N:
        patterns = ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
        return float(np.mean(np.abs(patterns @ d / d.size) >= observed - tolerance))
    patterns = np.random.default_rng(seed).choice((-1.0, 1.0), size=(samples, d.size))
    hits = int(np.sum(np.abs(patterns @ d / d.size) >= observed - tolerance))
    return (hits + 1) / (samples + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: with the finite p-values sorted ascending
    ``p_(1) <= ... <= p_(m)``, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. A nan p (a comparison with
    no test) stays nan and does not count in ``m``."""
    finite = [k for k, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, k in enumerate(sorted(finite, key=lambda k: p_values[k])):
        running = max(running, min(1.0, (len(finite) - rank) * p_values[k]))
        adjusted[k] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values in the input order (``scipy.stats.false_discovery_control``); nan p-values stay
    nan and do not count."""
    finite = [k for k, p in enumerate(p_values) if not math.isnan(p)]
    q = [math.nan] * len(p_values)
    if finite:
        adjusted = scipy_stats.false_discovery_control([p_values[k] for k in finite], method="bh")
        for k, value in zip(finite, adjusted):
            q[k] = float(value)
    return q


@dataclass(frozen=True)
class Difference:
    """A variant's difference from its reference in one metric, paired by seed (see the module docstring)."""

    mean: float
    se: float  # nan with fewer than two paired seeds
    n: int
    values: tuple[float, ...] = ()  # the paired differences, by seed

    @classmethod
    def of(cls, paired: Sequence[float]) -> "Difference":
        """The difference from its paired values (mean +- SE; nan where there are too few)."""
        paired = [float(value) for value in paired]
        se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) >= 2 else math.nan
        return cls(statistics.fmean(paired) if paired else math.nan, se, len(paired), tuple(paired))

    @property
    def sd(self) -> float:
        return self.se * math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def mde(self) -> float:
        return minimum_detectable_effect(self.sd, self.n)

    @property
    def p_value(self) -> float:
        return paired_t_p_value(self.values)

    def tost_p(self, margin: float) -> float:
        return tost_p_value(self.values, margin)

    @property
    def seeds_for_power(self) -> int | None:
        return seeds_for_power(self.mean, self.sd)

    @property
    def p_sign_flip(self) -> float:
        """The sign-flip p-value from :data:`SIGN_FLIP_MIN_N` seeds on (nan below: it could never decide)."""
        return sign_flip_p_value(self.values) if self.n >= SIGN_FLIP_MIN_N else math.nan


@dataclass(frozen=True)
class Judged:
    """A comparison judged within its family: the difference, its raw, Holm and BH p-values, the Holm-adjusted
    TOST p-value and the verdict word."""

    difference: Difference
    p: float
    p_holm: float
    q_bh: float
    p_tost_holm: float
    min_effect: float
    verdict: str

    @property
    def decided(self) -> bool:
        """better, worse or equivalent: nothing more for ``seeds: auto`` to add."""
        return self.verdict in ("better", "worse", "equivalent")


def verdict(difference: Difference, p_holm: float, p_tost_holm: float, *, alpha: float = ALPHA) -> str:
    """The verdict word of one comparison from its family-adjusted p-values (see the module docstring)."""
    if difference.n < MIN_SEEDS:
        return "preliminary"
    if p_holm < alpha:
        return "better" if difference.mean > 0 else "worse"
    if p_tost_holm < alpha:
        return "equivalent"
    return "unresolved"


def judge_family(differences: Sequence[Difference], min_effect: float = DEFAULT_MIN_EFFECT) -> list[Judged]:
    """Judge a family of comparisons together: raw, Holm and BH p-values, the Holm-adjusted TOST p-value at
    ``+-min_effect``, and the verdict of each, in the input order."""
    raw = [d.p_value for d in differences]
    tost = [d.tost_p(min_effect) for d in differences]
    p_holm, q_bh, tost_holm = holm(raw), benjamini_hochberg(raw), holm(tost)
    return [Judged(d, p, ph, q, th, min_effect, verdict(d, ph, th))
            for d, p, ph, q, th in zip(differences, raw, p_holm, q_bh, tost_holm)]


def format_p(p: float) -> str:
    """A p-value for a table: 3 significant digits, ``<0.0001`` below that, ``-`` for nan."""
    if math.isnan(p):
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.3g}"
