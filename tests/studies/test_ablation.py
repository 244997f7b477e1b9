"""Ablation studies: expansion (grid, one at a time, include, seeds), naming, invalid variants, the runner's
skip / resume / failed-run handling with real train.py processes, and the aggregation maths on known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from yolo_loss.config.load import load_config
from yolo_loss.studies.report import load_rows, markdown, summarize, write_report
from yolo_loss.studies.runner import run_study, train_command
from yolo_loss.studies.study import FAILED, StudyError, load_study

if TYPE_CHECKING:
    from conftest import RunScript

REPO = Path(__file__).resolve().parents[2]


def write_study(folder: Path, base: Path, **study) -> Path:
    data = {"base": str(base), "out": str(folder / "study"), "seeds": [0, 1], **study}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


AXES = {"xy": {"bce": {"loss.xy": "bce"}, "mse": {"loss.xy": "mse"}},
        "cls": {"bce": {}, "focal": {"loss.cls": "focal", "loss.focal_gamma": 1.5}, "ce": {"loss.cls": "ce"}}}
SHAPES_NANO = REPO / "configs" / "shapes_nano.yaml"


def test_grid_expansion_names_and_overrides(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", axes=AXES, overrides={"train.epochs": 2}))
    runs = study.runs()
    assert len(runs) == 2 * 3 * 2
    assert runs[0].name == "xy=bce,cls=bce/seed=0" and runs[-1].name == "xy=mse,cls=ce/seed=1"
    assert runs[0].folder == tmp_path / "study" / "xy=bce,cls=bce" / "seed=0"
    focal = next(run for run in runs if run.name == "xy=mse,cls=focal/seed=1")
    assert focal.overrides == ("train.epochs=2", "loss.xy=mse", "loss.cls=focal", "loss.focal_gamma=1.5",
                               "train.seed=1")
    cfg = load_config(study.base, focal.overrides)
    assert (cfg.loss.xy, cfg.loss.cls, cfg.loss.focal_gamma, cfg.train.seed, cfg.train.epochs) == \
        ("mse", "focal", 1.5, 1, 2)


def test_one_at_a_time_with_include(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="one_at_a_time", axes=AXES,
                                   baseline={"xy": "bce", "cls": "bce"},
                                   include=[{"cls": "focal", "xy": "mse"}, {"xy": "mse", "cls": "bce"}]))
    names = [variant.name for variant in study.variants()]
    # the baseline, one change per axis, then the included combination (the duplicate is not repeated)
    assert names == ["xy=bce,cls=bce", "xy=mse,cls=bce", "xy=bce,cls=focal", "xy=bce,cls=ce", "xy=mse,cls=focal"]
    assert study.baseline_name == "xy=bce,cls=bce"
    assert len(study.runs()) == 10


def test_only_some_variants(tmp_path: Path) -> None:
    """--only: the runs of the named variants, every seed; a name the study does not have is an error naming them."""
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", axes=AXES))
    runs = study.runs(["xy=mse,cls=ce", "xy=bce,cls=bce"])
    assert [run.name for run in runs] == ["xy=bce,cls=bce/seed=0", "xy=bce,cls=bce/seed=1", "xy=mse,cls=ce/seed=0",
                                          "xy=mse,cls=ce/seed=1"]
    with pytest.raises(ValueError, match="no variant xy=sse,cls=ce in study.yaml; its variants: xy=bce,cls=bce"):
        study.runs(["xy=sse,cls=ce"])


def test_values_of_any_type_survive_the_command_line(tmp_path: Path) -> None:
    anchors = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]]
    axes = {"anchors": {"default": {}, "other": {"model.anchors": anchors, "loss.level_weights.obj_neg": [4.0, 1.0, 0.4]}}}
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", axes=axes, seeds=[0]))
    cfg = load_config(study.base, study.runs()[1].overrides)
    assert cfg.model.anchors == anchors and cfg.loss.level_weights.obj_neg == [4.0, 1.0, 0.4]


@pytest.mark.parametrize("change, message", [
    ({"axes": {"xy": {"bce": {}, "typo": {"loss.xy": "bec"}}}}, "variant xy=typo: "),
    ({"axes": {"xy": {"bce": {}, "typo": {"loss.xyy": "mse"}}}}, "did you mean 'loss.xy'"),
    ({"combine": "one_at_a_time"}, "baseline: one_at_a_time needs a value for every axis"),
    ({"combine": "sideways"}, "combine: 'sideways'"),
    ({"seeds": [0, 0]}, "seeds: expected a list of distinct integers"),
    ({"seeds": {"auto": [0, 1]}}, "seeds: expected a list of seeds or {auto:"),
    ({"seeds": {"auto": [0, 1], "cap": 10, "metirc": "AP"}}, "seeds: expected a list of seeds or {auto:"),
    ({"seeds": {"auto": [0, 0], "cap": 10}}, "seeds.auto: expected a list of distinct integers"),
    ({"seeds": {"auto": [0, 1, 2], "cap": 2}}, "seeds.cap: expected an integer of at least the 3 first seeds"),
    ({"seeds": {"auto": [0, 1], "cap": 5, "metric": "mAP"}}, "seeds.metric: 'mAP' is not one of AP, AP50"),
    ({"seeds": {"auto": [0, 1], "cap": 5}}, "seeds: auto adds seeds while a variant's difference from the "
                                            "baseline is unresolved: the study needs a baseline with a value"),
    ({"axis": {}}, "unknown key(s) axis"),
    ({"extra_seeds": {"xy=mse,cls=ce": [2]}, "seeds": {"auto": [0, 1], "cap": 5}, "combine": "one_at_a_time",
      "baseline": {"xy": "bce", "cls": "bce"}}, "extra_seeds: not with seeds: auto"),
    ({"extra_seeds": {"xy=huh,cls=ce": [2]}}, "extra_seeds.xy=huh,cls=ce: not a variant of this study"),
    ({"extra_seeds": {"xy=mse,cls=ce": [1, 2]}}, "extra_seeds.xy=mse,cls=ce: seed(s) 1 already in seeds [0, 1]"),
    ({"extra_seeds": {"xy=mse,cls=ce": [2, 2]}}, "extra_seeds.xy=mse,cls=ce: expected a list of distinct integers"),
    ({"extra_seeds": {"xy=bce,cls=bce": [2]}, "combine": "one_at_a_time", "baseline": {"xy": "bce", "cls": "bce"}},
     "extra_seeds.xy=bce,cls=bce: the baseline has every seed any variant has"),
    ({"include": [{"xy": "huh", "cls": "bce"}]}, "include:"),
    ({"axes": {"x/y": {"a": {}}}}, "may not contain"),
])
def test_invalid_studies_fail_before_anything_runs(change: dict, message: str, tmp_path: Path) -> None:
    study = {"combine": "grid", "axes": AXES, **change}
    with pytest.raises(StudyError) as err:
        load_study(write_study(tmp_path, SHAPES_NANO, **study))
    assert message in str(err.value) and str(tmp_path / "study.yaml") in str(err.value)
    assert not (tmp_path / "study").exists()


def test_invalid_variant_names_the_key_from_the_command_line(tmp_path: Path, run_script: RunScript) -> None:
    path = write_study(tmp_path, SHAPES_NANO, combine="grid", axes={"xy": {"typo": {"loss.xy": "bec"}}})
    done = run_script("scripts/ablate.py", str(path))
    assert done.returncode == 2 and "variant xy=typo" in done.stderr and "loss.xy" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_key_or_value_is_named_where_the_study_file_sets_it(tmp_path: Path) -> None:
    """The runs get their overrides as --set, but a bad one is reported at its place in the study file: the
    variant's axis value, or the study's overrides (no variant then: every variant has them)."""
    def error(**study: object) -> str:
        with pytest.raises(StudyError) as err:
            load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", **study))
        assert "--set" not in str(err.value)
        return str(err.value)

    path = tmp_path / "study.yaml"
    assert error(axes={"xy": {"bce": {}, "typo": {"loss.xyy": "mse"}}}).startswith(
        f"{path}: variant xy=typo: axes.xy.typo: loss.xyy: unknown key; did you mean 'loss.xy'? (valid keys: xy, ")
    assert error(axes={"xy": {"bce": {}, "typo": {"loss.xy": "bec"}}}).startswith(
        f"{path}: variant xy=typo: loss.xy: 'bec' is not one of bce, ")
    assert error(axes={"xy": {"bce": {}, "typo": {"loss.xy": "bec"}}}).endswith(" (set in axes.xy.typo)")
    assert error(axes=AXES, overrides={"trian.epochs": 2}) == (
        f"{path}: overrides: trian: unknown key; did you mean 'train'? (valid keys: model, data, loss, train, eval, "
        "name)")


@pytest.mark.slow
def test_runner_finishes_skips_resumes_and_records_failures(tmp_path: Path) -> None:
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump({
        "_base_": str(REPO / "configs" / "presets" / "darknet.yaml"),
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "shapes", "root": str(tmp_path / "data"), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 16, "num_val": 4, "image_size": 64, "max_objects": 2}},
        "train": {"epochs": 1, "batch_size": 8, "burn_in": 1, "ema": False, "eval_points": 1,
                  "eval_at_start": False, "log_interval": 1,
                  "device": "cpu"},
        "eval": {"batch_size": 4}}))
    # 'broken' passes the config checks but cannot train: its data folder does not exist
    axes = {"xy": {"bce": {}, "mse": {"loss.xy": "mse"},
                   "broken": {"data.format": "coco", "data.root": str(tmp_path / "nowhere")}}}
    study = load_study(write_study(tmp_path, base, combine="one_at_a_time", baseline={"xy": "bce"}, axes=axes))
    lines: list[str] = []
    outcomes = run_study(study, jobs=2, echo=lines.append)
    assert sorted(o.status for o in outcomes) == ["failed"] * 2 + ["finished"] * 4
    assert any("[4/6 done, 0 running, 2 failed" in line for line in lines), lines
    broken = study.out / "xy=broken" / "seed=0"
    failure = json.loads((broken / FAILED).read_text())
    assert failure["returncode"] == 2 and "nowhere" in failure["error"]

    written = write_report(study.out)
    assert {p.name for p in written} == {"results.csv", "results.md", "metrics.png", "forest.png"}
    md = (study.out / "results.md").read_text()
    assert "xy=broken/seed=0" in md and "seed(s) 0, 1 missing" in md
    info, rows = load_rows(study.out)
    finished = {(r["variant"], r["seed"]): r for r in rows if r["status"] == "finished"}
    assert set(finished) == {("xy=bce", 0), ("xy=bce", 1), ("xy=mse", 0), ("xy=mse", 1)}
    assert all(r["images_per_sec"] > 0 and r["loss_total"] > 0 for r in finished.values())

    # Re-running does no work for finished runs; the failed ones are set aside and tried again.
    finished_file = study.out / "xy=bce" / "seed=0" / "metrics.json"
    before = finished_file.stat().st_mtime_ns
    # A run killed after its last checkpoint but before metrics.json is resumed, not restarted.
    resumed = study.out / "xy=mse" / "seed=1"
    expected = json.loads((resumed / "metrics.json").read_text())["metrics"]
    (resumed / "metrics.json").unlink()
    assert "--resume" in train_command(study.runs()[3])
    outcomes = run_study(study, echo=lines.append)
    assert sorted(o.run.name for o in outcomes) == ["xy=broken/seed=0", "xy=broken/seed=1", "xy=mse/seed=1"]
    assert finished_file.stat().st_mtime_ns == before
    assert json.loads((resumed / "metrics.json").read_text())["metrics"] == pytest.approx(expected)
    assert "resumed from" in (resumed / "train.log").read_text()
    assert (study.out / "xy=broken" / "seed=0.failed-1" / FAILED).is_file()


def fake_study(folder: Path, results: dict[str, dict[int, float]], seeds: list[int], baseline: str) -> Path:
    """A study folder written by hand: AP50 values per variant and seed (AP and AP75 derived from it)."""
    info = {"study_file": str(folder / "fake.yaml"), "base": "x", "combine": "grid", "seeds": seeds,
            "axes": ["v"], "baseline": baseline, "variants": list(results)}
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(info))
    for variant, per_seed in results.items():
        for seed, ap50 in per_seed.items():
            run = folder / variant / f"seed={seed}"
            run.mkdir(parents=True)
            (run / "run.json").write_text("{}")
            metrics = {"AP": ap50 / 2, "AP50": ap50, "AP75": ap50 / 4}
            (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "steps": 6, "final_terms": {"total": 1.0},
                                                          "train_seconds": 10.0, "images_per_sec": 5.0}))
    return folder


def test_aggregation_on_known_numbers(tmp_path: Path) -> None:
    """Five seeds: v=better differs by 0.10, 0.12, 0.08, 0.11, 0.09 (mean 0.10, SE 0.00707, Holm p over the family
    of three < 0.05: better); v=same by 0.001, -0.002, 0.003, 0.0, 0.002 (inside +-0.01 by the equivalence test:
    equivalent); v=partial has one seed (preliminary, no error estimate)."""
    results = {"v=base": {0: 0.50, 1: 0.52, 2: 0.54, 3: 0.50, 4: 0.52},
               "v=better": {0: 0.60, 1: 0.64, 2: 0.62, 3: 0.61, 4: 0.61},
               "v=same": {0: 0.501, 1: 0.518, 2: 0.543, 3: 0.50, 4: 0.522},
               "v=partial": {0: 0.40}}                     # seeds 1 to 4 missing
    info, rows = load_rows(fake_study(tmp_path / "s", results, [0, 1, 2, 3, 4], "v=base"))
    summaries = {s.name: s for s in summarize(info, rows)}

    base = summaries["v=base"]
    assert base.n == 5 and base.mean["AP50"] == pytest.approx(0.516) and base.diff is None
    better = summaries["v=better"].diff["AP50"]
    assert better.difference.mean == pytest.approx(0.10) and better.difference.se == pytest.approx(0.00707107)
    assert better.verdict == "better" and better.p_holm < 0.05
    same = summaries["v=same"].diff["AP50"]
    assert same.difference.mean == pytest.approx(0.0008) and same.verdict == "equivalent"
    assert summaries["v=better"].diff["AP"].difference.mean == pytest.approx(0.05)  # AP = AP50 / 2
    partial = summaries["v=partial"]
    assert partial.n == 1 and partial.missing == [1, 2, 3, 4] and math.isnan(partial.std["AP50"])
    assert partial.diff["AP50"].difference.n == 1 and partial.diff["AP50"].verdict == "preliminary"

    md = markdown(info, list(summaries.values()))
    assert "| **v=base** (baseline) | 5/5 | 0.258 +- 0.008 | 0.516 +- 0.017 | 0.129 +- 0.004 |" in md
    assert "| v=better | 5/5 |" in md and "| +0.050 +- 0.004 | better |" in md
    assert "| Holm p | BH q | MDE (95%) | TOST p |" in md and "| preliminary |" in md
    assert "v=partial: seed(s) 1, 2, 3, 4 missing" in md and "| v=partial | 1/5 |" in md

    written = write_report(tmp_path / "s")
    assert (tmp_path / "s" / "results.csv").read_text().count("\n") == 1 + 4 * 5  # missing runs have rows too
    assert all(path.exists() for path in written) and (tmp_path / "s" / "forest.png") in written


def test_report_refuses_to_pair_runs_of_different_precisions(tmp_path: Path) -> None:
    """A bfloat16 run against a float32 baseline is refused, naming the variant and seeds; the same pair is read
    when the variant's own overrides set train.amp (a study of the precision)."""
    from yolo_loss.studies.report import ReportError

    results = {"v=base": {s: 0.5 for s in range(5)}, "v=x": {s: 0.5 + 0.01 * s for s in range(5)}}
    folder = fake_study(tmp_path / "s", results, list(range(5)), "v=base")
    for seed in range(5):
        metrics = folder / "v=x" / f"seed={seed}" / "metrics.json"
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"precision": "bfloat16"}))
    with pytest.raises(ReportError, match=r"v=x: seed\(s\) 0, 1, 2, 3, 4 trained in bfloat16 against a baseline "
                                          r"in float32"):
        summarize(*load_rows(folder))
    for seed in range(5):
        (folder / "v=x" / f"seed={seed}" / "run.json").write_text(json.dumps({"overrides": ["train.amp=true"]}))
    (summary,) = [s for s in summarize(*load_rows(folder)) if s.name == "v=x"]
    assert summary.diff["AP"].difference.n == 5


