"""Studies shared by several launchers: claims (yolo_loss/studies/run_locks.py), two launchers at once, a local launcher
beside submitit's local executor, a launcher killed mid-run and relaunched, a stale claim taken over. train.py is stood
in for by a small program with its command line and its behaviour (a checkpoint half-way, metrics.json at the end,
SIGTERM -> last.pt and exit 130), so the runner is tested, not the training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from yolo_loss.studies import run_locks
from yolo_loss.studies.runner import claim_path, next_round, run_state, run_study, submit_study
from yolo_loss.studies.study import load_study

REPO = Path(__file__).resolve().parents[2]
SHAPES_NANO = REPO / "configs" / "shapes_nano.yaml"

FAKE_TRAIN = '''#!{python}
"""Stands in for train.py: --run-dir D (new) or --resume D/last.pt; sleeps FAKE_SECONDS with a checkpoint half-way."""
import json, os, signal, sys, time
args = sys.argv[2:]  # argv[1] is train.py's path
folder = args[args.index("--run-dir") + 1] if "--run-dir" in args else os.path.dirname(args[args.index("--resume") + 1])
with open(os.environ["FAKE_STARTS"], "a") as starts:
    starts.write(folder + (" resume" if "--resume" in args else " new") + "\\n")
def stop(signum, frame):
    json.dump({{"state": "stopped", "step": 3}}, open(os.path.join(folder, "status.json"), "w"))
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
seconds = float(os.environ.get("FAKE_SECONDS", "0.5"))
time.sleep(seconds / 2)
open(os.path.join(folder, "last.pt"), "w").write("checkpoint")
time.sleep(seconds / 2)
json.dump({{"metrics": {{"AP": 0.25, "AP50": 0.5, "AP75": 0.2}}, "steps": 6, "final_terms": {{}}}},
          open(os.path.join(folder, "metrics.json"), "w"))
'''

LAUNCHER = '''
import sys
from yolo_loss.studies.runner import run_study
from yolo_loss.studies.study import load_study
run_study(load_study(sys.argv[1]), python=sys.argv[2], heartbeat_seconds=0.2)
'''


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TRAIN.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_STARTS", str(tmp_path / "starts.txt"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return path


def study_file(tmp_path: Path, variants: int = 3, seeds: tuple[int, ...] = (0, 1)) -> Path:
    axis = {f"v{k}": {"train.epochs": k + 1} for k in range(variants)}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": str(SHAPES_NANO), "out": str(tmp_path / "study"), "combine": "grid",
                                    "seeds": list(seeds), "axes": {"v": axis}}, sort_keys=False))
    return path


def starts(tmp_path: Path) -> list[str]:
    path = tmp_path / "starts.txt"
    return path.read_text().splitlines() if path.exists() else []


def assert_complete(tmp_path: Path, study: Path) -> None:
    """Every run finished, none set aside, no claim left behind."""
    runs = load_study(study).runs()
    assert all(run.state() == "finished" for run in runs)
    assert not [p for p in (tmp_path / "study").rglob("*") if ".failed-" in p.name or ".incomplete-" in p.name]
    assert not list((tmp_path / "study").rglob("*.claim"))


def test_two_launchers_train_every_run_once(tmp_path: Path, fake: Path) -> None:
    path = study_file(tmp_path)
    env = {**os.environ, "FAKE_SECONDS": "1.0"}
    launchers = [subprocess.Popen([sys.executable, "-c", LAUNCHER, str(path), str(fake)], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [launcher.communicate(timeout=120)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    started = starts(tmp_path)
    assert len(started) == 6 and len(set(started)) == 6, started  # each of the 6 runs started exactly once
    assert all(line.endswith(" new") for line in started)
    said = [progress_lines(output) for output in outputs]
    assert all(said_about(lines, "not started here") for lines in said), outputs  # both saw the other's claims
    for lines in said:  # a launcher says "starting" only for the runs it starts, never for one held elsewhere
        assert not set(said_about(lines, "starting")) & set(said_about(lines, "not started here")), lines
        assert all(line.startswith(f"{run}: claimed by ") or line.startswith(f"{run}: finished by another launcher")
                   for line in lines for run in said_about([line], "not started here")), lines
    starting = [run for lines in said for run in said_about(lines, "starting")]
    assert len(starting) == 6 and len(set(starting)) == 6, outputs  # one "starting" a run, in all
    assert_complete(tmp_path, path)


def progress_lines(output: str) -> list[str]:
    """The run lines of a launcher's progress (``[counts] run: what``), without the counts."""
    return [line.split("] ", 1)[1] for line in output.splitlines() if line.startswith("[")]


