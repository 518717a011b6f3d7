"""Safe file I/O for the spool: durable atomic writes, directory fsync, per-file locks.

Guarantees (the Postfix `mail_stream.c` / chasquid `safeio` recipe: no 250 before the bytes are durable):
- `write_atomically` returns only once the bytes are in a file under their final name and that
  name survives a crash or power cut: data written to a temporary file, `fsync`, `rename` onto
  the final name, `fsync` of the final directory. Before it returns, a crash leaves the final
  name as it was (absent, or its old content) and at most a stale temporary file: never a
  partial file under the final name.
- A temporary file is `flock`ed by its writer from creation to rename, so a recovery scan in any
  process tells a stale temporary (lock free: its writer died) from one being written now.
- `lock_file` takes an advisory `flock(2)` on an existing file and checks the name still points
  at the locked inode (a file deleted or replaced between open and lock is reported gone).
  The kernel drops a flock when the process dies, SIGKILL included: a crash never leaves a
  stale lock behind, and no lock files need cleaning up.

Everything here blocks (open, write, fsync, rename): call it from a worker thread, never on the
event loop — except `begin_write` of a small file, which only fills the page cache. Temporary and final directories must be on one filesystem (rename is atomic only
within one).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from frontfilter.mapped import MappedText, slices

# What is written: bytes, or a view of them, or a message mapped from its spill file.
Chunk = bytes | memoryview | MappedText

TEMP_SUFFIX = ".tmp"
# How often a blocking `lock_file(wait=...)` retries a busy lock.
LOCK_POLL_SECONDS = 0.05
FILE_MODE = 0o600       # spooled mail is private: only the daemon's user reads it
DIR_MODE = 0o700


class Gone(Exception):
    """The file was removed (delivered, deleted) before or while it was being locked."""


class Busy(Exception):
    """Another process or task holds the lock."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SharedDirectorySync:
    """One directory's fsync, shared by the writers that wait for it at once (a group commit).

    A writer needs an fsync that *begins* after its rename; one already running may have begun
    before, so it waits for that one to end and then runs the next itself, or finds that
    another writer already began one after its call (then that one covers its rename too).
    Under load the spool's writers renamed in the same millisecond share one journal commit
    instead of queueing one each. A failed fsync covers nobody: its writer raises, the others
    try again with their own."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._begun = 0          # fsyncs begun, numbered from 1
        self._done = 0           # the number of the last one that succeeded
        self._running = False

    def sync(self, directory: Path) -> None:
        with self._changed:
            needed = self._begun + 1          # the first fsync to begin after this call
            while self._done < needed:
                if not self._running:
                    self._running = True
                    self._begun += 1
                    mine = self._begun
                    break
                self._changed.wait()
            else:
                return
        succeeded = False
        try:
            fsync_dir(directory)
            succeeded = True
        finally:
            with self._changed:
                self._running = False
                if succeeded:
                    self._done = mine
                self._changed.notify_all()


_shared_syncs: dict[Path, _SharedDirectorySync] = {}
_shared_syncs_lock = threading.Lock()


def fsync_dir_shared(directory: Path) -> None:
    """`fsync_dir`, sharing one fsync among the threads of this process that ask at once."""
    with _shared_syncs_lock:
        sync = _shared_syncs.get(directory)
        if sync is None:
            sync = _shared_syncs[directory] = _SharedDirectorySync()
    sync.sync(directory)


def ensure_dir(directory: Path) -> None:
    """Create a private directory (and its parents) and make its entry durable."""
    if directory.is_dir():
        return
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fsync_dir(directory.parent)


def write_atomically(temp_dir: Path, final: Path, chunks: Iterable[Chunk],
                     owner: tuple[int, int] | None = None) -> os.stat_result:
    """Write `chunks` durably under `final`; returns the new file's stat (inode, size).

    `owner` (uid, gid), when given and we are root, is applied before the rename: the queue tool
    run as root must not leave a file the daemon's own user cannot read.
    """
    stat, locked = write_locked(temp_dir, final, chunks, owner)
    locked.close()
    return stat


def write_locked(temp_dir: Path, final: Path, chunks: Iterable[Chunk], owner: tuple[int, int] | None = None,
                 spare: tuple[int, Path] | None = None) -> tuple[os.stat_result, LockedFile]:
    """`write_atomically`, and the new file stays locked by the caller: the writer's lock is
    held from the temporary's creation on, so no other process can take the file between the
    rename and the caller's first use of it (the spool hands a just-written message to its
    delivery worker this way, without reopening it). A group of one (`commit_group`); `spare`
    as for `begin_write`."""
    pending = begin_write(temp_dir, final, chunks, owner, spare)
    try:
        commit_group([pending])
    except BaseException:
        if pending.error is None:
            pending.discard()
        raise
    if pending.error is not None:
        # Not durable: the caller refuses the message (4xx) and the client sends it again,
        # so no copy is left under its final name (commit_group removed it).
        raise pending.error
    return pending.stat, pending.locked()


@dataclass
class Pending:
    """A file written under a temporary name and locked by its writer, not yet durable: the
    first half of `write_locked`, for `commit_group` to finish together with others."""

    fd: int
    temp: Path
    final: Path
    stat: os.stat_result
    renamed: bool = False             # under its final name (not yet durable before commit ends)
    replaces: bool = False            # the rename replaced a file of that name (a state file)
    new_name: bool = False            # the final name is new (a queue id): no need to look first
    error: OSError | None = None      # set by commit_group: the file is gone, its lock let go...
    held: bool = False                # ...unless its name could not be removed: then still locked

    def locked(self) -> LockedFile:
        """Once committed without error: the file under its final name, still locked."""
        return LockedFile(self.final, self.fd)

    def discard(self, error: OSError | None = None) -> None:
        """Give up on the file: its name removed — the temporary's, or the final one once
        renamed — and the descriptor closed, the lock with it. Not a final name that replaced
        a file (a state file whose directory fsync failed): the old content is gone already,
        and the new one, perhaps not durable, is better than none."""
        self.error = error or self.error
        if self.renamed and self.replaces:
            os.close(self.fd)
        else:
            self._remove(self.final if self.renamed else self.temp)

    def discard_either(self, error: OSError) -> Path | None:
        """`discard` of a file that may or may not have been renamed (its commit was lost with
        the process making it): removed under whichever name it has. The directory it was
        removed from, for the caller to make that durable; None if it was not there."""
        self.error = error
        return self._remove(self.temp, self.final)

    def _remove(self, *names: Path) -> Path | None:
        """The first of `names` that exists removed, then the descriptor closed. A name that
        cannot be removed (EIO, a file system gone read-only) keeps the descriptor, and the
        lock, for the life of the process (`held`): let go, a message whose client is being
        refused would be taken by the delivery scan and delivered all the same."""
        for path in names:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError:
                self.held = True
                return None
            os.close(self.fd)
            return path.parent
        os.close(self.fd)
        return None


def begin_write(temp_dir: Path, final: Path, chunks: Iterable[Chunk],
                owner: tuple[int, int] | None = None, spare: tuple[int, Path] | None = None) -> Pending:
    """Write `chunks` to a new temporary for `final`, locked from its creation on: no fsync,
    nothing blocks but the page cache (the spool does this on the event loop for small
    messages, measured at tens of µs for 5 KB).

    `spare`: a file in `temp_dir`, open at its first byte and locked already
    (delivery/spares.py), to write over instead of creating one: cut to what was written, so
    nothing of what it held before is left, before the fsync that makes it durable."""
    fd, temp = spare or _create_locked_temp(temp_dir, final.name)
    try:
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        chunks = list(chunks)
        _write_all(fd, chunks)
        if spare is not None:
            written = sum(len(chunk) for chunk in chunks)
            os.ftruncate(fd, written)
        stat = os.fstat(fd)
        if spare is not None and stat.st_size != written:
            raise OSError(errno.EIO, f"a spare file is {stat.st_size} bytes after a write of {written}", str(temp))
    except BaseException:
        os.close(fd)
        try:
            temp.unlink()
        except OSError:
            pass
        raise
    return Pending(fd, temp, final, stat)


def commit_group(group: Sequence[Pending]) -> None:
    """Make every file of `group` durable under its final name (the second half of a write
    that `begin_write` began; `write_locked` is a group of one): each one fsynced then renamed,
    then one fsync of each final directory for the whole group. A file that fails has `error` set and is discarded;
    the others stay open and locked (`Pending.locked`). Nothing is durable before this returns."""
    renamed: list[Pending] = []
    for pending in group:
        try:
            os.fsync(pending.fd)
            pending.replaces = not pending.new_name and os.path.lexists(pending.final)
            os.rename(pending.temp, pending.final)
        except OSError as error:
            pending.discard(error)
        else:
            pending.renamed = True
            renamed.append(pending)
    for directory in dict.fromkeys(pending.final.parent for pending in renamed):
        try:
            # Shared with the other threads that write there (large messages, state files).
            fsync_dir_shared(directory)
        except OSError as error:
            # Not durable: the client is refused (4xx) and sends it again, so no copy may stay.
            for pending in renamed:
                if pending.final.parent == directory:
                    pending.discard(error)


# A message mapped from its spill file is written a slice at a time, its pages dropped after each.
MAPPED_WRITE_SLICE = 1024 * 1024


def _write_all(fd: int, chunks: list[Chunk]) -> None:
    """All of `chunks`, in order: one writev (one system call where the kernel takes it all,
    which for a regular file it does), the remainder written on after a short write.

    A chunk that is a big message mapped from its spill file (mapped.MappedText) is written in
    slices instead, its pages dropped behind each, so the write does not map it all at once."""
    if any(isinstance(chunk, MappedText) for chunk in chunks):
        for chunk in chunks:
            for piece in slices(chunk, MAPPED_WRITE_SLICE):
                _write_all(fd, [piece])
        return
    written = os.writev(fd, chunks) if chunks else 0
    for chunk in chunks:
        if written >= len(chunk):
            written -= len(chunk)
            continue
        view = memoryview(chunk)[written:]
        written = 0
        while view:
            view = view[os.write(fd, view):]


def _create_locked_temp(temp_dir: Path, name: str) -> tuple[int, Path]:
    """`_create_temp`, locked: ours alone from then on, so recovery leaves it be.

    Between the creation and the lock, a recovery scan of another worker starting (it removes
    the temporaries nobody holds) may take the new file for a stale one: it then holds the lock,
    or has removed the name already. Such a file is let go and another one made, once; the
    lock is never waited for (this may run on the event loop). A second loss (BlockingIOError)
    fails the write, and the client is answered 4xx and sends again."""
    for attempt in range(2):
        fd, temp = _create_temp(temp_dir, name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink:
                return fd, temp
        except BlockingIOError:
            if attempt:
                os.close(fd)
                raise
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)        # the scan removes it (or has): not ours to unlink
    raise BlockingIOError(errno.EAGAIN, "a new spool file was taken for a stale one twice", str(temp))


def _create_temp(temp_dir: Path, name: str) -> tuple[int, Path]:
    """A new private temporary for `name`. The name is unique already (a queue id, or a state
    file written under its message's lock), so the pid suffices to tell writers apart; a stale
    file of that name (a crash, a reused pid) falls back to a random name."""
    temp = temp_dir / f"{name}.{os.getpid()}{TEMP_SUFFIX}"
    try:
        return os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), temp
    except FileExistsError:
        fd, temp_name = tempfile.mkstemp(dir=temp_dir, prefix=name + ".", suffix=TEMP_SUFFIX)
        return fd, Path(temp_name)


class LockedFile:
    """An open file holding an exclusive flock. Close it (or use `with`) to release."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def read_all(self) -> bytes:
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)       # releases the flock
            self.fd = -1

    def __enter__(self) -> LockedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock_file(path: Path, wait: float = 0.0) -> LockedFile:
    """Lock an existing file. Raises Gone if it does not exist (any more), Busy if still locked
    by someone else after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise Gone(str(path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise Busy(str(path)) from None
            time.sleep(LOCK_POLL_SECONDS)
            continue
        except BaseException:
            os.close(fd)
            raise
        # Locked. But a holder may have removed (delivered) or replaced the file meanwhile:
        # only the inode the name still points at is the message.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            raise Gone(str(path)) from None
        mine = os.fstat(fd)
        if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        return LockedFile(path, fd)


def discard_stale_temps(temp_dir: Path, min_age: float = 0.0) -> int:
    """Remove temporary files whose writer is gone (no lock held). Returns how many.

    `min_age` (seconds): younger ones are left. A writer creates its temporary, then locks it
    (`begin_write`); a pass that runs while others write (the quarantine's retention) must not
    take a file in between for a stale one, remove it, and make that write fail (a held message
    answered 451 as an internal error: seen in CI)."""
    removed = 0
    try:
        names = os.listdir(temp_dir)
    except FileNotFoundError:
        return 0
    now = time.time()
    for name in names:
        if not name.endswith(TEMP_SUFFIX):
            continue
        path = temp_dir / name
        try:
            if min_age and now - path.stat().st_mtime < min_age:
                continue
        except FileNotFoundError:
            continue
        try:
            with lock_file(path):
                path.unlink()
                removed += 1
        except (Busy, Gone):
            continue
    if removed:
        fsync_dir(temp_dir)
    return removed


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the directory's filesystem."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def unlink_durably(*paths: Path) -> None:
    """Remove files in the given order (missing ones are fine), then fsync their directories."""
    dirs = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        if path.parent not in dirs:
            dirs.append(path.parent)
    for directory in dirs:
        fsync_dir(directory)


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
