"""scripts/precision_check.py: the bfloat16 verdict on hand-made results, one passing and one failing."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "precision_check.py"
spec = importlib.util.spec_from_file_location("precision_check", SCRIPT)
precision_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(precision_check)

BASE = [0.30, 0.32, 0.28, 0.31, 0.29]
NOISE = [0.004, -0.006, 0.002, -0.003, 0.005]  # mean 0.0004, sd sqrt(89.2e-6 / 4) = 0.004722


def rows(bf16_shift: float, giou_shift_bf16: float) -> dict:
    """darknet in float32 = BASE; bfloat16 adds NOISE + bf16_shift; GIoU is 0.03 below darknet in float32 (with
    seed noise) and 0.03 - giou_shift_bf16 below in bfloat16; label smoothing +0.01 in both."""
    table = {}
    giou_noise = [0.003, -0.002, 0.001, -0.004, 0.002]
    for seed, base in enumerate(BASE):
        bf = base + NOISE[seed] + bf16_shift
        values = {("darknet", "float32"): base, ("darknet", "bfloat16"): bf,
                  ("giou", "float32"): base - 0.03 + giou_noise[seed],
                  ("giou", "bfloat16"): bf - 0.03 + giou_shift_bf16 - giou_noise[seed],
                  ("label_smoothing", "float32"): base + 0.01 + giou_noise[seed] / 2,
                  ("label_smoothing", "bfloat16"): bf + 0.01 - giou_noise[seed] / 2}
        for (loss, precision), ap in values.items():
            table[f"loss={loss},precision={precision}", seed] = {m: str(ap) for m in ("AP", "AP50", "AP75")}
    return table


def aa_rows() -> dict:
    table = {}
    for seed, base in enumerate(BASE):
        table["stream=augment_seed_0", seed] = {m: str(base) for m in ("AP", "AP50", "AP75")}
        for k, scale in ((1, 1.0), (2, -2.0), (3, 1.5)):
            table[f"stream=augment_seed_{k}", seed] = {m: str(base + scale * NOISE[(seed + k) % 5])
                                                       for m in ("AP", "AP50", "AP75")}
    return table


def test_the_noise_floor_is_the_median_aa_mde() -> None:
    floor, source = precision_check.aa_noise_floor(aa_rows())
    assert "aa_family's 3 A/A comparisons" in source
    assert floor == pytest.approx(2.7764451 * 1.5 * 0.004722 / 5 ** 0.5, rel=1e-3)  # the middle of 1x, 2x, 1.5x


def test_a_precision_that_changes_nothing_passes_and_one_that_shifts_the_answers_fails() -> None:
    floor, _ = precision_check.aa_noise_floor(aa_rows())
    assert all(passed for *_, passed in precision_check.checks(rows(0.0, 0.0), floor))
    shifted = precision_check.checks(rows(0.03, 0.0), floor)  # bfloat16 lifts the baseline by 0.03
    assert [passed for *_, passed in shifted] == [False, True, True]
    interacting = precision_check.checks(rows(0.0, 0.02), floor)  # GIoU's effect shrinks by 0.02 in bfloat16
    assert [passed for *_, passed in interacting] == [True, False, True]
    assert "new studies may train in it" in precision_check.verdict_markdown(rows(0.0, 0.0), aa_rows())
    assert "studies stay in float32" in precision_check.verdict_markdown(rows(0.0, 0.02), aa_rows())


def test_the_floor_falls_back_to_paper_vs_darknets_aa_until_aa_family_has_five_seeds() -> None:
    few = {key: row for key, row in aa_rows().items() if key[1] < 2}  # two seeds only
    variant, reference = precision_check.PAPER_AA
    paper = {}
    for seed, base in enumerate(BASE):
        paper[reference, seed] = {"AP": str(base)}
        paper[variant, seed] = {"AP": str(base + NOISE[seed])}
    floor, source = precision_check.aa_noise_floor(few, "AP", paper)
    assert "paper_vs_darknet" in source and floor == pytest.approx(2.7764451 * 0.004722 / 5 ** 0.5, rel=1e-3)
    floor, source = precision_check.aa_noise_floor(few, "AP", None)
    assert math.isnan(floor) and source == "no A/A comparison at 5 seeds"