def said_about(lines: list[str], what: str) -> list[str]:
    """The runs whose progress line ends with ``what``."""
    return [line.split(": ", 1)[0] for line in lines if line.endswith(what)]


def test_one_launcher_trains_seed_by_seed(tmp_path: Path, fake: Path) -> None:
    """Every variant at seed 0 before any at seed 1: a study stopped partway has paired seeds for every variant."""
    path = study_file(tmp_path, variants=2, seeds=(3, 1))
    env = {**os.environ, "FAKE_SECONDS": "0.1"}
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(path), str(fake)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "study"
    assert starts(tmp_path) == [f"{folder / variant / seed} new" for seed in ("seed=3", "seed=1")
                                for variant in ("v=v0", "v=v1")]
    assert_complete(tmp_path, path)


def test_a_local_launcher_and_submitit_jobs_share_a_study(tmp_path: Path, fake: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One local launcher (another process) and submitit's local executor (jobs as local processes) at once."""
    import submitit

    path = study_file(tmp_path)
    monkeypatch.setenv("FAKE_SECONDS", "1.0")
    local = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(path), str(fake)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=5)
    jobs = submit_study(load_study(path), executor, python=str(fake))
    results = [job.result() for job in jobs]
    local.communicate(timeout=120)
    assert local.returncode == 0
    assert len(jobs) == 6 and {r["status"] for r in results} <= {"finished", "held"}
    started = starts(tmp_path)
    assert len(started) == 6 and len(set(started)) == 6, started
    assert_complete(tmp_path, path)