def test_report_names_seeds_whose_runs_started_from_different_backbones(tmp_path: Path) -> None:
    """Seed 0's two runs started from one backbone, seed 1's from two (another machine trained one): results.md
    names seed 1 and which variant started where; a study whose seeds all match says nothing."""
    folder = fake_study(tmp_path / "s", {"v=base": {0: 0.5, 1: 0.5}, "v=x": {0: 0.6, 1: 0.6}}, [0, 1], "v=base")
    starts = {("v=base", 0): "aaaaaaaaaaaa", ("v=x", 0): "aaaaaaaaaaaa", ("v=base", 1): "aaaaaaaaaaaa",
              ("v=x", 1): "bbbbbbbbbbbb"}
    for (variant, seed), backbone in starts.items():
        path = folder / variant / f"seed={seed}" / "metrics.json"
        summary = json.loads(path.read_text())
        path.write_text(json.dumps(dict(summary, start={"backbone": backbone, "backbone_val_accuracy": 0.9})))
    write_report(folder)
    text = (folder / "results.md").read_text()
    assert "Not exactly paired" in text
    assert "- seed 1: backbone aaaaaaaaaaaa: v=base; backbone bbbbbbbbbbbb: v=x" in text and "- seed 0" not in text
    assert "backbone" in (folder / "results.csv").read_text().splitlines()[0]
    path = folder / "v=x" / "seed=1" / "metrics.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), start={"backbone": "aaaaaaaaaaaa"})))
    write_report(folder)
    assert "Not exactly paired" not in (folder / "results.md").read_text()


