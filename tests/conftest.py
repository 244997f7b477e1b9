"""Fixtures shared by the tests of every folder."""

from __future__ import annotations

import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RunScript = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def run_script(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> RunScript:
    """Run a command-line script's ``main()`` in this process, as its ``python SCRIPT ARGS`` would run it.

    ``run_script("train.py", "--config", ...)`` gives what ``subprocess.run([python, "train.py", ...], cwd=REPO,
    capture_output=True, text=True)`` gives: the exit status (0, or a ``SystemExit``'s), stdout and stderr. A new
    Python process with the package costs about 7 s on a 2-core machine (importing torch and torchvision, and some
    2 s tearing them down at exit; docs/testing.md), so the tests of what a command prints, writes and exits with
    run it here. What only a real process shows is tested with real ones: starting from another folder and the
    imports of a fresh process (tests/test_structure.py), signals and kill -9 (tests/test_reliability.py), torchrun
    (tests/train/test_distributed.py), the study runner's train.py runs (tests/studies/), and one train.py and
    eval.py end to end (tests/train/test_engine.py).

    ``script`` is relative to the repository (or absolute); ``cwd`` is the working directory (the repository's by
    default). An exception other than ``SystemExit`` propagates: the process would have printed a traceback.
    """
    def run(script: str | Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
        path = REPO / script
        namespace = runpy.run_path(str(path), run_name="run_script")  # all but its `if __name__ == "__main__":`
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            patch.setattr(sys, "argv", [str(path), *args])
            capsys.readouterr()  # what the test printed before is not the script's
            try:
                namespace["main"]()
                status = 0
            except SystemExit as stop:
                status = exit_status(stop)
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess([sys.executable, str(script), *args], status, out, err)

    return run


def exit_status(stop: SystemExit) -> int:
    """The status a process ends with on ``stop``: its code, 0 for None; a message goes to stderr with status 1."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1
