"""A study's ``tune:`` key (yolo_loss/studies/study.py): parsing and its errors, the search folders, the choice (best
mean over the tuning seeds, a tie to the first listed, a warning on the edge of the grid), evaluation runs that carry
the chosen overrides and never the selection ones, resuming, the report's section and ``--dry-run`` / ``--status``.

train.py is stood in for by a small program whose AP is a known function of the overrides it was given::

    AP = 0.5 - 0.001 * (loss.weights.box - target)^2 + 0.0001 * (train.seed % 10),
    target = 10 for train.epochs=2 (variant v=b), else 2

so v=a (candidates w1, w2, w3 = box weights 1, 2, 3) peaks inside its grid, at w2 (0.499, 0.5, 0.499 plus the
seed term, the same for every candidate); v=b rises to the last, w3 (0.419 < 0.436 < 0.451: on the edge); v=c's
candidates set only the class weight, which the AP ignores: a tie, chosen as the first listed (x, also on the
edge); v=d has no candidates and is evaluated at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.image
import pytest
import yaml

from yolo_loss.config.load import load_config
from yolo_loss.studies.report import write_report
from yolo_loss.studies.runner import run_study
from yolo_loss.studies.study import RUN_INFO, STUDY_INFO, StudyError, load_study

if TYPE_CHECKING:
    from conftest import RunScript

REPO = Path(__file__).resolve().parents[2]
SHAPES_NANO = REPO / "configs" / "shapes_nano.yaml"

FAKE_TRAIN = '''#!{python}
"""Stands in for train.py: records its start and its --set overrides, writes metrics.json with a known AP."""
import json, os, sys
args = sys.argv[2:]  # argv[1] is train.py's path
folder = args[args.index("--run-dir") + 1]
sets = dict(item.split("=", 1) for item in args[args.index("--set") + 1:])
with open(os.environ["FAKE_STARTS"], "a") as starts:
    starts.write(folder + "\\n")
json.dump(sets, open(os.path.join(folder, "args.json"), "w"))
target = 10.0 if sets.get("train.epochs") == "2" else 2.0
ap = 0.5 - 0.001 * (float(sets.get("loss.weights.box", "1.0")) - target) ** 2 + 0.0001 * (int(sets["train.seed"]) % 10)
json.dump({{"metrics": {{"AP": ap, "AP50": ap, "AP75": ap}}, "steps": 6, "final_terms": {{}}}},
          open(os.path.join(folder, "metrics.json"), "w"))
'''

AXES = {"v": {"a": {}, "b": {"train.epochs": 2}, "c": {"train.epochs": 3}, "d": {"train.epochs": 4}}}
BOX = {"w1": {"loss.weights.box": 1.0}, "w2": {"loss.weights.box": 2.0}, "w3": {"loss.weights.box": 3.0}}
TUNE = {"seeds": [100, 102], "metric": "AP", "select": {"data.val_sets": ["selection"]},
        "grid": {"*": BOX, "v=c": {"x": {"loss.weights.cls": 1.0}, "y": {"loss.weights.cls": 2.0}}, "v=d": {}}}


def write_study(folder: Path, **change) -> Path:
    data = {"base": str(SHAPES_NANO), "out": str(folder / "study"), "combine": "one_at_a_time",
            "baseline": {"v": "a"}, "seeds": [0, 1], "overrides": {"data.val_sets": ["reporting"]}, "axes": AXES,
            "tune": TUNE, **change}
    data = {key: value for key, value in data.items() if value is not None}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TRAIN.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_STARTS", str(tmp_path / "starts.txt"))
    return path


def starts(tmp_path: Path) -> list[str]:
    path = tmp_path / "starts.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_search_runs_folders_and_overrides(tmp_path: Path) -> None:
    """The search: tuning seed by tuning seed, each tuned variant's candidates, in <variant>/tune=<c>/seed=<s>,
    with the study's, the variant's, select's and the candidate's overrides; only v=d (no candidates) can be
    evaluated before any search has finished."""
    study = load_study(write_study(tmp_path))
    search = study.search_runs()
    assert [run.name for run in search[:8]] == [
        "v=a/tune=w1/seed=100", "v=a/tune=w2/seed=100", "v=a/tune=w3/seed=100", "v=b/tune=w1/seed=100",
        "v=b/tune=w2/seed=100", "v=b/tune=w3/seed=100", "v=c/tune=x/seed=100", "v=c/tune=y/seed=100"]
    assert len(search) == 16 and {run.seed for run in search[8:]} == {102}
    assert search[4].folder == study.out / "v=b" / "tune=w2" / "seed=100"
    assert search[4].overrides == ("data.val_sets=[reporting]", "train.epochs=2", "data.val_sets=[selection]",
                                   "loss.weights.box=2.0", "train.seed=100")
    assert [run.name for run in study.runs()] == ["v=d/seed=0", "v=d/seed=1"]
    assert study.waiting() == ["v=a", "v=b", "v=c"]
    assert [run.name for run in study.search_runs(["v=c"])] == [
        "v=c/tune=x/seed=100", "v=c/tune=y/seed=100", "v=c/tune=x/seed=102", "v=c/tune=y/seed=102"]


@pytest.mark.parametrize("change, message", [
    ({"tune": {**TUNE, "grid": {"*": {"w1": {"loss.weights.boxx": 1.0}}}}},
     "variant v=a, candidate w1: tune.grid.*.w1: loss.weights.boxx: unknown key"),
    ({"tune": {**TUNE, "seeds": [1, 100]}}, "tune.seeds: seed(s) 1 are evaluation seeds too"),
    ({"tune": {**TUNE, "grid": {"v=e": BOX}}}, "tune.grid.v=e: not a variant of this study ('*' or one of v=a, "),
    ({"tune": {**TUNE, "seed": [100]}}, "tune: expected {seeds: "),
    ({"tune": {**TUNE, "metric": "mAP"}}, "tune.metric: 'mAP' is not one of AP, AP50"),
    ({"tune": {**TUNE, "select": {}}}, "tune.select: expected the dotted overrides"),
    ({"tune": {**TUNE, "select": {"data.val_sets": ["reporting"]}}}, "tune.select: changes nothing in v=a's config"),
    ({"tune": {**TUNE, "grid": {"*": {"w1": {"data.val_sets": ["reporting"]}}}}},
     "tune.grid.*.w1: sets data.val_sets, a tune.select key"),
    ({"tune": {**TUNE, "grid": {"*": {"w/1": {}}}}}, "tune.grid.*.w/1: candidate names may not contain"),
    ({"tune": {**TUNE, "grid": {"*": {}}}}, "tune.grid: no variant has a candidate"),
    ({"seeds": {"auto": [0, 1], "cap": 4}}, "tune: not with seeds: {auto: ...}"),
])
def test_invalid_tune_keys_are_named_with_the_file(change: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(StudyError) as err:
        load_study(write_study(tmp_path, **change))
    assert str(err.value).startswith(f"{tmp_path / 'study.yaml'}: ") and message in str(err.value), str(err.value)
    assert not (tmp_path / "study").exists()


def test_a_reused_variant_cannot_be_tuned(tmp_path: Path) -> None:
    """A reused variant's runs are another study's, trained at its own settings: tuning it is an error, unless its
    grid entry is empty."""
    other = tmp_path / "other"
    other.mkdir()
    write_study(other, tune=None)
    reuse = {"v=d": {"study": "other/study.yaml", "variant": "v=d"}}
    with pytest.raises(StudyError, match=r"tune\.grid\.\*: v=d is reused from study\.yaml \(reuse\.v=d\)"):
        load_study(write_study(tmp_path, reuse=reuse, tune={**TUNE, "grid": {"*": BOX}}))
    study = load_study(write_study(tmp_path, reuse=reuse))  # TUNE gives v=d no candidates
    assert "v=d" not in study.tune.grid


def test_search_chooses_then_evaluates_at_the_choice(tmp_path: Path, fake: Path) -> None:
    study = load_study(write_study(tmp_path))
    lines: list[str] = []
    outcomes = run_study(study, python=str(fake), echo=lines.append)
    assert len(outcomes) == 16 + 8 and all(outcome.status == "finished" for outcome in outcomes)
    started = starts(tmp_path)
    assert all("/tune=" in line for line in started[:16] if "v=d" not in line)
    # every search run of a variant finished before its first evaluation run started
    for variant in ("v=a", "v=b", "v=c"):
        last_search = max(k for k, line in enumerate(started) if f"/{variant}/tune=" in line)
        first_evaluation = min(k for k, line in enumerate(started) if line.endswith(f"/{variant}/seed=0"))
        assert last_search < first_evaluation

    choices = {choice.variant: choice for choice in study.choices()}
    assert {name: (c.chosen, c.on_edge) for name, c in choices.items()} == {
        "v=a": ("w2", False), "v=b": ("w3", True), "v=c": ("x", True)}
    assert choices["v=a"].values["w2"] == pytest.approx([0.5, 0.5002])
    assert choices["v=c"].mean("x") == choices["v=c"].mean("y")  # the tie: the first listed
    assert any(line == "tune: v=b: chose w3 (mean AP over seeds [100, 102]: w1 0.4191, w2 0.4361, w3 0.4511); "
               "warning: w3 is on the edge of the grid, the best may lie beyond it" for line in lines), lines

    # The evaluation runs: the variant's and the chosen candidate's overrides, never select's; the search runs
    # evaluated on the selection split, the evaluation runs on the reporting one.
    for run in study.search_runs():
        given = json.loads((run.folder / "args.json").read_text())
        assert given["data.val_sets"] == "[selection]"
        assert load_config(run.base, run.overrides).data.val_sets == ["selection"]
    for run in study.runs():
        given = json.loads((run.folder / "args.json").read_text())
        assert given["data.val_sets"] == "[reporting]"
        assert "data.val_sets=[selection]" not in run.overrides
        assert load_config(run.base, run.overrides).data.val_sets == ["reporting"]
        info = json.loads((run.folder / RUN_INFO).read_text())
        expected = {"v=a": ("w2", ["loss.weights.box=2.0"]), "v=b": ("w3", ["loss.weights.box=3.0"]),
                    "v=c": ("x", ["loss.weights.cls=1.0"])}.get(run.variant.name)
        if expected is None:  # v=d: evaluated at its own settings
            assert "tune" not in info and "loss.weights.box" not in given
        else:
            assert info["tune"] == {"role": "evaluation", "candidate": expected[0],
                                    "candidate_overrides": expected[1]}
            assert info["overrides"][-2:] == [*expected[1], f"train.seed={run.seed}"]
    assert json.loads((study.out / "v=a" / "tune=w1" / "seed=102" / RUN_INFO).read_text())["tune"]["role"] == "search"

    recorded = json.loads((study.out / STUDY_INFO).read_text())["tune"]
    assert recorded["select"] == ["data.val_sets=[selection]"]
    assert {name: (v["chosen"], v["on_edge"]) for name, v in recorded["variants"].items()} == {
        "v=a": ("w2", False), "v=b": ("w3", True), "v=c": ("x", True)}

    # Resuming: a second invocation (a fresh load, as a relaunch would) trains nothing.
    again = run_study(load_study(tmp_path / "study.yaml"), python=str(fake), echo=lines.append)
    assert again == [] and len(starts(tmp_path)) == 24


def test_report_has_the_tuning_section(tmp_path: Path, fake: Path) -> None:
    study = load_study(write_study(tmp_path))
    run_study(study, python=str(fake), echo=lambda line: None)
    write_report(study.out)
    md = (study.out / "results.md").read_text()
    tuning = md[md.index("## Tuning"):]
    assert "`data.val_sets=[selection]` (the selection split)" in tuning
    assert "### v=a: **w2** (`loss.weights.box=2.0`)" in tuning
    assert "| candidate | seed 100 | seed 102 | mean AP |" in tuning
    assert "| **w2** | 0.5000 | 0.5002 | 0.5001 |" in tuning
    assert "| w1 | 0.4990 | 0.4992 | 0.4991 |" in tuning
    assert "- v=b: w3 is the last candidate of its grid" in tuning
    assert "- v=c: x is the first candidate of its grid" in tuning
    assert "v=a: w2" not in tuning.split("Warning:")[1]  # an interior choice is not warned about
    # the comparisons are on the evaluation runs: 2 seeds each, the baseline v=a at its chosen w2
    assert "| **v=a** (baseline) | 2/2 |" in md and "| v=d | 2/2 |" in md
    # tuning.png: a panel per tuned variant (v=a, v=b, v=c; v=d is not tuned), three to a row, 3.6 x 2.8 in at 100 dpi
    assert "`tuning.png` (each variant's search" in md
    assert matplotlib.image.imread(study.out / "tuning.png").shape[:2] == (280, 3 * 360)


def test_report_names_candidates_that_did_not_start_alike(tmp_path: Path, fake: Path) -> None:
    """v=a's candidates at tuning seed 102 started from two backbones (another machine trained one): the Tuning
    section names that variant and seed and which candidate started where; seed 100 and the other variants, all
    alike, are not named."""
    study = load_study(write_study(tmp_path))
    run_study(study, python=str(fake), echo=lambda line: None)
    for candidate in ("w1", "w2", "w3"):
        for seed in (100, 102):
            path = study.out / "v=a" / f"tune={candidate}" / f"seed={seed}" / "metrics.json"
            backbone = "bbbbbbbbbbbb" if (candidate, seed) == ("w2", 102) else "aaaaaaaaaaaa"
            path.write_text(json.dumps(dict(json.loads(path.read_text()), start={"backbone": backbone})))
    write_report(study.out)
    tuning = (study.out / "results.md").read_text().split("## Tuning")[1]
    assert "Not exactly comparable" in tuning
    named = [line for line in tuning.splitlines() if line.startswith("- v=") and "backbone" in line]
    assert named == ["- v=a, seed 102: backbone aaaaaaaaaaaa: w1, w3; backbone bbbbbbbbbbbb: w2"]
    path = study.out / "v=a" / "tune=w2" / "seed=102" / "metrics.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), start={"backbone": "aaaaaaaaaaaa"})))
    write_report(study.out)
    assert "Not exactly comparable" not in (study.out / "results.md").read_text()


def test_report_says_which_evaluations_wait_for_their_search(tmp_path: Path, fake: Path) -> None:
    study = load_study(write_study(tmp_path))
    run_study(study, python=str(fake), only=["v=a"], echo=lambda line: None)  # v=a searched and evaluated
    write_report(study.out)
    incomplete = (study.out / "results.md").read_text().split("Incomplete:\n")[1].split("\n\n")[0]
    assert incomplete.splitlines() == [
        "- v=b: its evaluation runs (seeds 0, 1) wait for the choice of its tuning (0 of 6 search runs finished).",
        "- v=c: its evaluation runs (seeds 0, 1) wait for the choice of its tuning (0 of 4 search runs finished).",
        "- v=d: seed(s) 0, 1 missing (failed or not run): its row averages 0 of 2 seeds."]
    assert matplotlib.image.imread(study.out / "tuning.png").shape[:2] == (280, 360)  # v=a's panel alone


def test_no_tuning_plot_before_a_search_run_has_finished(tmp_path: Path, fake: Path) -> None:
    study = load_study(write_study(tmp_path))
    run_study(study, python=str(fake), only=["v=d"], echo=lambda line: None)  # not tuned: no search runs
    write_report(study.out)
    assert not (study.out / "tuning.png").exists()
    assert "tuning.png" not in (study.out / "results.md").read_text()


def test_dry_run_and_status_list_the_search_and_what_waits(tmp_path: Path, fake: Path, run_script: RunScript) -> None:
    path = write_study(tmp_path)

    def ablate(*flags: str) -> str:
        done = run_script("scripts/ablate.py", str(path), *flags)
        assert done.returncode == 0, done.stderr
        return done.stdout

    dry = ablate("--dry-run")
    assert "# v=a/tune=w1/seed=100 [new]" in dry and "--label v=a/tune=w1/seed=100" in dry
    assert "'data.val_sets=[selection]' loss.weights.box=1.0 train.seed=100" in dry
    assert "# v=d/seed=0 [new]" in dry and "# v=a/seed=0" not in dry
    assert ("tune: v=a: its evaluation runs (seeds 0, 1) wait for the choice of its tuning (0 of 6 search runs "
            "finished)") in dry
    assert not (tmp_path / "study").exists() or not starts(tmp_path)

    run_study(load_study(path), python=str(fake), only=["v=a"], echo=lambda line: None)
    status = ablate("--status")
    # finished runs with their metric: the fake's AP, 0.5 - 0.001 (w - 2)^2 + 0.0001 (seed % 10)
    assert "v=a/tune=w2/seed=102: finished (AP 0.5002)" in status and "v=a/seed=1: finished (AP 0.5001)" in status
    assert "v=b/tune=w1/seed=100: new" in status and "v=b/seed=0" not in status
    assert "tune: v=a: chose w2 (mean AP over seeds [100, 102]: w1 0.4991, w2 0.5001, w3 0.4991)" in status
    assert "tune: v=b: its evaluation runs (seeds 0, 1) wait for the choice of its tuning (0 of 6" in status


def test_another_study_cannot_reuse_a_tuned_variant(tmp_path: Path) -> None:
    owner = tmp_path / "owner"
    owner.mkdir()
    write_study(owner)  # tunes v=a
    with pytest.raises(StudyError, match=r"reuse\.v=a: study\.yaml tunes v=a \(its tune\.grid\)"):
        load_study(write_study(tmp_path, tune=None, reuse={"v=a": {"study": "owner/study.yaml", "variant": "v=a"}}))


def test_untuned_runs_of_another_study_are_reported_beside_the_tuned_ones(tmp_path: Path, fake: Path) -> None:
    """``untuned`` names another study's runs of v=a (the baseline), v=b and v=d at their own settings (box weight
    1): never trained by the tuned study, reported beside it at its seeds. Paired dAP: tuned v=b at w3 0.451 - 0.5 =
    -0.049, untuned 0.419 - 0.499 = -0.080; v=c (-0.001 tuned) has no untuned runs; v=d (no candidates) -0.001
    tuned, 0 untuned."""
    other = tmp_path / "other"
    other.mkdir()
    run_study(load_study(write_study(other, tune=None)), python=str(fake), echo=lambda line: None)
    trained_before = len(starts(tmp_path))
    untuned = {name: {"study": "other/study.yaml", "variant": name} for name in ("v=a", "v=b", "v=d")}
    study = load_study(write_study(tmp_path, untuned=untuned))
    run_study(study, python=str(fake), echo=lambda line: None)
    assert not any("/other/" in line for line in starts(tmp_path)[trained_before:])
    assert json.loads((study.out / STUDY_INFO).read_text())["untuned"]["v=b"] == "../other/study/v=b"
    write_report(study.out)
    md = (study.out / "results.md").read_text()
    section = md[md.index("## Tuned beside untuned"):]
    assert "| **v=a** (baseline) | w2 | 2 |  |  | 2 |  |  |" in section
    assert "| v=b | w3 | 2 | -0.0490 +- 0.0000 | preliminary | 2 | -0.0800 +- 0.0000 | preliminary |" in section
    assert "| v=c | x | 2 | -0.0010 +- 0.0000 | preliminary | - | - | not in untuned |" in section
    assert "| v=d | (no candidates) | 2 | -0.0010 +- 0.0000 | preliminary | 2 | +0.0000 +- 0.0000 | preliminary |" \
        in section


@pytest.mark.parametrize("untuned, tune, message", [
    ({"v=b": {"study": "other/study.yaml", "variant": "v=b"}}, TUNE, "untuned: name the baseline's runs too (v=a)"),
    ({"v=a": {"study": "other/study.yaml", "variant": "v=a"}}, None, "untuned: only with tune"),
    ({"v=a": {"study": "other/study.yaml", "variant": "v=a"}, "v=b": {"study": "other/study.yaml", "variant": "v=c"}},
     TUNE, "untuned.v=b: its config differs from study.yaml's v=c at train.epochs"),
])
def test_untuned_runs_are_checked(untuned: dict, tune: dict | None, message: str, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_study(other, tune=None)
    with pytest.raises(StudyError) as err:
        load_study(write_study(tmp_path, untuned=untuned, tune=tune))
    assert message in str(err.value), str(err.value)


def test_the_choice_follows_the_selection_split_not_the_reporting_one(tmp_path: Path, fake: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in whose optimum depends on the split it is evaluated on (box weight 2 on the selection split, 3 on the
    reporting one): the search chooses w2, the selection split's best, though w3 would score higher where the results
    are reported; so nothing of the choice reads the reporting split."""
    source = FAKE_TRAIN.replace('target = 10.0 if sets.get("train.epochs") == "2" else 2.0',
                                'target = 3.0 if sets.get("data.val_sets") == "[reporting]" else 2.0')
    assert source != FAKE_TRAIN
    fake.write_text(source.format(python=sys.executable))
    study = load_study(write_study(tmp_path, axes={"v": {"a": {}, "b": {"train.epochs": 2}}},
                                   tune={**TUNE, "grid": {"*": BOX}}))
    run_study(study, python=str(fake), echo=lambda line: None)
    assert {choice.variant: choice.chosen for choice in study.choices()} == {"v=a": "w2", "v=b": "w2"}
    for run in study.runs():  # evaluated where the results are reported, at the selection split's choice
        assert json.loads((run.folder / "args.json").read_text())["loss.weights.box"] == "2.0"
