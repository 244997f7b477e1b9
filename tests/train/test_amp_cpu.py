"""``train.amp`` on the CPU: bfloat16 autocast around the model alone; the loss (its ignore rule included), the
decode of the logged statistics and the evaluation in float32; the precision in ``metrics.json``; a short bfloat16
training lowers the loss; a bfloat16 run stopped mid-epoch and resumed ends bitwise where the straight run ends.

The trainings are those of ``test_engine.py``: the smallest model at 64 px on 32 synthetic images.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from test_engine import scalar_series, tiny_config

from yolo_loss.checkpoint import load_checkpoint
from yolo_loss.data import build_dataset, build_loader
from yolo_loss.head import build_head
from yolo_loss.losses.criterion import build_criterion
from yolo_loss.model import build_model
from yolo_loss.tensorboard.log import RunLogger, read_scalars
from yolo_loss.train import engine
from yolo_loss.train.engine import METRIC_KEYS, amp_dtype, evaluate, memory_format, precision_name, train

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def autocast_now() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")


class Probe:
    """Records, for every call during a training: the autocast state and the dtypes of the model's forward (its head
    outputs; training and evaluation apart), of the criterion's inputs, of the boxes its ignore rule compares and of
    the predictions the logger decodes for its statistics."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.model_train: list[tuple[bool, torch.dtype, set[torch.dtype]]] = []
        self.model_eval: list[tuple[bool, torch.dtype, set[torch.dtype]]] = []
        self.criterion: list[tuple[bool, set[torch.dtype], bool]] = []  # (autocast on, preds' dtypes, training)
        self.ignore: list[tuple[bool, torch.dtype, torch.dtype]] = []  # (autocast on, boxes, truths)
        self.logged: list[tuple[bool, set[torch.dtype]]] = []
        real_build, probe = engine.build_trainer, self

        def build_trainer(cfg, run_dir, *, resume):
            trainer = real_build(cfg, run_dir, resume=resume)
            trainer.model.register_forward_hook(probe._model_hook)

            class RecordingCriterion(type(trainer.criterion)):
                def __call__(self, preds, *args, **kwargs):
                    probe.criterion.append((torch.is_autocast_enabled("cpu"), {p.dtype for p in preds},
                                            kwargs.get("update_state", True)))
                    return super().__call__(preds, *args, **kwargs)

            trainer.criterion.__class__ = RecordingCriterion
            return trainer

        from yolo_loss.losses import criterion as criterion_module
        real_ignore = criterion_module.ignore_mask

        def ignore_mask(boxes, truths, *args, **kwargs):
            probe.ignore.append((torch.is_autocast_enabled("cpu"), boxes.dtype, truths.dtype))
            return real_ignore(boxes, truths, *args, **kwargs)

        real_after_step = RunLogger.after_step

        def after_step(logger, step, result, preds, *args, **kwargs):
            probe.logged.append((torch.is_autocast_enabled("cpu"), {p.dtype for p in preds}))
            return real_after_step(logger, step, result, preds, *args, **kwargs)

        monkeypatch.setattr(engine, "build_trainer", build_trainer)
        monkeypatch.setattr(criterion_module, "ignore_mask", ignore_mask)
        monkeypatch.setattr(RunLogger, "after_step", after_step)

    def _model_hook(self, module: torch.nn.Module, inputs, outputs) -> None:
        (self.model_train if module.training else self.model_eval).append(
            (*autocast_now(), {output.dtype for output in outputs}))


