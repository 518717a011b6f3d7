"""glibc's malloc told to give big blocks back when they are freed: a worker's memory after a
big message.

glibc serves a block of at least its mmap threshold (128 KiB at start) from a mapping of its
own, unmapped when the block is freed. The threshold moves, though: each such block freed
raises it to that block's size (up to 32 MiB), so after one big message the next one's buffers
(its decoded parts, the members of its archives: tens of MiB) come from the heap, and the heap
keeps much of what is then freed. A worker that took a 25.7 MiB zip twice grew by 1.95 times the
message at its peak with the threshold moving, 1.06 with it fixed at 1 MiB (bench/README.md,
issue 26). Blocks that big are a big message's only: small mail never makes one.

Only glibc is told (its `mallopt`, through ctypes): another C library, or none found, is left as
it is.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3            # glibc's malloc.h
MMAP_THRESHOLD = 1024 * 1024     # bytes: a block this big or bigger is a mapping of its own


def give_big_blocks_back() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD; False where there is no glibc to tell."""
    try:
        # The C library this process runs on, already loaded: no search for it. (find_library
        # runs `ldconfig -p`, and platform.libc_ver reads the Python binary: both block the
        # event loop this is called from, Service.start.)
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):      # glibc's own: another C library
            return False
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
