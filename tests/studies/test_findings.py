"""Findings: claims and questions judged against studies' results.csv, on numbers worked by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from yolo_loss.studies.findings import (HEADLINE_END, HEADLINE_START, Claim, ClaimsError, Comparison, Question,
                                        evaluate_claims, evaluate_replications, findings_markdown, headline_markdown,
                                        load_claims, replace_headline)

REPO = Path(__file__).resolve().parents[2]

# AP per seed (5 seeds). better - base = 0.10, 0.12, 0.08, 0.11, 0.09 (mean 0.10); same - base = 0.001, -0.002,
# 0.003, 0.0, 0.002 (mean 0.0008, equivalent within +-0.01); noisy - base = 0.02, -0.02, 0.01, -0.015, 0.004.
BASE = (0.50, 0.52, 0.54, 0.50, 0.52)
RESULTS = {"v=base": BASE,
           "v=better": tuple(b + d for b, d in zip(BASE, (0.10, 0.12, 0.08, 0.11, 0.09))),
           "v=same": tuple(b + d for b, d in zip(BASE, (0.001, -0.002, 0.003, 0.0, 0.002))),
           "v=noisy": tuple(b + d for b, d in zip(BASE, (0.02, -0.02, 0.01, -0.015, 0.004))),
           "v=three": BASE[:3]}


def write_study(folder: Path, results: dict = RESULTS, precision: str = "float32") -> None:
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["variant", "seed", "status", "AP", "precision"])
        writer.writeheader()
        for variant, values in results.items():
            for seed, value in enumerate(values):
                writer.writerow({"variant": variant, "seed": seed, "status": "finished", "AP": value,
                                 "precision": precision})
        writer.writerow({"variant": "v=base", "seed": 9, "status": "failed", "AP": "", "precision": precision})


def claim(variant: str, direction: str, study: str = "toy", effect: float | None = 0.05, **where) -> Claim:
    return Claim(source="a paper", where="Table 1", claim="it helps", published="+5 AP", published_effect=effect,
                 direction=direction, comparison=Comparison(study, variant, "v=base", "AP", **where))


@pytest.mark.parametrize("variant, direction, verdict", [
    ("v=better", "better", "reproduced"),
    ("v=better", "worse", "contradicted"),
    ("v=better", "same", "contradicted"),
    ("v=same", "better", "not reproduced: equivalent within +-0.01"),
    ("v=same", "same", "reproduced"),
    ("v=noisy", "better", "unresolved"),
    ("v=three", "better", "preliminary"),
])
def test_verdicts_on_known_numbers(tmp_path: Path, variant: str, direction: str, verdict: str) -> None:
    write_study(tmp_path / "toy")
    (finding,), _ = evaluate_claims([claim(variant, direction)], [], tmp_path)
    assert finding.verdict == verdict
    if variant == "v=better":
        assert finding.judged.difference.mean == pytest.approx(0.10) and finding.judged.difference.n == 5
        assert finding.ratio == pytest.approx(2.0)  # 0.10 measured against 0.05 published


def test_claims_are_one_family_and_questions_another(tmp_path: Path) -> None:
    """Holm multiplies the smallest p by the family's size: the same comparison has a larger Holm p among three
    claims than alone; the questions' family does not count the claims."""
    write_study(tmp_path / "toy")
    alone, _ = evaluate_claims([claim("v=better", "better")], [], tmp_path)
    three, (question,) = evaluate_claims([claim("v=better", "better"), claim("v=noisy", "better"),
                                          claim("v=same", "same")],
                                         [Question("Does it?", Comparison("toy", "v=better", "v=base", "AP"))],
                                         tmp_path)
    assert three[0].judged.p_holm == pytest.approx(3 * alone[0].judged.p)
    assert question.judged.p_holm == pytest.approx(alone[0].judged.p) and question.verdict == "better"


def test_a_reference_in_another_study_is_paired_by_seed(tmp_path: Path) -> None:
    write_study(tmp_path / "toy", {"v=better": RESULTS["v=better"]})
    write_study(tmp_path / "other", {"v=base": RESULTS["v=base"]})
    (finding,), _ = evaluate_claims([claim("v=better", "better", reference_study="other")], [], tmp_path)
    assert finding.judged.difference.mean == pytest.approx(0.10) and finding.verdict == "reproduced"
    text = findings_markdown([finding], [], {"title": "T"})
    assert "toy: `v=better` vs other: `v=base`" in text


