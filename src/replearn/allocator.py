"""glibc's malloc, tuned for tensors: big buffers reused from the heap instead of mapped afresh.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised on the fly up
to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed. A training or
feature step allocates and frees activations of tens of MiB each batch, so each one costs page
faults and zeroing of fresh pages by the kernel. With the threshold at 256 MiB and the heap
trimmed only above 1 GiB of free top memory, those buffers are reused: the demo encoder's
bf16 feature pass on 2 cores runs 33 ms a batch of 512 instead of 60 ms (``bench/evaluation.py``
and ``bench/throughput.py`` measure the whole effect). Freed memory up to 1 GiB may stay with the
process.

``tune()`` runs when replearn is imported; ``REPLEARN_MALLOC=default`` in the environment
leaves malloc as it is. Nothing happens off Linux or on a C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 256 << 20  # bytes: allocations above this still get their own mapping
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before it is given back to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

tuned = False  # whether tune() changed malloc in this process


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def tune() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True when they were set."""
    global tuned
    if tuned or os.environ.get("REPLEARN_MALLOC") == "default":
        return tuned
    if not sys.platform.startswith("linux") or not _glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        tuned = False
    return tuned