def test_report_names_seeds_whose_runs_were_trained_on_different_processors(tmp_path: Path) -> None:
    """command.txt's processor: seed 1's variant ran on another CPU, so results.md names seed 1; a run whose
    processor was not recorded (written before it was, or on CUDA) is not counted against the others."""
    folder = fake_study(tmp_path / "s", {"v=base": {0: 0.5, 1: 0.5}, "v=x": {0: 0.6, 1: 0.6}}, [0, 1], "v=base")
    host = "# host: vm, device: cpu: {} (2 cores; CUDA not available)\n"
    cpus = {("v=base", 0): "CPU A, ATen AVX512, avx512_bf16", ("v=x", 0): None,
            ("v=base", 1): "CPU A, ATen AVX512, avx512_bf16", ("v=x", 1): "CPU B, ATen AVX2"}
    for (variant, seed), cpu in cpus.items():
        older = "# host: vm, device: cpu (2 cores; CUDA not available)\n"  # the line before processors were named
        (folder / variant / f"seed={seed}" / "command.txt").write_text(
            "# 2026-12-07T00:00:00+00:00\ntrain.py\n" + (older if cpu is None else host.format(cpu)))
    write_report(folder)
    text = (folder / "results.md").read_text()
    assert ("- seed 1: processor CPU A, ATen AVX512, avx512_bf16: v=base; processor CPU B, ATen AVX2: v=x" in text
            and "- seed 0" not in text)
    assert "processor" in (folder / "results.csv").read_text().splitlines()[0]


