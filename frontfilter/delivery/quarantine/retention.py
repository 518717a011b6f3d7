"""One pass of the quarantine's retention: `quarantine.max_age`, then `quarantine.max_size`.

Order: every message older than `max_age` goes (reason "age"); then, while the total of what
is left is over `max_size` (0: no bound), the oldest goes (reason "size"). Age is the time
since the file was written — when the message was held; the file never changes after — so
legacy `.eml` files, which have no metadata, age the same way.

Each removal takes the file's flock (delivery/safeio.py) without waiting: a file locked by
someone else (the tool releasing or deleting it) is skipped this pass — never both released and
expired — and left out of the size bound's sum meanwhile (it is about to go), though not out of
what the pass reports as held. The removals are made durable with one
fsync of the directory at the end (a removal lost in a crash is made again next pass).

Used by the relay's periodic task (delivery/quarantine/expiry.py) and by `frontfilter quarantine expire`.
Blocking: call it from a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from frontfilter.delivery import safeio
from frontfilter.delivery.quarantine import ledger, store


# Seconds before an unlocked temporary counts as left by a dead writer: far longer than any
# write takes, and one a crash left goes at the first pass after.
STALE_TEMP_AGE = 600.0


@dataclass(frozen=True)
class Removed:
    id: str
    reason: str              # "age" or "size"
    age: float               # seconds since it was held
    size: int                # bytes on disk
    rule: str = ""           # from its metadata, for the log line ("" when unreadable)
    sender: str = ""
    legacy: bool = False


@dataclass
class Sweep:
    removed: list[Removed] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)     # due, but locked by someone else: next pass
    messages: int = 0                                 # what is left
    bytes: int = 0
    oldest_age: float = 0.0


def sweep(root: Path, max_age: float, max_size: int, now: float) -> Sweep:
    """Remove what retention says must go; what was removed, and what is left."""
    result = Sweep()
    kept: list[store.Entry] = []
    for entry in store.scan(root):
        if now - entry.mtime <= max_age or not _remove(root, entry, "age", now, result):
            kept.append(entry)
    # A file someone holds is about to be released or deleted: it does not count against the
    # size bound this pass (a younger message is not removed for it), but it is still there.
    busy = set(result.busy)
    total = sum(entry.size for entry in kept if entry.id not in busy)
    if max_size:
        left = []
        for entry in kept:                            # oldest first
            if total > max_size and entry.id not in busy and _remove(root, entry, "size", now, result):
                total -= entry.size
                continue
            left.append(entry)
        kept = left
    if result.removed:
        safeio.fsync_dir(root)
    if root.is_dir():
        # Writes a crash cut short (never answered), and the same for the tool's event records;
        # not a write going on now, whose temporary is not locked yet (safeio.begin_write).
        safeio.discard_stale_temps(root, STALE_TEMP_AGE)
        ledger.discard_stale_temps(root, STALE_TEMP_AGE)
    result.messages = len(kept)
    result.bytes = sum(entry.size for entry in kept)
    result.oldest_age = max(0.0, now - kept[0].mtime) if kept else 0.0
    return result


def _remove(root: Path, entry: store.Entry, reason: str, now: float, result: Sweep) -> bool:
    """Remove one file under its lock; False (and noted) when someone else holds it."""
    try:
        with safeio.lock_file(entry.path):
            try:
                meta = store.read_meta(entry)
                rule, sender = meta.rule, meta.sender
            except (store.QuarantineFormatError, OSError, UnicodeError):
                rule, sender = "", ""
            os.unlink(entry.path)
    except safeio.Busy:
        result.busy.append(entry.id)
        return False
    except (safeio.Gone, FileNotFoundError):
        return True          # released or deleted meanwhile: gone either way, not by us
    result.removed.append(Removed(entry.id, reason, max(0.0, now - entry.mtime), entry.size,
                                  rule, sender, entry.legacy))
    return True
