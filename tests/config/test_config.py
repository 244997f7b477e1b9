"""Tests for yolo_loss.config.load: _base_ inheritance, dotted overrides, paths, every error message, dumps."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from yolo_loss.config.load import (
    ConfigError,
    add_config_arguments,
    apply_overrides,
    config_from_args,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_config,
    load_config,
)
from yolo_loss.config.schema import YOLOV3_ANCHORS, Config, LossConfig, TrainConfig

if TYPE_CHECKING:
    from conftest import RunScript

REPO_ROOT = Path(__file__).resolve().parents[2]
LOSS_KEYS = ", ".join(field.name for field in dataclasses.fields(LossConfig))
TRAIN_KEYS = ", ".join(field.name for field in dataclasses.fields(TrainConfig))


def write(path: Path, text: str) -> Path:
    """Write a YAML file (creating its folder) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    """The message of the ConfigError that loading ``path`` must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def set_error(config: Path, override: str) -> str:
    """The message of the ConfigError that loading ``config`` with one ``--set`` override must raise."""
    return load_error(config, (override,))


@pytest.fixture
def plain_config(tmp_path: Path) -> Path:
    """A config that sets nothing, so that overrides are checked against the schema defaults."""
    return write(tmp_path / "plain.yaml", "name: plain\n")


# ---------------------------------------------------------------------------------------------
# Inheritance, overrides, paths
# ---------------------------------------------------------------------------------------------

def test_bases_merge_in_order_dicts_merge_and_lists_replace(tmp_path: Path) -> None:
    """child -> [bases/a.yaml, bases/b.yaml]; b -> common.yaml, found next to b, not next to child.

    common: loss.obj=focal, train.seed=7
    a:      loss.xy=mse, train.steps=[0.5, 0.7], train.epochs=2, model.anchors_img_size=320
    b:      loss.wh=smooth_l1, train.steps=[0.6], train.epochs=3
    child:  loss.cls=ce, train.epochs=5
    Expected: every loss key kept (dict merge), steps=[0.6] (b's list replaces a's, no element
    merge), epochs=5 (the file itself on top), untouched keys at their defaults.
    """
    write(tmp_path / "bases" / "common.yaml", "loss: {obj: focal}\ntrain: {seed: 7}\n")
    write(tmp_path / "bases" / "a.yaml", """\
        loss: {xy: mse}
        train: {steps: [0.5, 0.7], epochs: 2}
        model: {anchors_img_size: 320}
        """)
    write(tmp_path / "bases" / "b.yaml", """\
        _base_: common.yaml
        loss: {wh: smooth_l1}
        train: {steps: [0.6], epochs: 3}
        """)
    child = write(tmp_path / "child.yaml", """\
        _base_: [bases/a.yaml, bases/b.yaml]
        loss: {cls: ce}
        train: {epochs: 5}
        """)
    cfg = load_config(child)
    assert (cfg.loss.xy, cfg.loss.wh, cfg.loss.cls, cfg.loss.obj) == ("mse", "smooth_l1", "ce", "focal")
    assert cfg.train.steps == [0.6]
    assert (cfg.train.epochs, cfg.train.seed, cfg.model.anchors_img_size) == (5, 7, 320)
    assert (cfg.loss.assign, cfg.train.batch_size) == ("best_anchor", 16)


def test_a_mapping_over_a_scalar_replaces_it_and_empty_file_is_empty(tmp_path: Path) -> None:
    """base sets loss.weights to a scalar (invalid alone); the child's mapping replaces it entirely."""
    write(tmp_path / "base.yaml", "loss: {weights: 3}\n")
    write(tmp_path / "empty.yaml", "")
    child = write(tmp_path / "child.yaml", "_base_: [base.yaml, empty.yaml]\nloss: {weights: {cls: 0.5}}\n")
    cfg = load_config(child)
    assert (cfg.loss.weights.cls, cfg.loss.weights.xy) == (0.5, 1.0)