def test_convergence_table_and_curves_on_known_numbers(tmp_path: Path) -> None:
    """Runs evaluated after epochs 3, 6, 9 and 12 (``metrics.json`` ``evaluations``). Worked by hand: the baseline's
    mean AP 0.11, 0.21, 0.28, 0.30 rises 0.02 over the last quarter (from epoch 9), 7% of 0.30: converged; v=x's
    0.05, 0.11, 0.15, 0.21 rises 0.06, 29%: not. Paired by seed, v=x - baseline is (-0.05, -0.07) at epoch 3:
    -0.060 +- 0.010 (sd 0.01414 / sqrt 2), (-0.10, -0.10) at 6, (-0.10, -0.08) at 12. A study evaluated once has no
    convergence section."""
    curves = {("v=base", 0): [0.10, 0.20, 0.28, 0.30], ("v=base", 1): [0.12, 0.22, 0.28, 0.30],
              ("v=x", 0): [0.05, 0.10, 0.15, 0.20], ("v=x", 1): [0.05, 0.12, 0.15, 0.22]}
    folder = fake_study(tmp_path / "s", {"v=base": {0: 0.6, 1: 0.6}, "v=x": {0: 0.4, 1: 0.44}, "v=once": {0: 0.5}},
                        [0, 1], "v=base")
    write_report(folder)
    assert "## Convergence" not in (folder / "results.md").read_text()
    assert not (folder / "ap_curves.png").exists()
    for (variant, seed), values in curves.items():
        path = folder / variant / f"seed={seed}" / "metrics.json"
        evaluations = [{"step": 10 * epoch, "epoch": epoch, "AP": ap} for epoch, ap in zip((3, 6, 9, 12), values)]
        path.write_text(json.dumps(dict(json.loads(path.read_text()), evaluations=evaluations)))
    written = write_report(folder)
    text = (folder / "results.md").read_text()
    assert ("| **v=base** (baseline) |" not in text.split("## Convergence")[1]
            and "| v=base | 2 | 3: 0.110, 6: 0.210, 9: 0.280, 12: 0.300 | +0.020 since epoch 9 (+7%) | yes |  |" in text)
    assert ("| v=x | 2 | 3: 0.050, 6: 0.110, 9: 0.150, 12: 0.210 | +0.060 since epoch 9 (+29%) | no | "
            "3: -0.060 +- 0.010, 6: -0.100 +- 0.000, 9: -0.130 +- 0.000, 12: -0.090 +- 0.010 |") in text
    assert "v=once" not in text.split("## Convergence")[1]  # evaluated once: no curve
    assert folder / "ap_curves.png" in written and (folder / "ap_curves.png").stat().st_size > 0


