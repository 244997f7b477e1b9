"""The ``run_script`` fixture (tests/conftest.py) gives what a new Python process gives: the same exit status, stdout
and stderr for a script that prints and returns, exits with a status, exits with a message or fails on bad
arguments, checked against ``subprocess.run`` on the same small script (it imports nothing heavy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import RunScript

SCRIPT = '''\
import argparse
import sys


def main():
    parser = argparse.ArgumentParser(prog="tiny.py")
    parser.add_argument("how", choices=["ok", "status", "message"])
    args = parser.parse_args()
    print(f"{args.how} from {sys.argv[0].rsplit('/', 1)[-1]}")
    if args.how == "status":
        print("error: a bad input", file=sys.stderr)
        raise SystemExit(2)
    if args.how == "message":
        raise SystemExit("stopped: a reason")


if __name__ == "__main__":
    main()
'''


@pytest.mark.parametrize("argv", [["ok"], ["status"], ["message"], ["nonsense"], []])
def test_run_script_gives_what_a_process_gives(argv: list[str], tmp_path: Path, run_script: RunScript) -> None:
    script = tmp_path / "tiny.py"
    script.write_text(SCRIPT)
    process = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    here = run_script(script, *argv, cwd=tmp_path)
    assert (here.returncode, here.stdout, here.stderr) == (process.returncode, process.stdout, process.stderr)
    assert process.returncode == {"ok": 0, "status": 2, "message": 1}.get(argv[0] if argv else "", 2)
