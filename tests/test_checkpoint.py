"""Tests for yolo_loss.checkpoint: atomic saves, refusal of code-carrying pickles, corrupt files, NaN weights."""

from __future__ import annotations

import os
import pickle
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_loss.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, state_has_nonfinite


class ShellPayload:
    """Unpickling this calls ``os.system(command)``: the shape of a malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class FailsToPickle:
    """Raises while ``torch.save`` is writing, after part of the file is on disk."""

    def __reduce__(self):
        raise OSError("simulated disk failure during the write")


def good_state(value: float) -> dict:
    return {"model": {"conv.weight": torch.full((2, 3), value), "bn.num_batches_tracked": torch.tensor(7)},
            "step": 12, "best_ap": 0.25, "config": {"train": {"lr": 0.01, "steps": [0.8, 0.9]}}, "ema": None}


def test_save_load_round_trip_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "run" / "nonfinite" / "step3.pt"
    save_checkpoint(good_state(1.5), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["conv.weight"], torch.full((2, 3), 1.5))
    assert loaded["model"]["bn.num_batches_tracked"].item() == 7
    assert loaded["step"] == 12 and loaded["best_ap"] == 0.25 and loaded["ema"] is None
    assert loaded["config"] == {"train": {"lr": 0.01, "steps": [0.8, 0.9]}}
    assert sorted(os.listdir(path.parent)) == ["step3.pt"]


def test_failed_replace_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing the new file and renaming it over the old one (os.replace raises) leaves the
    previous checkpoint loadable and no temporary file behind."""
    path = tmp_path / "last.pt"
    save_checkpoint(good_state(1.0), path)

    def failing_replace(src, dst):
        assert Path(src).parent == path.parent  # same folder, so the real rename would be atomic
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match=f"cannot write {path}: simulated crash before the rename; the previous "
                                              "last.pt there, if any, is untouched"):
        save_checkpoint(good_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["conv.weight"], torch.full((2, 3), 1.0))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_failure_while_writing_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(good_state(1.0), path)
    broken = good_state(2.0) | {"extra": FailsToPickle()}
    with pytest.raises(OSError, match="simulated disk failure"):
        save_checkpoint(broken, path)
    assert torch.equal(load_checkpoint(path)["model"]["conv.weight"], torch.full((2, 3), 1.0))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_save_fsyncs_the_file_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the folder fsync the rename may be lost on a power cut; without the file fsync the renamed file
    may be empty."""
    synced_kinds: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced_kinds.append("folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_checkpoint(good_state(1.0), tmp_path / "last.pt")
    assert synced_kinds == ["file", "folder"]


def test_save_refuses_a_state_that_could_not_be_loaded(tmp_path: Path) -> None:
    """A NumPy scalar (pycocotools returns them) pickles as a NumPy global that weights_only loading refuses:
    saving must fail now, not the resume later, and keep the previous file."""
    path = tmp_path / "best.pt"
    save_checkpoint(good_state(1.0), path)
    with pytest.raises(CheckpointError, match=r"not saving .*best\.pt.*numpy"):
        save_checkpoint(good_state(2.0) | {"best_ap": np.float64(0.5)}, path)
    assert load_checkpoint(path)["best_ap"] == 0.25
    assert os.listdir(tmp_path) == ["best.pt"]


# A bare pickle at protocol 2: torch's weights-only unpickler reads the GLOBAL opcode rather than stopping at
# protocol 4's FRAME opcode first, so the refusal is the one for the code-running callable.
@pytest.mark.parametrize("writer", ["torch.save", "bare pickle"])
def test_code_carrying_pickle_is_refused_and_not_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    payload = ShellPayload(f"touch {shlex.quote(str(marker))}")
    if writer == "torch.save":
        torch.save({"model": {"w": torch.ones(2)}, "extra": payload}, path)
    else:  # no tensor: a bare-pickled tensor would be refused first, for its own unsafe global
        path.write_bytes(pickle.dumps({"step": 3, "extra": payload}, protocol=2))

    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert str(path) in message
    assert "not plain tensors/containers" in message
    assert "system" in message  # names the refused callable (posix.system / nt.system)
    assert not marker.exists()

    # The payload is live: a plain (unsafe) load does run it, so the refusal above is what protected us.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_file_is_named(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(good_state(1.0), path)
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"",
               "garbage": bytes(range(256)) * 4}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=r"cannot load .*last\.pt"):
        load_checkpoint(path)


def test_a_file_without_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        load_checkpoint(path)


def test_state_has_nonfinite_names_float_tensors_with_nan_or_inf() -> None:
    state_dict = {
        "ok.weight": torch.ones(3),
        "nan.weight": torch.tensor([1.0, float("nan")]),
        "inf.bias": torch.tensor([float("-inf")], dtype=torch.float16),
        "bn.num_batches_tracked": torch.tensor(3),  # integer: never non-finite
        "_metadata_like": "not a tensor",
    }
    assert state_has_nonfinite(state_dict) == ["nan.weight", "inf.bias"]
    assert state_has_nonfinite({"ok.weight": torch.ones(3)}) == []


FULL_DISK_SCRIPT = """
import resource, signal, sys
import torch
from yolo_loss.checkpoint import CheckpointError, save_checkpoint
path = sys.argv[1]
save_checkpoint({"weights": torch.arange(10.0)}, path)      # the last good checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)               # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # as a full disk would, part-way
try:
    save_checkpoint({"weights": torch.zeros(1_000_000)}, path)  # 4 MB: cut off after 200 kB
except CheckpointError as error:
    print(error)
"""


def test_a_write_that_fails_part_way_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE) cuts the second save off part-way, as a full disk would: the error names
    the path and the reason, the previous checkpoint still loads, and no temporary file is left."""
    path = tmp_path / "last.pt"
    done = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cannot write {path}: File too large; the previous last.pt there, if any, is " \
                                  "untouched"
    assert torch.equal(load_checkpoint(path)["weights"], torch.arange(10.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
