"""The statistics and the verdict rule (yolo_loss/studies/stats.py), on numbers worked by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from yolo_loss.studies.stats import (Difference, benjamini_hochberg, holm, judge_family, minimum_detectable_effect,
                             paired_t_p_value, seeds_for_power, sign_flip_p_value, t_quantile, tost_p_value, verdict)


def test_t_quantiles_are_scipys_to_full_precision() -> None:
    """The hand-kept 3-decimal table is gone: 2.7764 (not 2.776) at 4 degrees of freedom, 4.3027 at 2."""
    assert t_quantile(4) == pytest.approx(2.7764451052, abs=1e-9)
    assert t_quantile(2) == pytest.approx(4.3026527297, abs=1e-9)
    for dof in (1, 3, 5, 9, 29, 30, 31, 100, 1000):
        assert t_quantile(dof) == scipy_stats.t.ppf(0.975, dof)
        assert t_quantile(dof, 0.80) == scipy_stats.t.ppf(0.80, dof)


def test_holm_and_benjamini_hochberg_on_a_family_of_four() -> None:
    """p = (0.01, 0.04, 0.03, 0.005). Holm, sorted 0.005, 0.01, 0.03, 0.04: 4 x 0.005 = 0.02, 3 x 0.01 = 0.03,
    2 x 0.03 = 0.06, 1 x 0.04 = 0.04 raised to the running maximum 0.06. BH, p x 4 / rank: 0.02, 0.02, 0.04,
    0.04, then the running minimum from the top changes nothing."""
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # a comparison without a test (nan) stays nan and does not count in m: the other three are a family of three
    assert holm([0.01, math.nan, 0.04, 0.03])[0] == pytest.approx(0.03) and math.isnan(holm([math.nan])[0])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_paired_t_test_and_tost_on_a_small_table() -> None:
    """d = (0.001, -0.002, 0.003, 0.0, 0.002): mean 0.0008, sd 0.0019235, SE 0.00086023. Equivalence within
    +-0.01: t = (0.0008 + 0.01) / SE = 12.555 against the lower margin, (0.0008 - 0.01) / SE = -10.695 against the
    upper; TOST p is the larger one-sided p, P(T_4 < -10.695) = 0.000217. d near the margin (mean 0.01) is not
    equivalent: p = 0.5."""
    d = [0.001, -0.002, 0.003, 0.0, 0.002]
    assert Difference.of(d).se == pytest.approx(0.00086023, abs=1e-8)
    assert tost_p_value(d, 0.01) == pytest.approx(scipy_stats.t.sf(10.6948, 4), rel=1e-3)
    assert tost_p_value(d, 0.01) == pytest.approx(0.0002165, rel=1e-3)
    assert tost_p_value([0.008, 0.012, 0.010, 0.009, 0.011], 0.01) == pytest.approx(0.5)
    t = 0.0008 / 0.00086023
    assert paired_t_p_value(d) == pytest.approx(2 * scipy_stats.t.sf(t, 4), rel=1e-4)  # t rounded above
    # identical differences: the t statistic is infinite or undefined
    assert paired_t_p_value([0.02] * 5) == 0.0 and paired_t_p_value([0.0] * 5) == 1.0
    assert tost_p_value([0.002] * 5, 0.01) == 0.0 and tost_p_value([0.02] * 5, 0.01) == 1.0
    assert math.isnan(paired_t_p_value([0.1])) and math.isnan(tost_p_value([0.1], 0.01))


def test_power_statistics_on_known_numbers() -> None:
    """d = (0.01, 0.03, 0.02): mean 0.02, sd 0.01, n 3; MDE = 4.3027 x 0.01 / sqrt(3) = 0.024841. Seeds for 80%
    power at mean 0.02, sd 0.01: n = 4 gives (3.1824 + 0.9785) x 0.01 / 2 = 0.0208 > 0.02, n = 5 gives
    (2.7764 + 0.9410) x 0.01 / sqrt(5) = 0.01662 <= 0.02: 5."""
    assert minimum_detectable_effect(0.01, 3) == pytest.approx(4.3026527 * 0.01 / math.sqrt(3))
    assert math.isnan(minimum_detectable_effect(0.01, 1))
    assert seeds_for_power(0.02, 0.01) == 5 and seeds_for_power(-0.02, 0.01) == 5
    assert seeds_for_power(0.0, 0.01) is None and seeds_for_power(1e-6, 0.05) is None
    assert seeds_for_power(0.5, 0.0) == 2
    d = Difference.of([0.01, 0.03, 0.02])
    assert d.sd == pytest.approx(0.01) and d.mde == pytest.approx(0.024841, abs=1e-6) and d.seeds_for_power == 5


def test_sign_flip_is_exact_and_shown_only_from_seven_seeds() -> None:
    """Of the 8 sign patterns of (1, 2, 3) only +++ and --- reach |mean| 2: p = 0.25; (1, -1, 1, -1) has mean 0,
    every pattern reaches it: p = 1; five equal differences give its floor 2 / 2^5 = 0.0625, which can never be
    below 0.05, so a Difference shows it only from 7 seeds (2 / 2^7 = 0.016)."""
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert sign_flip_p_value([1.0, -1.0, 1.0, -1.0]) == 1.0
    assert sign_flip_p_value([0.1] * 5) == pytest.approx(2 / 32)
    assert 0 < sign_flip_p_value([0.1] * 20) < 1e-3  # Monte-Carlo above 16 differences, never 0
    assert math.isnan(Difference.of([0.1] * 6).p_sign_flip)
    assert Difference.of([0.1] * 7).p_sign_flip == pytest.approx(2 / 128)


def test_the_verdict_rule() -> None:
    """A family of three at 5 seeds: a large effect reads better (Holm p tiny), a clear null inside +-0.01 reads
    equivalent, a noisy one unresolved; the same large effect at 4 seeds reads preliminary whatever its p; Holm,
    not the raw p, decides: raw p 0.034 with two other comparisons is Holm p 0.069, unresolved."""
    large, null, noisy = ([0.05, 0.055, 0.05, 0.052, 0.048], [0.001, -0.002, 0.003, 0.0, 0.002],
                          [0.02, -0.02, 0.01, -0.015, 0.004])
    judged = judge_family([Difference.of(large), Difference.of(null), Difference.of(noisy)], 0.01)
    assert [j.verdict for j in judged] == ["better", "equivalent", "unresolved"]
    assert [j.decided for j in judged] == [True, True, False]
    assert judge_family([Difference.of([-x for x in large])])[0].verdict == "worse"
    assert judge_family([Difference.of(large[:4])])[0].verdict == "preliminary"
    borderline = [0.02, 0.01, 0.03, 0.0, 0.025]
    alone = judge_family([Difference.of(borderline)])[0]
    in_family = judge_family([Difference.of(large), Difference.of(noisy), Difference.of(borderline)])[2]
    assert alone.p == pytest.approx(0.0343, abs=1e-4) and alone.verdict == "better"
    assert in_family.p_holm == pytest.approx(2 * alone.p) and in_family.verdict == "unresolved"
    assert in_family.q_bh == pytest.approx(alone.p * 3 / 2)  # BH: p x m / rank, shown, never the verdict
    assert verdict(Difference.of(large), p_holm=0.2, p_tost_holm=0.01) == "equivalent"
