"""Findings: paired differences and verdicts of claims against a study's results.csv, on numbers worked by hand."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from yolo_loss.findings import Claim, ClaimsError, evaluate_claims, findings_markdown, load_claims

# AP per seed. better - base = (0.10, 0.12, 0.08): mean 0.10, sd 0.02, SE 0.01155, MDE 4.303 * 0.01155 = 0.0497.
# same - base = (0.01, -0.01, 0.01): mean 0.0033, inside its interval.
RESULTS = {"v=base": (0.50, 0.52, 0.54), "v=better": (0.60, 0.64, 0.62), "v=same": (0.51, 0.51, 0.55)}


def write_study(folder: Path) -> None:
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["variant", "seed", "status", "AP"])
        writer.writeheader()
        for variant, values in RESULTS.items():
            for seed, value in enumerate(values):
                writer.writerow({"variant": variant, "seed": seed, "status": "finished", "AP": value})
        writer.writerow({"variant": "v=base", "seed": 3, "status": "failed", "AP": ""})


def claim(variant: str, direction: str, study: str = "toy") -> Claim:
    return Claim(source="a paper", claim="it helps", published="+1 AP", study=study, variant=variant,
                 reference="v=base", metric="AP", direction=direction)


@pytest.mark.parametrize("variant, direction, verdict", [
    ("v=better", "better", "reproduced (direction), resolved"),
    ("v=better", "worse", "contradicted, resolved"),
    ("v=better", "same", "contradicted, resolved"),
    ("v=same", "better", "unresolved at MDE 0.029"),
    ("v=same", "same", "consistent: no difference resolved at MDE 0.029"),
])
def test_verdicts_on_known_numbers(tmp_path: Path, variant: str, direction: str, verdict: str) -> None:
    write_study(tmp_path / "toy")
    (finding,) = evaluate_claims([claim(variant, direction)], tmp_path)
    assert finding.verdict == verdict
    if variant == "v=better":
        assert finding.difference.mean == pytest.approx(0.10) and finding.difference.n == 3
        assert finding.difference.mde == pytest.approx(4.303 * 0.02 / math.sqrt(3))


def test_a_missing_study_is_not_run_and_the_table_says_so(tmp_path: Path) -> None:
    findings = evaluate_claims([claim("v=better", "better", study="absent")], tmp_path)
    assert findings[0].verdict == "not run"
    text = findings_markdown(findings, {"title": "T", "intro": "I", "limits": "L"})
    row = "| a paper | it helps (+1 AP) | absent: `v=better` vs `v=base` | AP | - | - | not run |"
    assert text.startswith("# T\n\nI\n") and row in text and text.rstrip().endswith("L")


def test_claims_file_errors_name_the_claim(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - {source: s, claim: c, published: p, study: x, variant: a, reference: b, "
                    "metric: AP, direction: up}\n")
    with pytest.raises(ClaimsError, match="claims.0.direction: 'up' is not one of better, worse, same"):
        load_claims(path)
    path.write_text("claims:\n  - {source: s}\n")
    with pytest.raises(ClaimsError, match="claims.0: expected the keys"):
        load_claims(path)


def test_the_shipped_claims_file_loads() -> None:
    claims, meta = load_claims(Path(__file__).resolve().parents[1] / "docs" / "claims.yaml")
    assert len(claims) >= 19 and meta["title"]
    assert {claim.study for claim in claims} >= {"paper_vs_darknet", "box_losses", "cls_losses", "later_recipes"}
    assert "source:" not in meta["limits"] and "source:" not in meta["intro"]  # no claim swallowed by a text block
