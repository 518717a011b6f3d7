"""Spare files: a delivered message's file kept, for the next message to be written over.

Why not unlink it and create the next one: creating a file allocates an inode, and ext4 without
a journal (this project's CI and bench machines; any ext4 made with `^has_journal`) skips each
inode freed in the last minute (`recently_deleted` in `find_inode_bit`), one buffer-cache lookup
apiece. A spool that creates and removes a file per message frees inodes as fast as it takes
them, so under a steady load each `open(O_CREAT)` scanned thousands: 0.3-0.9 ms of kernel time
per message, on the event loop, where the write of a small message is made (perf: 51 % of such
an `open` in `recently_deleted` and `find_get_block_common`). With a journal the create is
cheap, and a spare still saves an inode's allocation and release per message.

Why a spare keeps its data blocks: emptying a file frees every block, and writing the next
message allocates them again; a write over blocks the file has allocates nothing, and its fsync
then has no allocation to write out. Here, 100 KB written and fsynced in an emptied spare
cost 74-79 us of CPU and 0.19-0.22 ms, and emptying it 22 us more; written over a spare that
kept its blocks, 64-66 us and 0.15 ms (5 KB: the 17 us of emptying saved). The fsync is
what stands between a message and its 250. So a delivered message's bytes stay in its spare
until the next message is written over them, with three bounds: a spare bigger than
`KEEP_BYTES` (256 KiB) is emptied at once, the spares of a process hold at most
`KEEP_TOTAL_BYTES` (past that, emptied too), and one not taken again within `KEEP_SECONDS`
is emptied by the spool scan (`empty_idle`); one that cannot be opened is removed. The spool's files are the daemon's alone (mode 0600), and the bytes
were on the same disk before; the bounds keep a delivered message from lingering there.

How it stays safe:
- A spare lives in `tmp/` under a name of its own (`spare.PID.N.tmp`), unlocked: it is a
  temporary like any other, so recovery removes it at the next start, and a worker starting
  beside this one may remove it any time (it takes a temporary without a lock for a stale one).
  So a writer takes a spare as `lock_file` takes any file: open, lock without waiting, then
  check that it still has a name (`st_nlink`). A spare gone or held is passed over; with none
  left, the writer creates a file as before. Spares change what a write costs, never what is
  written or when it is durable.
- The next message is written over a spare from its first byte, and the file is cut to that
  message's length before anything else (`safeio.begin_write`), so nothing of the bigger
  message before it survives; its length is checked, then it is fsynced and renamed, as a
  file just created would be.
- A delivered message becomes a spare only after its removal from `queue/` is durable (the
  removal's directory fsync), and is let go only then. No crash can leave another message's
  bytes under a message's name; one between the rename and the next write leaves the
  delivered message's bytes in `tmp/`, which recovery removes as any temporary.

Bounded: at most `limit` spares a process, holding at most `KEEP_TOTAL_BYTES`; no descriptor
is held for them. Thread-safe: made in the delivery worker's removal thread, emptied in its
scan thread, taken on the event loop or in a spool thread.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from frontfilter.delivery.safeio import TEMP_SUFFIX

# As many as a backlog that drains leaves behind, so that a spool under a steady load removes
# (almost) no files at all. An empty file costs an inode and a directory entry, no data block.
SPARE_FILES = 4096
SPARE_PREFIX = "spare."
# A spare is a place for the next message, not a store: big ones are emptied (a 25 MB message's
# blocks would only be freed later, by the next writer), and so are the bytes past a total a
# few seconds of a busy relay's mail fill, and those of a spare not written over within a
# minute (a relay gone quiet).
KEEP_BYTES = 256 * 1024        # what the next writer may have to cut, on the event loop for a small one
KEEP_TOTAL_BYTES = 32 * 1024 * 1024
KEEP_SECONDS = 60.0


class SpareFiles:
    """Up to `limit` spare files in `directory` (the spool's tmp/), made by this process."""

    def __init__(self, directory: Path, limit: int = SPARE_FILES, keep_bytes: int = KEEP_BYTES,
                 keep_total_bytes: int = KEEP_TOTAL_BYTES, keep_seconds: float = KEEP_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = directory
        self.limit = limit
        self.keep_bytes = keep_bytes
        self.keep_total_bytes = keep_total_bytes
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._ready: deque[_Spare] = deque()    # the oldest on the left
        self._held = 0                  # ready ones and ones being made (claimed, not yet kept)
        self._bytes = 0                 # what the ready ones hold
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

    def keep(self, fd: int, path: Path, empty: bool = False) -> None:
        """Make the locked file `fd`, renamed already to a claimed `path`, a spare: emptied
        if `empty` or if it is bigger than the bounds allow, then closed (its lock let go)."""
        try:
            size = os.fstat(fd).st_size
            with self._lock:
                kept = (not empty and not self._closed and size <= self.keep_bytes
                        and self._bytes + size <= self.keep_total_bytes)
                if kept:
                    self._bytes += size          # counted now: two keeps cannot both pass the bound
            if not kept:
                # By name: a message opened from disk is locked through a read-only descriptor.
                # The name is ours while the lock is held: nobody else removes a locked temporary.
                os.truncate(path, 0)
                size = 0
        except OSError:
            self.unclaim()
            _remove(fd, path)
            return
        _close(fd)
        with self._lock:
            if not self._closed:
                self._ready.append(_Spare(path, size, self._clock()))
                return
            self._held -= 1                      # (close() let go of the bytes counted)
        _unlink(path)

    def unclaim(self) -> None:
        """A claimed name that was not kept (the rename or the removal's fsync failed)."""
        with self._lock:
            self._held -= 1

    def take(self) -> tuple[int, Path] | None:
        """A spare, open and locked, to write in from its first byte: its descriptor and its
        path. None when there is none left (create a file then). The one kept last: its pages
        are the likeliest to be in memory still."""
        while True:
            with self._lock:
                if not self._ready:
                    return None
                spare = self._ready.pop()
                self._held -= 1
                self._bytes -= spare.size
            taken = _open_locked(spare.path)
            if taken is not None:
                return taken, spare.path
            # Gone, held by another worker's recovery, or not to be opened now (no descriptor
            # left): never left behind untracked with a delivered message's bytes in it.
            _unlink(spare.path)

    def empty_idle(self) -> int:
        """Empty the spares not written over for `keep_seconds` (the spool scan calls this):
        how many it emptied. One that cannot be opened is removed."""
        emptied = 0
        horizon = self._clock() - self.keep_seconds
        for _ in range(len(self._ready)):        # each at most once, whatever the clock does
            with self._lock:
                if not self._ready or self._ready[0].kept > horizon:
                    break
                spare = self._ready.popleft()       # still counted in _held: it is ours
                if spare.size == 0:                  # empty already: back, as the newest
                    self._ready.append(_Spare(spare.path, 0, self._clock()))
                    continue
                self._bytes -= spare.size
            fd = _open_locked(spare.path)
            if fd is None:
                self.unclaim()
                _unlink(spare.path)
                continue
            self.keep(fd, spare.path, empty=True)
            emptied += 1
        return emptied

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def bytes_held(self) -> int:
        """What the ready spares hold, in bytes."""
        return self._bytes

    def close(self) -> None:
        """Remove every spare (at shutdown); any kept later is removed at once."""
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready), deque()
            self._held -= len(ready)
            self._bytes = 0
        for spare in ready:
            _unlink(spare.path)


@dataclass(frozen=True)
class _Spare:
    path: Path
    size: int                 # the bytes it holds (of the message delivered from it)
    kept: float               # when it was made a spare (or emptied), on the clock


def _open_locked(path: Path) -> int | None:
    """`path` open (read and write, at its first byte) and locked by us, or None: gone, or
    held by someone removing it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink:
            return fd
    except OSError:
        pass
    _close(fd)
    return None


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass            # Linux has let the descriptor go all the same


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass            # left for recovery: a temporary whose writer is gone


def _remove(fd: int, path: Path) -> None:
    _unlink(path)
    _close(fd)
