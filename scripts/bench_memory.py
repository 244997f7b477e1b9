"""Peak memory of training the CPU model: how it grows with the images cached, without the cache, and with glibc's
default allocator.

    python scripts/bench_memory.py [--sizes 500 1000 2000 4000] [--steps 20]

Each row is a separate ``train.py`` process on configs/shapes_nano.yaml with ``data.shapes.num_train`` images
(generated once per size, cached under data/) for ``--steps`` steps; its peak resident memory is the largest
``memory/cpu_peak_rss_mb`` the run logged (the process's ``ru_maxrss``). The cache's own size is the decoded,
letterboxed pixels it holds (3 x 160 x 160 bytes at most per image).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from yolo_loss.tensorboard.log import read_scalars

REPO = Path(__file__).resolve().parents[1]


def cache_mb(num_train: int) -> float:
    """The most the cache can hold: every image letterboxed to 160 px on its long side, 3 bytes a pixel."""
    return num_train * 3 * 160 * 160 / 2**20


def peak_rss_mb(num_train: int, steps: int, *, cache: bool, default_malloc: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if default_malloc:
            env["YOLO_LOSS_DEFAULT_MALLOC"] = "1"
        run_dir = Path(folder) / "run"
        command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "shapes_nano.yaml"),
                   "--run-dir", str(run_dir), "--set", f"data.shapes.num_train={num_train}",
                   f"data.cache={str(cache).lower()}", f"train.max_steps={steps}", "train.log_interval=5",
                   "train.log_images=0"]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"train.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        _, values = read_scalars(run_dir, "train", "memory/cpu_peak_rss_mb")
    return max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print("| training images | cache | allocator | peak RSS MB | cache pixels MB |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        peak = peak_rss_mb(size, args.steps, cache=True, default_malloc=False)
        print(f"| {size} | on | settings (default) | {peak:.0f} | <= {cache_mb(size):.0f} |", flush=True)
    middle = sorted(args.sizes)[len(args.sizes) // 2]
    print(f"| {middle} | off | settings (default) | "
          f"{peak_rss_mb(middle, args.steps, cache=False, default_malloc=False):.0f} | 0 |", flush=True)
    print(f"| {middle} | on | glibc default | "
          f"{peak_rss_mb(middle, args.steps, cache=True, default_malloc=True):.0f} | <= {cache_mb(middle):.0f} |",
          flush=True)


if __name__ == "__main__":
    main()
