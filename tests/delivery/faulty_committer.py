"""The spool's commit process (delivery/committer.py) with a fault the test chooses, in a real
process of its own as the relay runs it. A failing disk or a crash at a chosen step cannot be
made here otherwise.

COMMIT_FAULT: "dir-fsync-once" (the first fsync of a directory fails with EIO),
"die-after-rename" (the process exits once its first group is renamed, before answering) or
"hang" (it takes its first group and never answers, as a process stuck on a dead disk) or
"read-only" (every directory fsync fails with EIO and no file can be removed: EROFS, as after
ext4 aborted its journal).
COMMIT_GROUPS: a file that gets one line per group, the queue ids it held."""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

from frontfilter.delivery import committer, safeio

FAULT = os.environ.get("COMMIT_FAULT", "")
GROUPS = os.environ.get("COMMIT_GROUPS")
real_fsync_dir, real_commit_group = safeio.fsync_dir, committer.commit_group
failed: list[Path] = []


def fsync_dir(directory: Path) -> None:
    if FAULT == "read-only":
        raise OSError(errno.EIO, "injected I/O error")
    if FAULT == "dir-fsync-once" and not failed:
        failed.append(directory)
        raise OSError(errno.EIO, "injected I/O error")
    real_fsync_dir(directory)


def commit_group(group: list[safeio.Pending]) -> None:
    if FAULT == "hang":
        time.sleep(3600)            # killed (SIGKILL) by the worker that gives up on it
    if GROUPS:
        with open(GROUPS, "a") as out:
            out.write(" ".join(pending.final.stem for pending in group) + "\n")
    real_commit_group(group)
    if FAULT == "die-after-rename":
        os._exit(3)


def unlink_refused(self: Path, missing_ok: bool = False) -> None:
    raise OSError(errno.EROFS, "Read-only file system", str(self))


safeio.fsync_dir = fsync_dir
if FAULT == "read-only":
    Path.unlink = unlink_refused            # type: ignore[method-assign]
committer.commit_group = commit_group     # type: ignore[assignment]
sys.exit(committer.main(sys.argv[1:]))
