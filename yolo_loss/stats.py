"""The statistics of a study's paired comparisons (``yolo_loss.study_report``'s module docstring says what each
means): Student-t quantiles, the minimum detectable effect, the seeds for 80% power, the sign-flip permutation
p-value and :class:`Difference`, one variant's difference from its reference paired by seed. Kept apart from the
report so that the runner (``seeds: auto``) and the findings use the same rule without importing the report."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07_AP50", "VOC_AP50")
TABLE_METRICS = ("AP", "AP50", "AP75")
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# One-sided 80% quantiles of Student's t for 1..30 degrees of freedom (for the power calculation); 0.842 beyond.
T_80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868, 0.866,
        0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)
MAX_POWER_SEEDS = 1000  # the power calculation reports ">1000" beyond this
EXACT_PERMUTATION_MAX_N = 16  # 2^16 sign patterns; above, a seeded Monte-Carlo sample of 2^16 patterns


def t_quantile(dof: int) -> float:
    """Two-sided 95% (one-sided 97.5%) quantile of Student's t with ``dof`` degrees of freedom."""
    return T_975[dof - 1] if dof <= len(T_975) else 1.96


def t_quantile_80(dof: int) -> float:
    """One-sided 80% quantile of Student's t with ``dof`` degrees of freedom."""
    return T_80[dof - 1] if dof <= len(T_80) else 0.842


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
    for n in range(2, MAX_POWER_SEEDS + 1):
        if (t_quantile(n - 1) + t_quantile_80(n - 1)) * sd / math.sqrt(n) <= abs(mean):
            return n
    return None


def sign_flip_p_value(differences: list[float], *, samples: int = 2 ** 16, seed: int = 0) -> float:
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


@dataclass
class Difference:
    """A variant's difference from the baseline in one metric, paired by seed (see the module docstring)."""

    mean: float
    se: float  # nan with fewer than two paired seeds
    n: int
    values: tuple[float, ...] = ()  # the paired differences, by seed

    @classmethod
    def of(cls, paired: list[float]) -> "Difference":
        """The difference from its paired values (mean +- SE; nan where there are too few)."""
        se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) >= 2 else math.nan
        return cls(statistics.fmean(paired) if paired else math.nan, se, len(paired), tuple(paired))

    @property
    def sd(self) -> float:
        return self.se * math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def within_noise(self) -> bool | None:
        if self.n < 2 or math.isnan(self.se):
            return None
        return abs(self.mean) < t_quantile(self.n - 1) * self.se

    @property
    def mde(self) -> float:
        return minimum_detectable_effect(self.sd, self.n)

    @property
    def seeds_for_power(self) -> int | None:
        return seeds_for_power(self.mean, self.sd)

    @property
    def p_permutation(self) -> float:
        return sign_flip_p_value(list(self.values))