def test_overrides_nested_keys_list_index_and_order(tmp_path: Path) -> None:
    """Overrides apply after all files, in order; `.N` indexes a list (schema default or file's)."""
    config = write(tmp_path / "x.yaml", "train: {epochs: 7, steps: [0.5, 0.75]}\nloss: {xy: mse}\n")
    cfg = load_config(config, [
        "train.epochs=3",
        "loss.xy=bce",
        "loss.weights.obj_neg=0.5",
        "model.anchors.0=[12,16]",
        "model.anchors.8.1=300",
        "train.steps.1=0.9",
        "data.augment.multiscale=[128, 160]",
        "train.ema=false",
        "name=first",
        "name=second",
        "loss={cls: focal}",  # a mapping merges into the section like a file would
    ])
    assert (cfg.train.epochs, cfg.loss.xy, cfg.loss.cls) == (3, "bce", "focal")
    assert (cfg.train.ema, cfg.name) == (False, "second")
    assert (cfg.loss.weights.obj_neg, cfg.loss.weights.obj_pos) == (0.5, 1.0)
    assert cfg.model.anchors[0] == [12.0, 16.0]
    assert cfg.model.anchors[8] == [373.0, 300.0]
    assert cfg.model.anchors[1:8] == [[float(v) for v in pair] for pair in YOLOV3_ANCHORS[1:8]]
    assert cfg.train.steps == [0.5, 0.9]
    assert cfg.data.augment.multiscale == [128, 160]


def test_overrides_do_not_change_the_schema_default(plain_config: Path) -> None:
    """Indexing into a default list must copy it first, never edit the module-level anchors."""
    load_config(plain_config, ["model.anchors.0=[1,2]"])
    assert YOLOV3_ANCHORS[0] == [10, 13]
    assert load_config(plain_config).model.anchors[0] == [10.0, 13.0]


def test_apply_overrides_returns_a_new_checked_config(plain_config: Path) -> None:
    cfg = load_config(plain_config)
    changed = apply_overrides(cfg, ["eval.conf_thresh=0.01"])
    assert (changed.eval.conf_thresh, cfg.eval.conf_thresh) == (0.01, 0.005)
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, ["eval.nms_iou=0"])
    assert str(info.value) == "eval.nms_iou: must be in (0, 1], got 0 (set by --set)"