def test_runs_of_different_precisions_are_not_paired(tmp_path: Path) -> None:
    write_study(tmp_path / "toy", {"v=better": RESULTS["v=better"]}, precision="bfloat16")
    write_study(tmp_path / "other", {"v=base": RESULTS["v=base"]})
    with pytest.raises(ClaimsError, match="seed 0: bfloat16 against float32"):
        evaluate_claims([claim("v=better", "better", reference_study="other")], [], tmp_path)


def test_a_missing_study_is_not_run_and_the_table_says_so(tmp_path: Path) -> None:
    findings, _ = evaluate_claims([claim("v=better", "better", study="absent")], [], tmp_path)
    assert findings[0].verdict == "not run"
    text = findings_markdown(findings, [], {"title": "T", "intro": "I", "limits": "L"})
    row = ("| a paper (Table 1) | it helps | +5 AP (+0.05) | absent: `v=better` vs `v=base` | AP | - | - | - | - | - "
           "| - | not run |")
    assert text.startswith("# T\n\nI\n") and row in text and text.rstrip().endswith("L")


GOOD = {"source": "s", "where": "Table 2", "claim": "c", "published": "p", "published_effect": 0.01, "study": "x",
        "variant": "a", "reference": "b", "metric": "AP", "direction": "better"}


@pytest.mark.parametrize("change, message", [
    ({"direction": "up"}, "claims.0.direction: 'up' is not one of better, worse, same"),
    ({"reference": None}, "missing \\['reference'\\]"),
    ({"metric": None}, "missing \\['metric'\\]"),
    ({"source": None}, "missing \\['source'\\]"),
    ({"where": None}, "missing \\['where'\\]"),
    ({"reference": ""}, "claims.0.reference: empty"),
    ({"source": " "}, "claims.0.source: empty: a claim names its source"),
    ({"metric": "mAP"}, "claims.0.metric: 'mAP' is not one of AP, AP50"),
    ({"published_effect": "2 points"}, "claims.0.published_effect: expected a number"),
    ({"colour": "red"}, "unknown \\['colour'\\]"),
])
def test_a_claim_without_its_reference_metric_or_source_is_refused(tmp_path: Path, change: dict,
                                                                   message: str) -> None:
    item = {key: value for key, value in (GOOD | change).items() if value is not None or key not in change}
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [item]}))
    with pytest.raises(ClaimsError, match=message):
        load_claims(path)


def test_a_question_is_worded_as_a_question(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    question = {"question": "the paper's loss is darknet's", "study": "x", "variant": "a", "reference": "b",
                "metric": "AP"}
    path.write_text(yaml.safe_dump({"claims": [GOOD], "questions": [question]}))
    with pytest.raises(ClaimsError, match="questions.0.question: word it as a question"):
        load_claims(path)


def test_the_shipped_claims_file_loads() -> None:
    claims, questions, meta = load_claims(Path(__file__).resolve().parents[2] / "docs" / "claims.yaml")
    assert len(claims) >= 18 and len(questions) >= 6 and meta["title"] and meta["min_effect"] == 0.01
    assert {c.comparison.study for c in claims} >= {"paper_vs_darknet", "box_losses", "cls_losses", "later_recipes"}
    assert "source:" not in meta["limits"] and "source:" not in meta["intro"]  # no claim swallowed by a text block
    varifocal = next(c for c in claims if "VarifocalNet" in c.source)
    assert (varifocal.comparison.reference_study, varifocal.comparison.reference) == ("cls_losses",
                                                                                      "cls=bce,obj=focal")
    smoothing = {c.comparison.metric for c in claims if "Bag of Freebies" in c.source}
    assert smoothing == {"AP50", "AP"}
    assert sum("YOLOv3" in c.source and "focal" in c.where for c in claims) == 1  # one sentence, one row
    assert not any("is darknet's" in c.claim or "trains as well as" in c.claim for c in claims)  # questions now


def two_data_sets(tmp_path: Path) -> tuple[Path, dict]:
    """Studies "toy" (RESULTS) and "real" (v=real equal to v=base within +-0.01), the claims file's path, and a
    claim on toy's v=better as a claims-file item."""
    write_study(tmp_path / "toy")
    write_study(tmp_path / "real", {"v=base": RESULTS["v=base"], "v=real": RESULTS["v=same"]})
    item = {"source": "a paper", "where": "Table 1", "claim": "it helps", "published": "+5 AP",
            "published_effect": 0.05, "study": "toy", "variant": "v=better", "reference": "v=base", "metric": "AP",
            "direction": "better"}
    return tmp_path / "claims.yaml", item


def test_replications_on_a_second_data_set_are_their_own_family_beside_the_first(tmp_path: Path) -> None:
    """A claim replicated on another data set: judged there (its own family, the claim's direction), and shown in
    that data set's section beside the verdict on the first; a claim without a replication is left out there."""
    path, item = two_data_sets(tmp_path)
    path.write_text(yaml.safe_dump({
        "datasets": {"real": "a real data set"},
        "claims": [{**item, "replications": {"real": {"study": "real", "variant": "v=real", "reference": "v=base"}}},
                   {**item, "variant": "v=noisy"}]}))
    claims, questions, meta = load_claims(path)
    assert claims[0].replications == (("real", Comparison("real", "v=real", "v=base", "AP")),)
    judged, _ = evaluate_claims(claims, questions, tmp_path)
    replications = evaluate_replications(claims, questions, tmp_path)
    assert list(replications) == ["real"]
    there, = replications["real"][0]  # the replicated claim only
    assert there.item is claims[0] and there.comparison.study == "real"
    assert there.verdict == "not reproduced: equivalent within +-0.01" and judged[0].verdict == "reproduced"
    text = findings_markdown(judged, [], meta, replications)
    section = text.split("## On a real data set")[1]
    assert "| a paper: it helps | real: `v=real` vs `v=base` | AP |" in section
    assert section.split("\n")[6].endswith("| not reproduced: equivalent within +-0.01 | reproduced |")
    assert "v=noisy" not in section


@pytest.mark.parametrize("replications, named", [
    ({"real": {"study": "real", "variant": "v=real"}}, r"claims.0.replications.real: .*missing \['reference'\]"),
    ({"real": {"study": "real", "variant": "v", "reference": "v=base", "metric": "AP50"}}, r"unknown \['metric'\]"),
    (["real"], r"claims.0.replications: expected"),
])
def test_a_bad_replication_is_named(tmp_path: Path, replications, named: str) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [{
        "source": "a paper", "where": "Table 1", "claim": "it helps", "published": "+5 AP", "published_effect": None,
        "study": "toy", "variant": "v=better", "reference": "v=base", "metric": "AP", "direction": "better",
        "replications": replications}]}))
    with pytest.raises(ClaimsError, match=named):
        load_claims(path)