def test_a_run_stopped_by_a_signal_is_resumed_not_failed(tmp_path: Path) -> None:
    """A stand-in for train.py: saves last.pt in its --run-dir and exits 130, as train.py does after Ctrl-C."""
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\n"
                    "while [ $# -gt 0 ]; do [ \"$1\" = --run-dir ] && touch \"$2/last.pt\"; shift; done\n"
                    "exit 130\n")
    fake.chmod(0o755)
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", seeds=[0],
                                   axes={"xy": {"bce": {}}}))
    outcomes = run_study(study, python=str(fake), echo=lambda line: None)
    run = study.runs()[0]
    assert [o.status for o in outcomes] == ["interrupted"] and not (run.folder / FAILED).exists()
    assert run.state() == "interrupted" and "--resume" in train_command(run, python=str(fake))


def test_runs_can_be_handed_to_torchrun(tmp_path: Path, run_script: RunScript) -> None:
    """--nproc-per-run N: each run is train.py under torchrun (one node, a port of its own), which --dry-run prints
    for a scheduler; --devices are shared out N to a run."""
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", seeds=[0], axes={"xy": {"bce": {}}}))
    run = study.runs()[0]
    command = train_command(run, python="python", nproc_per_run=2)
    assert command[:6] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "train.py")]
    assert command[6:] == train_command(run, python="python")[2:]  # the same train.py arguments
    done = run_script("scripts/ablate.py", str(tmp_path / "study.yaml"), "--dry-run", "--nproc-per-run", "2")
    assert done.returncode == 0 and "-m torch.distributed.run --standalone --nproc_per_node=2 " in done.stdout
    done = run_script("scripts/ablate.py", str(tmp_path / "study.yaml"), "--devices", "0,1,2",
                      "--nproc-per-run", "2")
    assert done.returncode == 2 and "cannot share out" in done.stderr


