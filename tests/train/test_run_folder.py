"""The run folder's contract (yolo_loss/train/run_folder.py): metrics.json and status.json written and read back as
typed records, old files still read, bad ones named; train.py's failed status carries the reason and exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolo_loss.config.load import ConfigError
from yolo_loss.train.run_folder import (FAILED, FINISHED, STOPPED, RunFolderError, RunMetrics, RunStatus,
                                   failure_status, finished)


def test_metrics_round_trip_and_files_written_before_a_field_existed(tmp_path: Path) -> None:
    written = RunMetrics(metrics={"AP": 0.25, "AP50": 0.5}, steps=40, final_terms={"xy": 1.5, "total": 1.5},
                         precision="bfloat16", threads=2, evaluations=[{"step": 40, "epoch": 2.0, "AP": 0.25}])
    assert not finished(tmp_path)
    written.write(tmp_path)
    assert finished(tmp_path) and RunMetrics.read(tmp_path) == written
    assert not list(tmp_path.glob("*.tmp"))  # written through a rename
    # a metrics.json from before precision and threads were recorded: float32, threads unknown; unknown keys ignored
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"AP": 0.1}, "steps": 5, "later_key": 1}))
    old = RunMetrics.read(tmp_path)
    assert (old.precision, old.threads, old.final_terms, old.evaluations) == ("float32", None, {}, [])


@pytest.mark.parametrize("text, named", [("{not json", "cannot be read"), ('{"metrics": {}}', "no steps"),
                                         ("[1, 2]", "not a JSON object")])
def test_a_bad_metrics_file_is_named(tmp_path: Path, text: str, named: str) -> None:
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(RunFolderError, match=named) as error:
        RunMetrics.read(tmp_path)
    assert str(tmp_path / "metrics.json") in str(error.value)


def test_status_round_trip_and_what_it_says(tmp_path: Path) -> None:
    assert RunStatus.read(tmp_path) is None  # never started, or trained before status.json existed
    stopped = RunStatus(STOPPED, 7)
    stopped.write(tmp_path)
    assert RunStatus.read(tmp_path) == stopped
    assert stopped.describe(tmp_path) == f"stopped at step 7; resume with --resume {tmp_path / 'last.pt'}"
    assert RunStatus(FAILED, 3, "DataError: broken.jpg", 2).describe() == \
        "failed at step 3 (exit status 2): DataError: broken.jpg"
    assert RunStatus(FINISHED, 9).describe() == "finished at step 9"
    with pytest.raises(ValueError, match="one of running, finished, stopped, failed"):
        RunStatus("paused")
    (tmp_path / "status.json").write_text('{"state": "paused", "step": 1}')
    with pytest.raises(RunFolderError, match="status.json: not a run status"):
        RunStatus.read(tmp_path)


def test_the_failed_status_keeps_the_original_error_and_the_last_saved_step(tmp_path: Path) -> None:
    RunStatus("running", 12).write(tmp_path)  # what the last checkpoint wrote
    try:
        try:
            raise ConfigError("data.root: no such folder /nowhere")
        except ConfigError:
            raise SystemExit(2) from None  # what exit_on_config_error does
    except SystemExit as error:
        status = failure_status(error, tmp_path)
    assert status == RunStatus(FAILED, 12, "ConfigError: data.root: no such folder /nowhere", 2)
    assert failure_status(RuntimeError("out of memory\nmore lines"), tmp_path / "none") == \
        RunStatus(FAILED, 0, "RuntimeError: out of memory", 1)
    assert failure_status(KeyboardInterrupt(), tmp_path).exit_status == 130
    assert failure_status(SystemExit(3), tmp_path).reason == "exit status 3"