def test_the_probe_sees_autocast_around_a_loss() -> None:
    """The control: were the loss called inside the model's autocast region (and on its bfloat16 outputs), the
    records that the training test below checks would say so."""
    enabled, dtype = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enabled.append(torch.is_autocast_enabled("cpu"))
        dtype.append(torch.get_autocast_dtype("cpu"))
        conv_out = torch.nn.Conv2d(3, 4, 1)(torch.rand(1, 3, 4, 4))
    assert enabled == [True] and dtype == [torch.bfloat16] and conv_out.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_amp_on_the_cpu_autocasts_the_model_alone(shapes_root: Path, tmp_path: Path, monkeypatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(shapes_root, tmp_path, max_steps=2, epochs=1, amp=True)
    assert amp_dtype(cfg, CPU) == torch.bfloat16 and amp_dtype(cfg, torch.device("cuda")) == torch.float16
    probe = Probe(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(cfg, run_dir)
    assert result.steps == 2
    assert ("precision: bfloat16 autocast around the model (CPU); loss and evaluation in float32"
            in capsys.readouterr().out)

    # the model's forward in training: under autocast bfloat16, its head outputs bfloat16
    assert probe.model_train == [(True, torch.bfloat16, {torch.bfloat16})] * 2
    # the loss: autocast off, float32 predictions; in training (update_state) and in the evaluation's losses
    training_calls = [call for call in probe.criterion if call[2]]
    assert training_calls == [(False, {torch.float32}, True)] * 2
    assert probe.criterion and all(call[:2] == (False, {torch.float32}) for call in probe.criterion)
    # the ignore rule (darknet's: decoded boxes against the truths) in float32, autocast off
    assert probe.ignore and all(call == (False, torch.float32, torch.float32) for call in probe.ignore)
    # the decode of the logged statistics (after the step): float32 predictions, autocast off
    assert probe.logged == [(False, {torch.float32})] * 2
    # the evaluation: autocast off, float32 outputs
    assert probe.model_eval and all(call[0] is False and call[2] == {torch.float32} for call in probe.model_eval)
    # the weights stay float32 (autocast casts per operation), and the checkpoint holds no loss scaler state
    state = load_checkpoint(run_dir / "last.pt")
    assert all(value.dtype == torch.float32 for value in state["model"].values() if value.is_floating_point())
    assert state["scaler"] == {}
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["precision"] == "bfloat16" and summary["threads"] == torch.get_num_threads()


def test_bfloat16_on_a_cpu_without_its_instructions_warns(tmp_path: Path) -> None:
    """Without avx512_bf16 or amx_bf16, bfloat16 is emulated: 4.6 against 48.2 images/s of float32 on a 2-core
    AVX2 AMD EPYC (bench_train.py). The run trains as configured, with a warning that says so and what to set."""
    amp, off = tiny_config(tmp_path, tmp_path, amp=True), tiny_config(tmp_path, tmp_path)
    avx2, bf16 = tmp_path / "avx2", tmp_path / "bf16"
    avx2.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2\n")
    bf16.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n")
    first, warning = engine.precision_line(amp, CPU, cpuinfo=avx2).split("\n")
    assert first == "precision: bfloat16 autocast around the model (CPU); loss and evaluation in float32"
    assert warning.startswith("warning: train.amp=true on a CPU without bfloat16 instructions")
    assert "train.amp=false trains in float32" in warning
    assert engine.precision_line(amp, CPU, cpuinfo=bf16) == first
    assert engine.precision_line(amp, CPU, cpuinfo=tmp_path / "absent") == first  # not known: no warning
    assert engine.precision_line(off, CPU, cpuinfo=avx2) == "precision: float32 (train.amp off)"
    assert "warning" not in engine.precision_line(amp, torch.device("cuda"), cpuinfo=avx2)  # float16 there


def test_amp_off_trains_in_float32_throughout(shapes_root: Path, tmp_path: Path, monkeypatch,
                                              capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(shapes_root, tmp_path, max_steps=2, epochs=1)
    assert amp_dtype(cfg, CPU) is None and amp_dtype(cfg, torch.device("cuda")) is None
    assert precision_name(None) == "float32" and precision_name(torch.float16) == "float16"
    probe = Probe(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(cfg, run_dir)
    assert "precision: float32 (train.amp off)" in capsys.readouterr().out
    assert [(enabled, dtypes) for enabled, _, dtypes in probe.model_train] == [(False, {torch.float32})] * 2
    assert [call[:2] for call in probe.criterion if call[2]] == [(False, {torch.float32})] * 2
    assert json.loads((run_dir / "metrics.json").read_text())["precision"] == "float32"


def test_evaluation_is_float32_inside_an_autocast_region(shapes_root: Path, tmp_path: Path) -> None:
    """evaluate() turns autocast off around the model: called inside a bfloat16 region it scores float32 outputs,
    the same detections and losses as outside it."""
    cfg = tiny_config(shapes_root, tmp_path)
    dataset = build_dataset(cfg.data, "val", train=False)
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, workers=0, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.num_classes).to(memory_format=memory_format(cfg))
    seen = []
    model.register_forward_hook(lambda module, inputs, outputs: seen.append(
        (torch.is_autocast_enabled("cpu"), {o.dtype for o in outputs})))
    head = build_head(cfg, dataset.num_classes)
    criterion = build_criterion(cfg.loss, head, img_size=cfg.data.img_size)
    plain = evaluate(model, loader, head, criterion, cfg, CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate(model, loader, head, criterion, cfg, CPU)
        assert torch.is_autocast_enabled("cpu")  # restored after the evaluation
    assert seen and all(call == (False, {torch.float32}) for call in seen)
    assert inside[0] == plain[0] and inside[1] == plain[1]
    assert inside[2].results() == plain[2].results()


def test_short_bfloat16_training_lowers_the_loss(shapes_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shapes_root, tmp_path, amp=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(cfg, run_dir)
    assert result.steps == 40  # 32 images, batch 8, 10 epochs
    losses = scalar_series(run_dir, "loss/total")
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"bfloat16: loss {first:.2f} -> {last:.2f}"
    for term in ("cls", "obj_pos"):
        series = scalar_series(run_dir, f"loss/{term}/sum")
        assert sum(series[-5:]) < sum(series[:5]), term
    assert all(0.0 <= result.metrics[key] <= 1.0 for key in METRIC_KEYS)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["precision"] == "bfloat16" and saved["steps"] == 40 and saved["nonfinite_skipped"] == 0


def test_bfloat16_resume_is_bitwise_identical(shapes_root: Path, tmp_path: Path, monkeypatch) -> None:
    """As tests/test_reliability.py's float32 resume, in bfloat16 and in process: a run stopped by SIGINT in the
    middle of its second epoch (``last.pt`` saved mid-epoch) and resumed ends with the weights, EMA, logged losses
    and validation curve of the run that was not stopped."""
    steps_per_epoch, epochs, stop_at = 4, 3, 6

    def config(out: Path):
        return tiny_config(shapes_root, out, amp=True, epochs=epochs, ema=True, eval_points=epochs,
                           deterministic=True)

    straight = tmp_path / "straight"
    straight.mkdir()
    train(config(tmp_path), straight)

    real_step, stopped_once = engine.train_step, []

    def train_step(trainer, state, *args):
        out = real_step(trainer, state, *args)
        if state.step == stop_at and not stopped_once:
            stopped_once.append(state.step)
            signal.raise_signal(signal.SIGINT)  # the handler of train(): finish this step, save, return
        return out

    monkeypatch.setattr(engine, "train_step", train_step)
    run = tmp_path / "run"
    run.mkdir()
    result = train(config(tmp_path), run)
    assert result.stopped and result.steps == stop_at
    saved = load_checkpoint(run / "last.pt")
    assert saved["step"] == stop_at and saved["epoch"] == 1 and saved["epoch_progress"]["batches"] == 2
    result = train(config(tmp_path), run, resume=run / "last.pt")
    assert not result.stopped and result.steps == steps_per_epoch * epochs

    final, expected = load_checkpoint(run / "last.pt"), load_checkpoint(straight / "last.pt")
    assert final["step"] == expected["step"] == steps_per_epoch * epochs
    for key in ("model", "ema"):
        a = final[key] if key == "model" else final[key]["module"]
        b = expected[key] if key == "model" else expected[key]["module"]
        mismatched = [name for name in b if not torch.equal(a[name], b[name])]
        assert not mismatched, f"{key}: {mismatched[:5]}"
    for split, tag in (("train", "loss/total"), ("train", "optim/lr"), ("val", "loss/total")):
        logged = read_scalars(run, split, tag)
        assert logged[0] and logged == read_scalars(straight, split, tag), (split, tag)
    resumed, reference = (json.loads((r / "metrics.json").read_text()) for r in (run, straight))
    assert resumed["precision"] == reference["precision"] == "bfloat16"
    assert resumed["metrics"] == reference["metrics"] and resumed["final_terms"] == reference["final_terms"]
    assert resumed["evaluations"] == reference["evaluations"] and len(resumed["evaluations"]) == epochs