def test_paths_resolve_against_the_file_that_set_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.root: from a base -> the base's folder; a default -> the top file's folder; --set -> cwd."""
    write(tmp_path / "bases" / "voc.yaml", "data: {format: voc, root: ../datasets/voc}\n")
    top = write(tmp_path / "top" / "child.yaml", "_base_: ../bases/voc.yaml\n")
    assert load_config(top).data.root == str(tmp_path / "datasets" / "voc")

    plain = write(tmp_path / "top" / "plain.yaml", "name: plain\n")  # schema default ../data/shapes
    assert load_config(plain).data.root == str(tmp_path / "data" / "shapes")

    monkeypatch.chdir(tmp_path / "bases")
    assert load_config(top, ["data.root=here"]).data.root == str(tmp_path / "bases" / "here")
    absolute = str(tmp_path / "elsewhere")
    assert load_config(top, [f"data.root={absolute}"]).data.root == absolute


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------

def test_unknown_key_in_a_file_names_the_file_and_suggests(tmp_path: Path) -> None:
    config = write(tmp_path / "x.yaml", "loss: {xyy: mse}\n")
    assert load_error(config) == (f"{config}: loss.xyy: unknown key; did you mean 'loss.xy'? "
                                  f"(valid keys: {LOSS_KEYS})")


def test_unknown_key_names_the_base_that_has_it(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "lost: {xy: mse}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nname: c\n")
    assert load_error(child) == (f"{base}: lost: unknown key; did you mean 'loss'? "
                                 "(valid keys: model, data, loss, train, eval, name)")


def test_unknown_override_key_suggests_the_same_name_in_another_section(plain_config: Path) -> None:
    assert set_error(plain_config, "loss.xyy=mse") == (
        f"--set: loss.xyy: unknown key; did you mean 'loss.xy'? (valid keys: {LOSS_KEYS})")
    assert set_error(plain_config, "train.ignore_thresh=0.5") == (
        f"--set: train.ignore_thresh: unknown key; did you mean 'loss.ignore_thresh'? (valid keys: {TRAIN_KEYS})")


def test_overrides_are_named_by_their_source_when_given(plain_config: Path) -> None:
    """A caller that knows where its overrides come from (a study file) names that rather than --set."""
    with pytest.raises(ConfigError) as info:
        load_config(plain_config, ["train.epochs=2", "loss.xyy=mse"], override_sources=["overrides", "axes.xy.a"])
    assert str(info.value).startswith("axes.xy.a: loss.xyy: unknown key; did you mean 'loss.xy'?")
    with pytest.raises(ConfigError) as info:
        load_config(plain_config, ["train.epochs=0"], override_sources=["overrides"])
    assert str(info.value).endswith("(set in overrides)") and "--set" not in str(info.value)
    with pytest.raises(ValueError, match="2 overrides but 1 override sources"):
        load_config(plain_config, ["train.epochs=2", "train.lr=0.1"], override_sources=["overrides"])


def test_bad_override_syntax_and_keys(plain_config: Path) -> None:
    assert set_error(plain_config, "train.epochs") == "--set: expected KEY=VALUE, got 'train.epochs'"
    assert set_error(plain_config, "loss..xy=mse") == "--set: loss..xy: not a dotted key (an empty part between dots)"
    assert set_error(plain_config, "model.anchors.9=[1,2]") == (
        "--set: model.anchors.9: index 9 is out of range: model.anchors has 9 elements")
    assert set_error(plain_config, "model.anchors.first=[1,2]") == (
        "--set: model.anchors.first: model.anchors is a list; expected an index in 0..8")
    assert set_error(plain_config, "loss.xy.a=1") == (
        "--set: loss.xy.a: unknown key; loss.xy is a str value, not a section or a list")
    assert set_error(plain_config, "train.steps=[0.5,") == (
        "--set: train.steps: cannot parse the value '[0.5,' as YAML: "
        "expected the node content, but found '<stream end>'")


def test_wrong_types(tmp_path: Path, plain_config: Path) -> None:
    config = write(tmp_path / "x.yaml", "train: {epochs: ten}\n")
    assert load_error(config) == f"train.epochs: expected int, got str 'ten' (set in {config})"
    assert set_error(plain_config, "train.epochs=true") == "train.epochs: expected int, got bool True (set by --set)"
    assert set_error(plain_config, "train.epochs=10.0") == "train.epochs: expected int, got float 10.0 (set by --set)"
    assert set_error(plain_config, "train.ema=1") == "train.ema: expected bool, got int 1 (set by --set)"
    assert set_error(plain_config, "train.lr=.nan") == "train.lr: expected a finite float, got float nan (set by --set)"
    assert set_error(plain_config, "name=123") == (
        "name: expected str, got int 123; quote it to make it a string (set by --set)")
    assert set_error(plain_config, "model.anchors.0=[12, x]") == (
        "model.anchors.0.1: expected float, got str 'x' (set by --set)")
    assert set_error(plain_config, "train.steps=0.5") == (
        "train.steps: expected list[float], got float 0.5 (set by --set)")
    assert set_error(plain_config, "loss=bce") == (
        "loss: expected a mapping (the LossConfig section), got str 'bce' (set by --set)")


def test_an_int_is_accepted_for_a_float_field(plain_config: Path) -> None:
    cfg = load_config(plain_config, ["loss.ignore_thresh=1"])
    assert cfg.loss.ignore_thresh == 1.0 and isinstance(cfg.loss.ignore_thresh, float)


def test_out_of_range(plain_config: Path) -> None:
    """Bounds from schema metadata: ignore_thresh (0, 1]; epochs >= 1; smooth_l1_beta > 0; label_smoothing [0, 1)."""
    assert set_error(plain_config, "loss.ignore_thresh=1.5") == (
        "loss.ignore_thresh: must be in (0, 1], got 1.5 (set by --set)")
    assert set_error(plain_config, "train.epochs=0") == "train.epochs: must be >= 1, got 0 (set by --set)"
    assert set_error(plain_config, "loss.smooth_l1_beta=0") == "loss.smooth_l1_beta: must be > 0, got 0 (set by --set)"
    assert set_error(plain_config, "loss.label_smoothing=1") == (
        "loss.label_smoothing: must be in [0, 1), got 1 (set by --set)")


def test_invalid_choice_lists_the_allowed_values(tmp_path: Path) -> None:
    config = write(tmp_path / "x.yaml", "loss: {xy: foo}\n")
    assert load_error(config) == f"loss.xy: 'foo' is not one of bce, mse, mse_t, mse_linear, none (set in {config})"


def test_cross_field_checks_name_the_full_dotted_key(tmp_path: Path, plain_config: Path) -> None:
    # focal_alpha's bounds come from its registry entry, with -1 ("no alpha weighting") allowed outside them
    assert set_error(plain_config, "loss.focal_alpha=2") == (
        "loss.focal_alpha: must be in [0, 1] or -1, got 2 (set by --set)")
    assert load_config(plain_config, ["loss.focal_alpha=-1"]).loss.focal_alpha == -1.0
    config = write(tmp_path / "x.yaml", "loss: {box: ciou}\n")
    assert load_error(config) == (
        "loss.box: box=ciou would be added to xy=bce and wh=mse; set loss.xy=none and loss.wh=none "
        "(configs/loss/box_*.yaml does), or loss.box_with_xywh=true if both are intended "
        f"(set in {config})")
    # A check() of a nested section returns a key relative to it ("augment.multiscale").
    assert set_error(plain_config, "data.augment.multiscale=[100]") == (
        "data.augment.multiscale: every size must be a positive multiple of 32 (set by --set)")


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    config = write(tmp_path / "x.yaml", "train: {epochs: 0, lr: fast}\nloss: {xy: foo}\n")
    assert load_error(config).splitlines() == [
        f"loss.xy: 'foo' is not one of bce, mse, mse_t, mse_linear, none (set in {config})",
        f"train.epochs: must be >= 1, got 0 (set in {config})",
        f"train.lr: expected float, got str 'fast' (set in {config})",
    ]


def test_missing_base_names_the_including_file_and_the_path(tmp_path: Path) -> None:
    child = write(tmp_path / "sub" / "child.yaml", "_base_: [../nope.yaml]\n")
    assert load_error(child) == f"{child}: _base_: cannot find '../nope.yaml' (looked for {tmp_path / 'nope.yaml'})"


def test_missing_top_level_file(tmp_path: Path) -> None:
    assert load_error(tmp_path / "absent.yaml") == f"{tmp_path / 'absent.yaml'}: file not found"


def test_inheritance_cycle_is_listed(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, "_base_: b.yaml\n")
    write(b, "_base_: a.yaml\n")
    assert load_error(a) == f"{b}: _base_: inheritance cycle: {a} -> {b} -> {a}"
    write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    assert load_error(tmp_path / "self.yaml").endswith(f"inheritance cycle: {tmp_path / 'self.yaml'} -> "
                                                       f"{tmp_path / 'self.yaml'}")


def test_a_diamond_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "train: {epochs: 2}\n")
    write(tmp_path / "left.yaml", "_base_: root.yaml\n")
    write(tmp_path / "right.yaml", "_base_: root.yaml\n")
    child = write(tmp_path / "child.yaml", "_base_: [left.yaml, right.yaml]\n")
    assert load_config(child).train.epochs == 2


def test_bad_base_entry(tmp_path: Path) -> None:
    config = write(tmp_path / "x.yaml", "_base_: 3\n")
    assert load_error(config) == f"{config}: _base_: expected a path or a list of paths, got int 3"


def test_python_tag_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path / "x.yaml", "name: !!python/object/apply:os.system ['echo pwned']\n")
    assert load_error(config) == (
        f"{config}: line 1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'; configs are plain YAML read with yaml.safe_load, "
        "which refuses Python and custom tags")


def test_top_level_must_be_a_mapping_and_yaml_must_parse(tmp_path: Path) -> None:
    config = write(tmp_path / "list.yaml", "- loss\n- train\n")
    assert load_error(config) == (
        f"{config}: the top level must be a mapping of sections (model, data, loss, train, eval, name), got list")
    broken = write(tmp_path / "broken.yaml", "loss: {xy: mse\n")
    assert load_error(broken).startswith(f"{broken}: invalid YAML: line 2: ")
    int_key = write(tmp_path / "int_key.yaml", "loss: {1: mse}\n")
    assert load_error(int_key) == f"{int_key}: loss.1: keys must be strings, got int 1"


def test_config_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"epochs": "ten"}}, source="runs/a/last.pt")
    assert str(info.value) == "train.epochs: expected int, got str 'ten' (set in runs/a/last.pt)"
    assert info.value.key == "train.epochs"


# ---------------------------------------------------------------------------------------------
# Dumps, hashes, round trips
# ---------------------------------------------------------------------------------------------

def test_round_trips(tmp_path: Path) -> None:
    """dict -> config, YAML text -> config and the dumped file -> load_config all give back an equal config."""
    config = write(tmp_path / "x.yaml", "loss: {xy: mse, weights: {cls: 0.5}}\ndata: {root: d}\nname: rt\n")
    cfg = load_config(config, ["model.anchors.0=[12,16]"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    dumped = write(tmp_path / "elsewhere" / "config.yaml", dump_config(cfg))
    assert load_config(dumped) == cfg  # data.root was written absolute, so the new folder does not matter


def test_config_to_dict_is_plain_and_in_schema_order(plain_config: Path) -> None:
    plain = config_to_dict(load_config(plain_config))
    assert list(plain) == ["model", "data", "loss", "train", "eval", "name"]
    assert plain["model"]["anchors"][0] == [10.0, 13.0] and isinstance(plain["model"]["anchors"][0][0], float)
    assert plain["loss"]["weights"] == {"xy": 1.0, "wh": 1.0, "box": 1.0, "obj_pos": 1.0, "obj_neg": 1.0, "cls": 1.0}


def test_hash_is_stable_and_changes_with_any_value(plain_config: Path) -> None:
    cfg = load_config(plain_config)
    digest = config_hash(cfg)
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert digest == config_hash(load_config(plain_config))
    assert digest == config_hash(config_from_dict(config_to_dict(cfg)))
    # Config() has int anchors from the schema literal; they must hash like the loaded floats.
    assert config_hash(dataclasses.replace(cfg, model=Config().model)) == digest
    assert config_hash(load_config(plain_config, ["loss.ignore_thresh=0.69"])) != digest
    assert config_hash(load_config(plain_config, ["model.anchors.0.0=11"])) != digest


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def test_cli_arguments(plain_config: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(plain_config), "--set", "train.epochs=2", "loss.xy=mse",
                              "--set", "train.epochs=4"])
    assert args.overrides == ["train.epochs=2", "loss.xy=mse", "train.epochs=4"]
    assert args.print_config is False
    cfg = config_from_args(args)
    assert (cfg.train.epochs, cfg.loss.xy) == (4, "mse")
    assert parser.parse_args(["--config", "x.yaml"]).overrides == []


SCRIPT = """\
import argparse
from yolo_loss.config.load import add_config_arguments, config_from_args, exit_on_config_error


