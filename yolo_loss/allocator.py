"""glibc allocator settings for the entry points; imports nothing heavy, so it runs before torch is loaded."""

from __future__ import annotations

import os
import platform
import sys

# glibc's malloc hands a freed block above its mmap threshold back to the kernel and trims the top of the heap, so
# a training step that frees and re-allocates the same large tensors pays page faults for them every step. With
# these two settings (mallopt(3): no mmap'ed blocks, trim only above 16 GiB) the memory stays with the process.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}
ALLOCATOR_OPT_OUT = "YOLO_LOSS_DEFAULT_MALLOC"  # set to 1 to keep glibc's defaults


def reexec_with_allocator_settings() -> None:
    """Re-execute this Python process with :data:`ALLOCATOR_ENV` when on glibc and not set yet.

    glibc reads these variables once, at start-up, so they cannot be set from inside the process; the entry
    points call this first thing. Nothing happens when the variables are already set (the user's values win),
    when ``YOLO_LOSS_DEFAULT_MALLOC=1``, or off glibc.
    """
    if os.environ.get(ALLOCATOR_OPT_OUT) == "1" or platform.libc_ver()[0] != "glibc":
        return
    if all(name in os.environ for name in ALLOCATOR_ENV):
        return
    env = {**ALLOCATOR_ENV, **os.environ}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