def test_the_headline_table_lists_the_labelled_items_with_their_replications(tmp_path: Path) -> None:
    """Only items with a headline label, in order, each with its study, metric, d +- SE (n), its verdict in its
    family and, per replication data set, the same there ("-" where it has none); the README block is replaced
    between its markers and nowhere else."""
    path, item = two_data_sets(tmp_path)
    path.write_text(yaml.safe_dump({"claims": [
        {**item, "headline": "better, replicated",
         "replications": {"real": {"study": "real", "variant": "v=real", "reference": "v=base"}}},
        {**item, "variant": "v=noisy"},
        {**item, "variant": "v=three", "headline": "three seeds"}]}))
    claims, questions, _ = load_claims(path)
    judged, _ = evaluate_claims(claims, questions, tmp_path)
    table = headline_markdown(judged, evaluate_replications(claims, questions, tmp_path))
    lines = table.split("\n")
    assert lines[0] == HEADLINE_START and lines[-1] == HEADLINE_END
    assert lines[1] == "| comparison | study | metric | d +- SE (n) | verdict | on real: d +- SE (n), verdict |"
    assert lines[3] == ("| better, replicated | `toy` | AP | +0.1000 +- 0.0071 (5) | reproduced | "
                        "+0.0008 +- 0.0009 (5), not reproduced: equivalent within +-0.01 |")
    assert lines[4].startswith("| three seeds | `toy` | AP | ") and lines[4].endswith("(3) | preliminary | - |")
    assert len(lines) == 6  # the unlabelled v=noisy is not a row
    readme = f"intro\n{HEADLINE_START}\nold rows\n{HEADLINE_END}\nrest\n"
    assert replace_headline(readme, table) == f"intro\n{table}\nrest\n"
    with pytest.raises(ClaimsError, match="no headline block"):
        replace_headline("a README without the markers", table)


def test_the_readme_headline_table_is_what_the_committed_studies_give() -> None:
    """The README's table is written by scripts/findings.py: it must equal what the committed claims file and
    results.csv files give now (run the script after a study changes)."""
    claims, questions, meta = load_claims(REPO / "docs" / "claims.yaml")
    judged_claims, judged_questions = evaluate_claims(claims, questions, REPO / "docs" / "ablations",
                                                      meta.get("min_effect", 0.01))
    replications = evaluate_replications(claims, questions, REPO / "docs" / "ablations", meta.get("min_effect", 0.01))
    table = headline_markdown(judged_claims + judged_questions, replications)
    assert table in (REPO / "README.md").read_text()
