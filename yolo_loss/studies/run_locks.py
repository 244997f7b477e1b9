"""Run locks: which launcher trains which run of a study, on one machine or on several sharing the study folder.

Not the published claims of ``docs/claims.yaml`` (:mod:`yolo_loss.studies.findings`): a launcher's lock on a run is
called its *claim* on it, and the lock file keeps the ``.claim`` suffix.

A launcher claims a run before it starts it by creating its claim file (``<run folder>.claim``, beside the
folder, so that setting the folder aside never moves it) with an exclusive create
(``O_CREAT | O_EXCL``, atomic on local file systems and on NFS v3 and later), holding the host, the launcher's pid,
the pid of the ``train.py`` it starts, the launcher's id and the start time. While the run trains, the launcher
touches the file every :data:`HEARTBEAT_SECONDS` (its modification time is the heartbeat). When the run ends the
launcher removes the file. Another launcher finds the file and leaves the run alone, unless its owner is dead:

- on the same host: neither the launcher's pid nor the run's pid is alive;
- on another host: the heartbeat is older than the claim timeout (``--claim-timeout``, default
  :data:`CLAIM_TIMEOUT_SECONDS`), since a pid on another machine cannot be asked.

A dead owner's claim is taken over under a short exclusive ``<claim>.takeover`` lock: the taker reads the claim
again under the lock and replaces it only if it is still the one it judged dead, so two launchers never both take
one run. The run is then resumed from its ``last.pt`` (the runner's usual rule for an interrupted run).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TAKEOVER_SUFFIX = ".takeover"
HEARTBEAT_SECONDS = 30.0
CLAIM_TIMEOUT_SECONDS = 600.0  # another host's claim whose heartbeat is older than this is dead
TAKEOVER_TIMEOUT_SECONDS = 60.0  # a takeover lock older than this was left by a taker that died
LAUNCHER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claim:
    """The content of a claim file. ``run_pid`` is 0 until the launcher has started the run's process."""

    host: str
    pid: int
    launcher: str
    started: float
    run_pid: int = 0

    @property
    def started_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def read_claim(path: Path) -> tuple[Claim, float] | None:
    """The claim in a claim file and its heartbeat (modification time), or None when there is none (or it was
    being replaced and could not be read whole)."""
    path = Path(path)
    try:
        heartbeat = path.stat().st_mtime
        data = json.loads(path.read_text())
        return Claim(**data), heartbeat
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def owner_alive(claim: Claim, heartbeat: float, *, timeout: float = CLAIM_TIMEOUT_SECONDS,
                now: float | None = None) -> bool:
    """Whether the owner of a claim may still be training: its launcher or its run alive on this host; a
    heartbeat newer than ``timeout`` seconds on another."""
    if claim.host == socket.gethostname():
        return _pid_alive(claim.pid) or _pid_alive(claim.run_pid)
    return (now if now is not None else time.time()) - heartbeat < timeout


def _write_new(path: Path, claim: Claim) -> bool:
    """Create ``path`` holding ``claim`` if it does not exist (exclusive create); False if it does."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as stream:
        json.dump(asdict(claim), stream)
        stream.flush()
        os.fsync(stream.fileno())
    return True


def _replace(path: Path, claim: Claim) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(json.dumps(asdict(claim)))
    os.replace(temporary, path)


@contextlib.contextmanager
def _takeover_lock(path: Path):
    """Hold ``<claim>.takeover`` (exclusive create) for the block; yields False when another launcher holds a
    fresh one. A takeover lock older than :data:`TAKEOVER_TIMEOUT_SECONDS` is removed first."""
    lock = path.with_name(path.name + TAKEOVER_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        if time.time() - lock.stat().st_mtime > TAKEOVER_TIMEOUT_SECONDS:
            lock.unlink()
    try:
        os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def try_claim(path: Path, *, timeout: float = CLAIM_TIMEOUT_SECONDS) -> tuple[Claim | None, Claim | None]:
    """Claim a run for this launcher by its claim file ``path``.

    Returns:
        ``(mine, previous)``: ``mine`` is this launcher's claim when it got the run (``previous`` the dead owner's
        claim it took over, or None), or None when a live owner holds it (``previous`` is then that claim).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = Claim(socket.gethostname(), os.getpid(), LAUNCHER_ID, time.time())
    if _write_new(path, mine):
        return mine, None
    current = read_claim(path)
    if current is None:  # removed (or being replaced) between the two calls: try once more
        return (mine, None) if _write_new(path, mine) else (None, None)
    claim, heartbeat = current
    if owner_alive(claim, heartbeat, timeout=timeout):
        return None, claim
    with _takeover_lock(path) as locked:
        if not locked:
            return None, claim
        again = read_claim(path)
        if again is not None and again[0] != claim:  # someone took it over first
            return None, again[0]
        _replace(path, mine)
    return mine, claim


def update_claim(path: Path, claim: Claim, **changes: Any) -> Claim:
    """Rewrite this launcher's claim with ``changes`` (e.g. the run's pid); the file's time is the heartbeat."""
    updated = Claim(**{**asdict(claim), **changes})
    _replace(Path(path), updated)
    return updated


def heartbeat(path: Path) -> None:
    """Touch the claim file: its modification time tells other hosts its owner lives."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def release(path: Path, claim: Claim) -> None:
    """Remove the claim file if it is still this launcher's (a taken-over claim is left to its new owner)."""
    current = read_claim(path)
    if current is not None and current[0].launcher == claim.launcher:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
