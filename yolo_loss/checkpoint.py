"""Checkpoints that survive a crash mid-save and cannot run code when loaded.

Saving writes a temporary file beside the target and renames it over the target (``os.replace`` is atomic on
POSIX and Windows), with ``fsync`` on the file and on the folder, so that ``last.pt`` is always either the
previous complete file or the new complete one, also after a power cut. A state that ``weights_only`` loading
would refuse (a NumPy scalar that slipped into it, say) is rejected when saving, not discovered at resume time.

Loading uses ``torch.load(weights_only=True)``: only tensors, plain containers and scalars are unpickled, so a
downloaded or tampered file cannot execute code.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

_TMP_SUFFIX = ".tmp"
# The weights-only unpickler names what it refused as "... GLOBAL module.name ..." in its message.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file."""


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` (creating its folder) for writing and reading; when the block ends
    without an exception, flush it to disk and rename it over ``path``. An exception anywhere leaves the previous
    file at ``path`` untouched and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name unique to this process and call, so concurrent writers never share a temporary file.
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        # os.open with 0o666 leaves the permissions to the umask, as a plain open() would (mkstemp forces 0o600).
        with os.fdopen(os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), "w+b") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())  # the data is on disk before the rename can make it visible
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_folder(path.parent)  # makes the rename itself durable


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (see :func:`atomic_file`).

    Raises:
        CheckpointError: ``state`` holds objects that :func:`load_checkpoint` would refuse (the message lists them),
            or the file cannot be written (a full disk, a file-size limit: the message names the path and says
            that the previous file there is untouched).
    """
    # Serialised in memory first: torch's zip writer turns a failed write into an opaque RuntimeError ("unexpected
    # pos"), while a plain write of the bytes raises the OSError that says what happened (no space, a size limit).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(buffer)
    if unsafe:
        raise CheckpointError(f"not saving {path}: the state holds objects that load_checkpoint would refuse "
                              f"({', '.join(unsafe)}); convert them to tensors or plain Python values")
    try:
        with atomic_file(path) as stream:
            stream.write(buffer.getbuffer())
    except OSError as error:
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}; the previous {Path(path).name} "
                              "there, if any, is untouched") from error


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (POSIX; Windows cannot open a folder and makes renames durable itself)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing; holds objects that are not plain tensors/containers (a pickled
            object that could run code when loaded); is truncated or corrupt; or does not hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists()
                              else f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        refused = _REFUSED_GLOBAL.findall(message)
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: it holds objects that are not plain tensors/containers "
                f"({', '.join(dict.fromkeys(refused))}); loading them could run arbitrary code. Open it with "
                "torch.load(weights_only=False) only if you wrote the file yourself") from error
        raise CheckpointError(f"cannot load {path}: it is corrupt, or holds objects that are not plain "
                              f"tensors/containers ({_reason(message)})") from error
    except torch.OutOfMemoryError:
        raise  # a memory problem, not a file problem
    except Exception as error:  # a damaged file fails anywhere in the zip reader or the unpickler
        raise CheckpointError(f"cannot load {path} (truncated, corrupt or not written by torch.save?): "
                              f"{type(error).__name__}: {_reason(str(error))}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def _reason(message: str) -> str:
    """The informative line of a torch error message: the last non-empty one that is not a pointer to docs."""
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith("Check the documentation")]
    return lines[-1] if lines else "no message"


def state_has_nonfinite(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` holding a NaN or an infinity (integer tensors and
    non-tensor entries cannot, and are skipped). An empty list means the weights are safe to save."""
    return [name for name, value in state_dict.items()
            if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())
            and not bool(torch.isfinite(value).all())]