def test_torchrun_runs_stopped_by_a_signal_are_resumed_and_others_failed(tmp_path: Path) -> None:
    """torchrun exits 1 when its processes stop on a signal: train.py's status.json (stopped at a step) tells an
    interrupted run (resumed next time) from a failed one, whatever the log says. Each run gets its own pair of the four devices."""
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\n"
                    "echo \"devices $CUDA_VISIBLE_DEVICES args $*\"\n"
                    "while [ $# -gt 0 ]; do [ \"$1\" = --run-dir ] && run=\"$2\"; shift; done\n"
                    "touch \"$run/last.pt\"\n"
                    "case \"$run\" in *xy=bce*) echo '{\"state\": \"stopped\", \"step\": 7}' > \"$run/status.json\";;\n"
                    "  *) echo 'stopped at step 7 (printed, not a status)';; esac\n"
                    "exit 1\n")
    fake.chmod(0o755)
    study = load_study(write_study(tmp_path, SHAPES_NANO, combine="grid", seeds=[0],
                                   axes={"xy": {"bce": {}, "mse": {"loss.xy": "mse"}}}))
    outcomes = run_study(study, jobs=9, devices=["0", "1", "2", "3"], nproc_per_run=2, python=str(fake),
                         echo=lambda line: None)
    assert {o.run.variant.name: o.status for o in outcomes} == {"xy=bce": "interrupted", "xy=mse": "failed"}
    logs = [(run.folder / "train.log").read_text() for run in study.runs()]
    assert all("-m torch.distributed.run --standalone --nproc_per_node=2 " in log for log in logs)
    assert sorted(log.split("devices ")[1].split(" ")[0] for log in logs) == ["0,1", "2,3"]


