"""Process-level run setup: the device, seeds and random-number states, and the run folder.

The random-number states are returned as plain tensors, lists, ints, floats and strings, so that they can be
stored in a checkpoint that :func:`yolo_loss.checkpoint.load_checkpoint` reads with ``weights_only=True``.
"""

from __future__ import annotations

import datetime
import os
import platform
import random
import shlex
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolo_loss.train.run_folder import RUN_START_FILES

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# cuBLAS needs a fixed workspace to give the same results on every run (CUDA docs, "Results reproducibility");
# ":4096:8" is the larger of the two settings it documents.
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
NUMPY_SEED_MODULUS = 2**32  # np.random.seed only takes seeds in [0, 2**32)


def select_device(name: str) -> torch.device:
    """The ``torch.device`` for ``train.device``: ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``
    or an indexed ``'cuda:N'``.

    Raises:
        RuntimeError: CUDA was asked for but this torch build or machine has none.
        ValueError: ``name`` is not a device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_CHOICES)}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available (torch {torch.__version__}, "
                               f"{build}); use train.device=cpu, or auto to take CUDA only when present")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {name!r} was asked for, but only {torch.cuda.device_count()} CUDA "
                               "device(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device), and set the
    determinism switches.

    ``deterministic=True`` makes torch use deterministic kernels (``warn_only``: an op without one warns instead
    of stopping the run), turns cuDNN autotuning off, and sets ``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS only
    reads when the CUDA context is created: call this before the first CUDA operation. ``False`` switches the
    torch flags back to their defaults, so the result never depends on an earlier call. A seed outside NumPy's
    range ``[0, 2**32)`` is reduced modulo ``2**32`` for NumPy only.
    """
    random.seed(seed)
    np.random.seed(seed % NUMPY_SEED_MODULUS)
    torch.manual_seed(seed)  # seeds the CPU generator and the generators of all CUDA devices
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC_WORKSPACE
    if deterministic or torch.are_deterministic_algorithms_enabled():  # the first call costs ~1 s of imports
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing, which differs between runs