def test_a_killed_launcher_is_relaunched_and_the_run_resumed(tmp_path: Path, fake: Path) -> None:
    """SIGKILL of the launcher mid-run: its train.py gets SIGTERM (it dies with its launcher), saves and exits; the
    claim's owner is then dead, so the relaunch takes the run over and resumes it; nothing is trained twice."""
    path = study_file(tmp_path, variants=2, seeds=(0,))
    env = {**os.environ, "FAKE_SECONDS": "4.0"}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(path), str(fake)], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = load_study(path).runs()[0]
    deadline = time.monotonic() + 60
    while not (first.folder / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert claim_path(first).exists() and run_state(first).startswith("running on")
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=10)
    deadline = time.monotonic() + 20  # its train.py stops on the SIGTERM it gets
    while "dead owner" not in run_state(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "claimed by a dead owner" in run_state(first)
    relaunched = subprocess.run([sys.executable, "-c", LAUNCHER, str(path), str(fake)], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=120)
    assert relaunched.returncode == 0, relaunched.stdout + relaunched.stderr
    started = starts(tmp_path)
    assert started == [f"{first.folder} new", f"{first.folder} resume", f"{load_study(path).runs()[1].folder} new"]
    assert_complete(tmp_path, path)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claims_held_and_taken_over(tmp_path: Path, fake: Path) -> None:
    """A live claim (this test's own pid) keeps a launcher off the run; a claim of a dead pid on this host, or of
    another host whose heartbeat is older than the timeout, is taken over; another host's fresh claim is not."""
    path = study_file(tmp_path, variants=1, seeds=(0, 1, 2))
    live, stale, remote = load_study(path).runs()
    for run, claim in ((live, run_locks.Claim(socket.gethostname(), os.getpid(), "someone", time.time())),
                       (stale, run_locks.Claim(socket.gethostname(), dead_pid(), "dead", time.time() - 5))):
        claim_path(run).parent.mkdir(parents=True, exist_ok=True)
        claim_path(run).write_text(json.dumps(asdict(claim)))
    claim_path(remote).write_text(json.dumps(asdict(run_locks.Claim("elsewhere", 1, "remote", time.time()))))
    old = time.time() - 3600
    os.utime(claim_path(remote), (old, old))
    assert run_state(live).startswith("running on") and "dead owner" in run_state(stale)
    assert "dead owner" in run_state(remote, timeout=600) and run_state(remote, timeout=10**5).startswith("running")

    outcomes = {o.run.seed: o.status for o in run_study(load_study(path), python=str(fake), echo=lambda _: None)}
    assert outcomes == {0: "held", 1: "finished", 2: "finished"}
    assert live.state() == "new" and json.loads(claim_path(live).read_text())["launcher"] == "someone"
    assert stale.state() == remote.state() == "finished" and not claim_path(stale).exists()

    fresh = run_locks.Claim("elsewhere", 1, "remote", time.time())
    claim_path(remote).write_text(json.dumps(asdict(fresh)))
    (remote.folder / "metrics.json").unlink()
    assert run_locks.try_claim(claim_path(remote)) == (None, fresh)  # a fresh claim of another host is left alone


def test_one_takeover_at_a_time(tmp_path: Path) -> None:
    """While a takeover lock is held (another launcher is taking the dead claim over), a second taker backs off."""
    path = tmp_path / "seed=0.claim"
    path.write_text(json.dumps(asdict(run_locks.Claim(socket.gethostname(), dead_pid(), "dead", time.time()))))
    path.with_name(path.name + run_locks.TAKEOVER_SUFFIX).touch()
    mine, other = run_locks.try_claim(path)
    assert mine is None and other.launcher == "dead"
    path.with_name(path.name + run_locks.TAKEOVER_SUFFIX).unlink()
    mine, other = run_locks.try_claim(path)
    assert mine is not None and mine.launcher == run_locks.LAUNCHER_ID and other.launcher == "dead"
    run_locks.release(path, mine)
    assert not path.exists()


FAKE_AP_TRAIN = '''#!{python}
"""Stands in for train.py: metrics.json with the AP that FAKE_AP (a JSON file) lists for its train.epochs and seed."""
import json, os, sys
args = sys.argv[2:]
folder = args[args.index("--run-dir") + 1]
sets = dict(item.split("=", 1) for item in args[args.index("--set") + 1:])
with open(os.environ["FAKE_STARTS"], "a") as starts:
    starts.write(folder + "\\n")
ap = json.load(open(os.environ["FAKE_AP"]))[sets["train.epochs"]][sets["train.seed"]]
json.dump({{"metrics": {{"AP": ap, "AP50": 2 * ap, "AP75": ap / 2}}, "steps": 6, "final_terms": {{}}}},
          open(os.path.join(folder, "metrics.json"), "w"))
'''


def fake_ap_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: dict, variants: int,
                  **study: object) -> tuple[Path, Path]:
    """A one-at-a-time study of ``variants`` variants (v<k>: train.epochs k + 1, v0 the baseline) and the stand-in
    whose AP is ``table[epochs][seed]``: ``(the stand-in, the study file)``."""
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_AP_TRAIN.format(python=sys.executable))
    fake.chmod(0o755)
    (tmp_path / "ap.json").write_text(json.dumps(table))
    monkeypatch.setenv("FAKE_AP", str(tmp_path / "ap.json"))
    monkeypatch.setenv("FAKE_STARTS", str(tmp_path / "starts.txt"))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(SHAPES_NANO), "out": str(tmp_path / "study"), "combine": "one_at_a_time",
        "baseline": {"v": "v0"}, **study,
        "axes": {"v": {f"v{k}": {"train.epochs": k + 1} for k in range(variants)}}}, sort_keys=False))
    return fake, path


