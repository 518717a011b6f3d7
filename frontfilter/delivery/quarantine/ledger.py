"""What the `frontfilter quarantine` tool did, told to the running relay: `QDIR/.events/*.json`.

The tool is a process of its own: its counters would die with it, and the relay's metrics live
in the relay (in several workers' files with server.workers > 1, in a private directory). So
each release, and each expiry the tool runs itself, leaves one small record here, written
durably (safeio, owned by the daemon's user); the relay's periodic task (delivery/quarantine/expiry.py)
reads the records, logs each as one structured line, counts it
(`frontfilter_quarantine_released_total{rule}`, `frontfilter_quarantine_expired_total{reason}`)
and removes it. A record is written before the quarantine file is removed, so a release is
never silent; a crash between the two may have one counted twice (never lost).

Why not a control socket or a push gateway: nothing more listens, it works the same with the
relay stopped (the records wait) or with several workers (one of them reads), and the records
are an audit trail until then.

Bounds: MAX_RECORD_BYTES per record read (larger or unreadable ones are reported and removed);
MAX_RECORDS_PER_PASS records taken per pass, the rest the next pass. Blocking: call from threads.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frontfilter.delivery import safeio
from frontfilter.delivery.quarantine import store

EVENTS_DIR = ".events"
RECORD_SUFFIX = ".json"
# A record holds an id, a rule name, a few addresses: a few hundred bytes.
MAX_RECORD_BYTES = 64 * 1024
# A burst of releases (a script releasing thousands) is logged over several passes, not in one.
MAX_RECORDS_PER_PASS = 1000
KINDS = ("released", "expired")


@dataclass(frozen=True)
class Record:
    path: Path
    fields: dict[str, Any] | None     # None: unreadable (reported, then removed)
    problem: str = ""


def events_dir(root: Path) -> Path:
    return root / EVENTS_DIR


def record(root: Path, kind: str, queue_id: str, **fields: Any) -> Path:
    """Leave one record (durably) for the relay; returns its path."""
    assert kind in KINDS
    owner = store.owner_of(root)
    directory = events_dir(root)
    store.ensure_private_dir(directory, owner)
    path = directory / f"{kind}-{queue_id}-{time.time_ns()}{RECORD_SUFFIX}"
    body = json.dumps({"event": kind, "id": queue_id, "at": time.time(), **fields},
                      ensure_ascii=True).encode("ascii") + b"\n"
    safeio.write_atomically(directory, path, (body,), owner=owner)
    return path


def take(root: Path) -> list[Record]:
    """The records waiting, oldest first (at most MAX_RECORDS_PER_PASS); [] if there is no
    directory. Temporaries of a tool still writing are left alone."""
    directory = events_dir(root)
    try:
        names = sorted((n for n in os.listdir(directory) if n.endswith(RECORD_SUFFIX)),
                       key=lambda n: n.rsplit("-", 1)[-1])
    except FileNotFoundError:
        return []
    records = []
    for name in names[:MAX_RECORDS_PER_PASS]:
        path = directory / name
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            continue
        if len(raw) > MAX_RECORD_BYTES:
            records.append(Record(path, None, f"over {MAX_RECORD_BYTES} bytes"))
            continue
        try:
            fields = json.loads(raw)
            if not isinstance(fields, dict) or fields.get("event") not in KINDS:
                raise ValueError("not a quarantine event")
        except ValueError as error:
            records.append(Record(path, None, str(error)))
            continue
        records.append(Record(path, fields))
    return records


def remove(records: list[Record]) -> None:
    """The records have been logged and counted: gone, with one directory fsync."""
    directories = set()
    for item in records:
        try:
            os.unlink(item.path)
        except FileNotFoundError:
            continue
        directories.add(item.path.parent)
    for directory in directories:
        safeio.fsync_dir(directory)


def discard_stale_temps(root: Path, min_age: float = 0.0) -> int:
    """Temporaries whose writer died (a tool killed mid-write), `min_age` seconds old or more."""
    return safeio.discard_stale_temps(events_dir(root), min_age)


def waiting(root: Path, kind: str, queue_id: str) -> bool:
    """Whether a record of `kind` for `queue_id` still waits for the relay."""
    try:
        return any(n.startswith(f"{kind}-{queue_id}-") for n in os.listdir(events_dir(root)))
    except FileNotFoundError:
        return False