def rng_state() -> dict[str, Any]:
    """Every global random-number state a training step draws from, as plain types.

    Returns ``{"python": {"version", "internal": Tensor[625] int64, "gauss_next"}, "numpy": {"bit_generator",
    "key": Tensor[624] int64, "pos", "has_gauss", "cached_gaussian"}, "torch": Tensor uint8, "cuda":
    [Tensor uint8, one per device]}``. ``"cuda"`` is present only once CUDA has been initialised: a CPU run on a
    machine with a GPU then does not create a CUDA context just to read a generator it never uses. NumPy
    ``Generator`` objects (``default_rng``) are not global state and are not included.
    """
    python_version, python_internal, gauss_next = random.getstate()
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        # Mersenne Twister words are uint32, which int64 holds exactly; torch has no uint32 tensors to load.
        "python": {"version": python_version, "internal": torch.tensor(python_internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"bit_generator": bit_generator, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`rng_state`.

    The tensors may come back on a GPU (``load_checkpoint(map_location='cuda')``); the generators want them on
    the CPU. CUDA states are restored for the devices present in both the saved state and this process, so a
    GPU run's checkpoint also resumes on the CPU.
    """
    python = state["python"]
    random.setstate((int(python["version"]), tuple(python["internal"].cpu().tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["key"].cpu().numpy().astype(np.uint32), int(numpy["pos"]),
                         int(numpy["has_gauss"]), float(numpy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def make_run_dir(out_dir: Path, name: str) -> Path:
    """Create and return a new run folder ``out_dir/name``, or ``name-1``, ``name-2``, ... if taken.

    An existing folder is never reused: each candidate is created with ``mkdir(exist_ok=False)``, which the
    file system performs atomically, so two processes starting at once get different folders.

    Raises:
        ValueError: ``name`` is empty or is not a single path component.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"run name {name!r} must be a single folder name (no path separators)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:
        candidate = out_dir / (name if suffix == 0 else f"{name}-{suffix}")
        try:
            candidate.mkdir(exist_ok=False)
        except FileExistsError:
            suffix += 1
            continue
        return candidate


def remove_unstarted_run_dir(run_dir: Path) -> bool:
    """Remove a run folder that holds nothing but :data:`RUN_START_FILES` (a run that stopped before training:
    a config or data error), so that the next run gets its name; True if removed. A folder holding anything else
    (a checkpoint, TensorBoard logs, ``bad_inputs.txt``, a study's ``run.json``) is left as it is. The caller
    removes only a folder it created itself, never a resumed run's or a ``--run-dir`` that existed before."""
    run_dir = Path(run_dir)
    try:
        entries = list(run_dir.iterdir())
    except FileNotFoundError:
        return False
    if any(entry.name not in RUN_START_FILES or not entry.is_file() for entry in entries):
        return False
    for entry in entries:
        entry.unlink()
    run_dir.rmdir()
    return True


CPU_FLAGS_NAMED = ("avx512_bf16", "amx_bf16")  # the instructions that change which bfloat16 kernels run


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor, as far as it decides a CPU run's floating-point results: its model name (``cpuinfo``; the
    platform's processor string off Linux), the vector instruction set ATen dispatches to and the bfloat16 and AMX
    instructions it has. Two machines that differ here can train the same command to different weights (their
    kernels round differently), so runs paired by seed should come from one of them.

    Example: ``"AMD EPYC, ATen AVX512, avx512_bf16"``.
    """
    name, flags = _read_cpuinfo(cpuinfo)
    parts = [name or platform.processor() or "unknown processor", f"ATen {torch.backends.cpu.get_cpu_capability()}"]
    return ", ".join(parts + [flag for flag in CPU_FLAGS_NAMED if flag in flags])


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the processor has bfloat16 instructions (:data:`CPU_FLAGS_NAMED`); None where ``cpuinfo`` cannot
    be read (off Linux). Without them oneDNN emulates bfloat16, and autocast trains slower than float32: ten times
    slower on a 2-core AVX2 AMD EPYC (docs/speed.md)."""
    _, flags = _read_cpuinfo(cpuinfo)
    return any(flag in flags for flag in CPU_FLAGS_NAMED) if flags else None


def _read_cpuinfo(cpuinfo: Path) -> tuple[str, set[str]]:
    """The first processor's model name and flags in ``cpuinfo``; empty where it cannot be read."""
    name, flags = "", set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, flags


def describe_device() -> str:
    """What this host offers torch: the CUDA devices by name, or the processor (:func:`describe_cpu`)."""
    if not torch.cuda.is_available():
        return f"cpu: {describe_cpu()} ({os.cpu_count()} cores; CUDA not available)"
    names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return f"cuda: {', '.join(names)}"


def write_config_and_command(run_dir: Path, config_yaml: str, argv: list[str]) -> None:
    """Write ``config.yaml`` (the resolved config) and append this invocation to ``command.txt``.

    ``command.txt`` holds one block per invocation (a resumed run adds one; it never erases the first), each a
    ``#`` header with the time, then the command line exactly as given (``shlex.join(argv)``, so that
    ``shlex.split`` gives ``argv`` back), then ``#`` lines with the working directory, the Python, torch and
    NumPy versions, the host and its device. ``grep -v '^#' command.txt`` lists the commands.
    """
    run_dir = Path(run_dir)
    config_file, command_file = (run_dir / name for name in RUN_START_FILES)
    config_file.write_text(config_yaml)
    torch_build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    try:
        torchvision_version = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        torchvision_version = "not installed"
    lines = [
        f"# {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        shlex.join(argv),
        f"# cwd: {os.getcwd()}",
        f"# python: {platform.python_version()} ({sys.executable})",
        f"# torch: {torch.__version__} ({torch_build} build), torchvision: {torchvision_version}, "
        f"numpy: {np.__version__}",
        f"# host: {socket.gethostname()}, device: {describe_device()}",
    ]
    separator = "\n" if command_file.exists() and command_file.stat().st_size else ""
    with command_file.open("a") as stream:
        stream.write(separator + "\n".join(lines) + "\n")
