"""Tests for yolo_loss.train.runtime and yolo_loss.allocator: device choice, seeding, RNG state round trips, run
folders, run info, and the entry points' allocator settings."""

from __future__ import annotations

import os
import platform
import random
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_loss.allocator import ALLOCATOR_ENV, ALLOCATOR_OPT_OUT
from yolo_loss.checkpoint import load_checkpoint, save_checkpoint
from yolo_loss.train.run_folder import recorded_processor
from yolo_loss.train.runtime import (
    describe_cpu,
    make_run_dir,
    native_bfloat16,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
    write_config_and_command,
)


def draws() -> dict[str, list[float]]:
    """A few values from every generator rng_state covers, including the cached-Gaussian paths."""
    return {"python": [random.random(), random.gauss(0.0, 1.0), random.gauss(0.0, 1.0)],
            "numpy": np.random.standard_normal(3).tolist() + np.random.rand(2).tolist(),
            "torch": torch.rand(3).tolist() + torch.randn(2).tolist()}


@pytest.fixture
def restore_determinism_flags(monkeypatch: pytest.MonkeyPatch):
    """seed_everything changes process-wide flags; put them back for the other tests."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # monkeypatch restores the original value
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != \
            saved[:2]:  # the setter's first call costs ~1 s of imports
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_select_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"'cuda' was asked for, but CUDA is not available.*train\.device=cpu"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        select_device("gpu")


def test_select_device_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match=r"only 1 CUDA device"):
        select_device("cuda:1")


def test_seed_everything_repeats_draws(restore_determinism_flags) -> None:
    seed_everything(123, deterministic=False)
    first = draws()
    seed_everything(123, deterministic=False)
    assert draws() == first
    seed_everything(124, deterministic=False)
    assert all(values != first[name] for name, values in draws().items())
    seed_everything(-1, deterministic=False)  # NumPy alone rejects negative seeds; reduced modulo 2**32 there
    assert np.random.get_state()[1][0] == np.random.RandomState(2**32 - 1).get_state()[1][0]


def test_seed_everything_deterministic_switches(restore_determinism_flags) -> None:
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    seed_everything(0, deterministic=False)  # switches back: the result never depends on an earlier call
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    """Draw, save the state with save_checkpoint, draw the reference values, scramble, restore the state loaded
    with weights_only=True: the same values come again from random, NumPy and torch."""
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    # An odd number of Gaussian draws leaves a cached second value in Python's and NumPy's generators.
    random.gauss(0.0, 1.0)
    np.random.standard_normal(1)
    torch.rand(5)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = draws()
    draws()

    restored = load_checkpoint(tmp_path / "rng.pt")["rng"]
    assert restored["python"]["gauss_next"] is not None and restored["numpy"]["has_gauss"] == 1
    set_rng_state(restored)
    assert draws() == expected


def test_make_run_dir_never_reuses_a_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "runs"  # created on demand
    first = make_run_dir(out_dir, "exp")
    (first / "last.pt").write_text("the first run's checkpoint")
    assert first == out_dir / "exp"
    assert make_run_dir(out_dir, "exp") == out_dir / "exp-1"
    (out_dir / "exp-2").write_text("a file, not a folder, also takes the name")
    assert make_run_dir(out_dir, "exp") == out_dir / "exp-3"
    assert (first / "last.pt").read_text() == "the first run's checkpoint"
    assert sorted(path.name for path in (out_dir / "exp-3").iterdir()) == []


def test_make_run_dir_concurrent_callers_get_distinct_folders(tmp_path: Path) -> None:
    callers = 8
    start = threading.Barrier(callers)
    results: list[Path] = []

    def start_run() -> None:
        start.wait()
        results.append(make_run_dir(tmp_path, "race"))

    threads = [threading.Thread(target=start_run) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(path.name for path in results) == sorted(["race"] + [f"race-{i}" for i in range(1, callers)])


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_make_run_dir_rejects_names_that_are_not_one_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="single folder name"):
        make_run_dir(tmp_path, name)


def test_write_config_and_command_records_each_invocation(tmp_path: Path) -> None:
    first_argv = ["train.py", "--config", "configs/my config.yaml", "--set", "name='quoted run'", "train.epochs=3"]
    resume_argv = ["train.py", "--resume", str(tmp_path / "last.pt")]
    write_config_and_command(tmp_path, "train:\n  epochs: 3\n", first_argv)
    write_config_and_command(tmp_path, "train:\n  epochs: 4\n", resume_argv)

    assert (tmp_path / "config.yaml").read_text() == "train:\n  epochs: 4\n"
    text = (tmp_path / "command.txt").read_text()
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [shlex.split(command) for command in commands] == [first_argv, resume_argv]
    assert text.count(f"# python: {platform.python_version()}") == 2
    assert f"torch: {torch.__version__}" in text
    assert "device: cpu: " in text or "device: cuda: " in text
    assert torch.cuda.is_available() or f"ATen {torch.backends.cpu.get_cpu_capability()}" in text  # which machine
    assert f"# cwd: {os.getcwd()}" in text


def test_describe_cpu_names_the_model_the_kernels_and_the_bfloat16_instructions(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    core = "processor\t: {}\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx512f amx_bf16 avx512_bf16 amx_tile\n\n"
    cpuinfo.write_text(core.format(0) + core.format(1))
    capability = torch.backends.cpu.get_cpu_capability()
    # the first processor's entries (every core repeats them); the named flags in a fixed order
    assert describe_cpu(cpuinfo) == f"Some CPU 9000, ATen {capability}, avx512_bf16, amx_bf16"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Plain CPU\nflags\t\t: fpu sse avx2\n")
    assert describe_cpu(cpuinfo) == f"Plain CPU, ATen {capability}"
    assert describe_cpu(tmp_path / "absent").endswith(f", ATen {capability}")  # off Linux: the platform's name


def test_native_bfloat16_reads_the_bfloat16_instructions(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    for flags, native in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16 amx_tile", True),
                          ("fpu avx2 avx512f avx512bw", False), ("fpu sse avx2", False)):
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: A CPU\nflags\t\t: {flags}\n")
        assert native_bfloat16(cpuinfo) is native, flags
    assert native_bfloat16(tmp_path / "absent") is None  # off Linux: not known


def test_recorded_processor_names_every_processor_a_run_trained_on(tmp_path: Path) -> None:
    assert recorded_processor(tmp_path) == ""  # no command.txt
    write_config_and_command(tmp_path, "", ["train.py"])
    here = "" if torch.cuda.is_available() else describe_cpu()
    assert recorded_processor(tmp_path) == here
    write_config_and_command(tmp_path, "", ["train.py", "--resume", "x"])  # resumed on the same machine
    assert recorded_processor(tmp_path) == here
    with (tmp_path / "command.txt").open("a") as stream:  # resumed on another machine
        stream.write("\n# t\ntrain.py --resume x\n# host: h, device: cpu: Intel(R) Xeon(R) 8480+, ATen AVX512, "
                     "amx_bf16 (8 cores; CUDA not available)\n")
    other = "Intel(R) Xeon(R) 8480+, ATen AVX512, amx_bf16"
    assert recorded_processor(tmp_path) == (f"{here} + {other}" if here else other)
    # the format before processors were recorded, and a CUDA run: nothing to go on
    (tmp_path / "command.txt").write_text("# t\ntrain.py\n# host: h, device: cpu (2 cores; CUDA not available)\n"
                                          "# t\ntrain.py\n# host: h, device: cuda: NVIDIA H100 (CUDA 12.8)\n")
    assert recorded_processor(tmp_path) == ""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings apply to glibc only")
@pytest.mark.parametrize("extra_env, expected", [
    ({}, "0 17179869184"),  # set by the re-exec
    ({"MALLOC_MMAP_MAX_": "5", "MALLOC_TRIM_THRESHOLD_": "7"}, "5 7"),  # the user's values win
    ({"YOLO_LOSS_DEFAULT_MALLOC": "1"}, "None None"),  # opted out
])
def test_entry_points_restart_with_the_allocator_settings(extra_env: dict[str, str], expected: str) -> None:
    script = ("import os\n"
              "from yolo_loss.allocator import reexec_with_allocator_settings\n"
              "reexec_with_allocator_settings()\n"
              "print(os.environ.get('MALLOC_MMAP_MAX_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != ALLOCATOR_OPT_OUT}
    env.update(extra_env, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == expected
