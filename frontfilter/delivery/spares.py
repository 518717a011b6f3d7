"""Spare files: a delivered message's file kept, emptied, for the next message to be written in.

Why not unlink it and create the next one: creating a file allocates an inode, and ext4 without
a journal (this project's CI and bench machines; any ext4 made with `^has_journal`) skips each
inode freed in the last minute (`recently_deleted` in `find_inode_bit`), one buffer-cache lookup
apiece. A spool that creates and removes a file per message frees inodes as fast as it takes
them, so under a steady load each `open(O_CREAT)` scanned thousands: 0.3-0.9 ms of kernel time
per message, on the event loop, where the write of a small message is made (perf: 51 % of such
an `open` in `recently_deleted` and `find_get_block_common`). With a journal the create is
cheap, and a spare still saves an inode's allocation and release per message.

How it stays safe:
- A spare lives in `tmp/` under a name of its own (`spare.PID.N.tmp`), empty and unlocked: it is
  a temporary like any other, so recovery removes it at the next start, and a worker starting
  beside this one may remove it any time (it takes a temporary without a lock for a stale one).
  So a writer takes a spare as `lock_file` takes any file: open, lock without waiting, then
  check that it still has a name (`st_nlink`). A spare gone or held is passed over; with none
  left, the writer creates a file as before. Spares change what a write costs, never what is
  written or when it is durable.
- A delivered message becomes a spare only after its removal from `queue/` is durable (the
  removal's directory fsync); it is emptied, then let go, only then. No crash can leave an
  emptied file under a message's name; one between the rename and the emptying leaves the
  delivered message's bytes in `tmp/`, which recovery removes as any temporary.

Bounded: at most `limit` spares a process; no descriptor is held for them. Thread-safe: made
in the delivery worker's removal thread, taken on the event loop or in a spool thread.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
from collections import deque
from pathlib import Path

from frontfilter.delivery.safeio import TEMP_SUFFIX

# As many as a backlog that drains leaves behind, so that a spool under a steady load removes
# (almost) no files at all. An empty file costs an inode and a directory entry, no data block.
SPARE_FILES = 4096
SPARE_PREFIX = "spare."


class SpareFiles:
    """Up to `limit` empty files in `directory` (the spool's tmp/), made by this process."""

    def __init__(self, directory: Path, limit: int = SPARE_FILES):
        self.directory = directory
        self.limit = limit
        self._ready: deque[Path] = deque()
        self._held = 0                  # ready ones and ones being made (claimed, not yet kept)
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._closed = False

    def claim(self) -> Path | None:
        """A name in `directory` for one more spare, or None when there are enough. Every
        name claimed is given back through `keep` or `unclaim`."""
        with self._lock:
            if self._closed or self._held >= self.limit:
                return None
            self._held += 1
        return self.directory / f"{SPARE_PREFIX}{os.getpid()}.{next(self._serial)}{TEMP_SUFFIX}"

    def keep(self, fd: int, path: Path) -> None:
        """Make the locked file `fd`, renamed already to a claimed `path`, a spare: emptied,
        then closed (its lock let go)."""
        try:
            # By name: a message opened from disk is locked through a read-only descriptor.
            # The name is ours while the lock is held: nobody else removes a locked temporary.
            os.truncate(path, 0)
        except OSError:
            self.unclaim()
            _remove(fd, path)
            return
        os.close(fd)
        with self._lock:
            if not self._closed:
                self._ready.append(path)
                return
            self._held -= 1
        _unlink(path)

    def unclaim(self) -> None:
        """A claimed name that was not kept (the rename or the removal's fsync failed)."""
        with self._lock:
            self._held -= 1

    def take(self) -> tuple[int, Path] | None:
        """A spare, open and locked, to write in: its descriptor and its path. None when there
        is none left (create a file then)."""
        while True:
            try:
                path = self._ready.popleft()
            except IndexError:
                return None
            with self._lock:
                self._held -= 1
            taken = _open_locked(path)
            if taken is not None:
                return taken, path

    def __len__(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        """Remove every spare (at shutdown); any kept later is removed at once."""
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready), deque()
            self._held -= len(ready)
        for path in ready:
            _unlink(path)


def _open_locked(path: Path) -> int | None:
    """`path` open and locked by us, or None: gone, or held by someone removing it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stat = os.fstat(fd)
        if stat.st_nlink and stat.st_size == 0:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass            # left for recovery: a temporary whose writer is gone


def _remove(fd: int, path: Path) -> None:
    _unlink(path)
    os.close(fd)