def test_auto_seeds_add_rounds_until_decided_or_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """seeds: {auto: [0, 1, 2, 3, 4], cap: 7}; the verdict rule over the family of three (Holm) decides. Paired dAP
    by seed: v1 +0.05, +0.055, +0.05, +0.052, +0.048 (better at 5 seeds); v2 +0.02, -0.02, +0.01, -0.015, +0.004,
    -0.01, +0.012 (never decided: to the cap); v3 0.02, 0.01, 0.03, 0.0, 0.025 (raw p 0.034, Holm p 0.069:
    unresolved at 5), then 0.02 at seed 5 (raw p 0.011, Holm p 0.022: better at 6). Rounds: seed 5 for v2, v3 and the
    baseline, then seed 6 for v2 and the baseline; relaunched, a started run that did not finish is trained again
    and nothing else is added."""
    from yolo_loss.studies.report import write_report

    base = [0.30, 0.32, 0.28, 0.31, 0.29, 0.30, 0.31]
    diffs = {1: [0.0] * 7, 2: [0.05, 0.055, 0.05, 0.052, 0.048, 0.0, 0.0],
             3: [0.02, -0.02, 0.01, -0.015, 0.004, -0.01, 0.012], 4: [0.02, 0.01, 0.03, 0.0, 0.025, 0.02, 0.0]}
    table = {str(k): {str(s): base[s] + d[s] for s in range(7)} for k, d in diffs.items()}
    fake, path = fake_ap_study(tmp_path, monkeypatch, table, 4, seeds={"auto": [0, 1, 2, 3, 4], "cap": 7})
    lines: list[str] = []
    run_study(load_study(path), python=str(fake), echo=lines.append)

    folder = tmp_path / "study"
    first = [f"{folder}/v=v{k}/seed={s}" for s in range(5) for k in range(4)]
    rounds = [f"{folder}/v=v{k}/seed=5" for k in (0, 2, 3)] + [f"{folder}/v=v{k}/seed=6" for k in (0, 2)]
    assert starts(tmp_path) == first + rounds
    assert sum("auto seeds: " in line for line in lines) == 2
    study = load_study(path)
    assert study.variant_seeds() == {"v=v0": list(range(7)), "v=v1": list(range(5)), "v=v2": list(range(7)),
                                     "v=v3": list(range(6))}
    write_report(folder)
    results = (folder / "results.md").read_text()
    assert "- v=v1: 5 seeds, decided: better" in results and "- v=v3: 6 seeds, decided: better" in results
    assert "- v=v2: 7 seeds, undecided at the cap of 7" in results and "missing" not in results
    assert "| v=v1 | 5/5 |" in results and "| **v=v0** (baseline) | 7/7 |" in results

    (folder / "v=v3" / "seed=5" / "metrics.json").unlink()  # started (run.json) but never finished
    assert next_round(load_study(path)) == []  # no round is planned while a listed run is still to train
    run_study(load_study(path), python=str(fake), echo=lines.append)
    assert starts(tmp_path) == first + rounds + [f"{folder}/v=v3/seed=5"]


def test_extra_seeds_give_one_variant_a_seed_and_the_baseline_its_pair(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """extra_seeds: {v=v1: [2]} beside seeds [0, 1]: v1 and the baseline train seed 2, v2 does not; with v1's seed 0
    failed (no metrics.json), the report pairs v1 at seeds 1 and 2 and names seed 0 as missing, 2 of 3."""
    from yolo_loss.studies.report import write_report

    table = {str(k): {str(s): 0.3 + 0.01 * k + 0.001 * s for s in range(3)} for k in (1, 2, 3)}
    fake, path = fake_ap_study(tmp_path, monkeypatch, table, 3, seeds=[0, 1], extra_seeds={"v=v1": [2]})
    run_study(load_study(path), python=str(fake), echo=lambda line: None)

    folder = tmp_path / "study"
    assert load_study(path).variant_seeds() == {"v=v0": [0, 1, 2], "v=v1": [0, 1, 2], "v=v2": [0, 1]}
    assert sorted(starts(tmp_path)) == sorted([f"{folder}/v=v{k}/seed={s}" for k in range(3) for s in (0, 1)]
                                              + [f"{folder}/v=v0/seed=2", f"{folder}/v=v1/seed=2"])
    (folder / "v=v1" / "seed=0" / "metrics.json").unlink()  # as if it had diverged
    write_report(folder)
    results = (folder / "results.md").read_text()
    assert "| v=v1 | 2/3 |" in results and "| **v=v0** (baseline) | 3/3 |" in results and "| v=v2 | 2/2 |" in results
    assert "v=v1: seed(s) 0 missing" in results
    (row,) = [line for line in results.splitlines() if line.startswith("| v=v1 | 2/3 |")]
    assert "+0.010 +- 0.000" in row  # paired at seeds 1 and 2, each +0.010