def test_a_study_reuses_identical_runs_of_another(tmp_path: Path) -> None:
    """reuse: a variant whose runs are another study's (the same resolved config) lists that study's run folders
    instead of training them again; its report reads them there. A config that differs is refused, naming a key."""
    (tmp_path / "a").mkdir()
    axes = {"xy": {"bce": {}, "mse": {"loss.xy": "mse"}}}
    owner = write_study(tmp_path / "a", SHAPES_NANO, combine="grid", axes=axes,
                        overrides={"train.epochs": 2})
    reusing = tmp_path / "b" / "study.yaml"
    reusing.parent.mkdir()
    data = {"base": str(SHAPES_NANO), "out": str(tmp_path / "b" / "study"), "seeds": [1], "combine": "grid",
            "overrides": {"train.epochs": 2}, "axes": {"box": {"mse": {}, "giou": {"loss.box": "giou",
                                                                              "loss.xy": "none", "loss.wh": "none"}}},
            "reuse": {"box=mse": {"study": str(owner), "variant": "xy=bce"}}}
    reusing.write_text(yaml.safe_dump(data, sort_keys=False))
    study = load_study(reusing)
    shared, own = study.runs()
    assert shared.folder == tmp_path / "a" / "study" / "xy=bce" / "seed=1" and shared.listed_as == "box=mse"
    assert shared.study_file == owner and "(shared with study)" in shared.name
    assert own.folder == tmp_path / "b" / "study" / "box=giou" / "seed=1" and own.listed_as == ""
    assert study.folders() == {"box=mse": "../../a/study/xy=bce"}

    data["overrides"] = {"train.epochs": 3}
    reusing.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(StudyError, match=r"reuse.box=mse: its config differs from study.yaml's xy=bce at "
                                         r"train.epochs"):
        load_study(reusing)
    data["overrides"], data["seeds"] = {"train.epochs": 2}, [1, 5]  # seed 5: not the owner's; trained in its folder
    reusing.write_text(yaml.safe_dump(data, sort_keys=False))
    shared = [run for run in load_study(reusing).runs() if run.listed_as]
    assert [run.folder for run in shared] == [tmp_path / "a" / "study" / "xy=bce" / f"seed={s}" for s in (1, 5)]
    assert shared[1].overrides == ("train.epochs=2", "train.seed=5")