def main():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args()
    with exit_on_config_error():
        cfg = config_from_args(args)
    print(cfg.train.epochs)
"""


def test_exit_on_config_error_prints_one_line_and_exits_2(tmp_path: Path, run_script: RunScript) -> None:
    script = write(tmp_path / "script.py", SCRIPT)
    bad = write(tmp_path / "bad.yaml", "train: {epohcs: 3}\n")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_script(script, *argv, cwd=tmp_path)

    failed = run("--config", str(bad))  # run in tmp_path: the file is shown relative to it
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert failed.stderr == (f"error: {bad.name}: train.epohcs: unknown key; did you mean 'train.epochs'? "
                             f"(valid keys: {TRAIN_KEYS})\n")
    fixed = run("--config", str(bad), "--set", "train={epochs: 3}")
    assert fixed.returncode == 2  # the typo is still in the file; --set adds, it does not remove keys
    ok = run("--config", str(write(tmp_path / "ok.yaml", "train: {epochs: 3}\n")), "--set", "train.epochs=4")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "4\n", "")


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")
                                        if "ablations" not in p.parts), ids=str)
def test_every_shipped_config_loads(path):
    """Every config the project ships is valid against the schema (a typo in a recipe fails here, not on a GPU)."""
    cfg = load_config(REPO / path)
    assert cfg.data.img_size % 32 == 0


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs" / "ablations").glob("*.yaml")))
def test_every_shipped_study_expands(path):
    """Every study file expands, each of its runs' configs built and checked."""
    from yolo_loss.studies.study import load_study

    study = load_study(REPO / "configs" / "ablations" / path)
    assert study.seeds and study.axes


def test_print_config_shows_the_later_recipes(run_script: RunScript) -> None:
    """train.py --print-config on a preset and on single later components: the resolved keys as YAML, exit 0."""
    for args in (["--config", "configs/presets/yolov5.yaml"],
                 ["--config", "configs/shapes_nano.yaml", "--set", "loss.xy=none", "loss.wh=none", "loss.box=wiou",
                  "loss.obj=varifocal", "loss.obj_target=iou", "loss.cls=qfl", "loss.cls_target=iou",
                  "model.scale_x_y=[1.2,1.1,1.05]"]):
        done = run_script("train.py", *args, "--print-config")
        assert done.returncode == 0, done.stderr
        printed = yaml.safe_load(done.stdout)
        if "yolov5" in args[1]:
            assert printed["model"]["decode"] == "yolov5" and printed["loss"]["neighbour_cells"] is True
            assert printed["loss"]["collisions"] == "keep" and printed["loss"]["obj_weights_img_size"] == 640
        else:
            assert (printed["loss"]["box"], printed["loss"]["obj"], printed["loss"]["cls"]) == ("wiou", "varifocal",
                                                                                              "qfl")
            assert printed["model"]["scale_x_y"] == [1.2, 1.1, 1.05] and printed["loss"]["wiou_momentum"] == 0.01


def test_config_changes_leaves_out_keys_added_since_at_their_defaults() -> None:
    """config_changes(saved, cfg): a changed value is a change; a key the saved config lacks is one unless cfg holds
    it at its default (added since); a key only the saved config has (removed since) is one."""
    from yolo_loss.config.load import config_changes

    cfg = Config()
    saved = config_to_dict(cfg)
    assert config_changes(saved, cfg) == []
    del saved["loss"]["assign"]  # written before loss.assign existed
    assert config_changes(saved, cfg) == []
    cfg.loss.assign = "tal"
    assert config_changes(saved, cfg) == ["loss.assign"]
    saved["loss"]["retired_key"] = 1.0
    cfg.train.lr = 0.5
    assert config_changes(saved, cfg) == ["loss.assign", "loss.retired_key", "train.lr"]
