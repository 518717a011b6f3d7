"""`frontfilter quarantine list | show ID | release ID… | delete ID… | expire`: for administrators.

Safe while the relay runs, with one process or several, and with it stopped: the files are the
only truth (delivery/quarantine/store.py), and every change is made under the file's flock, which the
relay's retention takes too (delivery/quarantine/retention.py). A file someone else holds is skipped
with a line saying so — never released and deleted both.
- `list` and `show` only read: a held file never changes once written.
- `release` puts messages back on their way (tools/release.py) and leaves a record for the
  relay to log and count (delivery/quarantine/ledger.py).
- `delete` removes messages for good (the sender is not told: the administrator decided).
- `expire` runs the retention once now, as the relay would, and reports what it removed; the
  relay logs and counts those removals from the tool's records.

Output is built here as lines (or JSON-ready values with `--json`); `cli.py` prints them and
exits 0 when every id went well, 1 when one did not (busy, not held, refused). Ids are checked
against `spool.VALID_ID` before they become paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from frontfilter.config import Config
from frontfilter.delivery import safeio
from frontfilter.delivery.quarantine import ledger, retention, store
from frontfilter.tools import release
from frontfilter.tools import show as shown

# `show` prints the message's header block up to this (inspection.max_header_bytes' default).
MAX_SHOWN_HEADER_BYTES = 256 * 1024


class QuarantineToolError(Exception):
    """A problem with the quarantine as a whole, or with the one id asked for: one line."""


@dataclass(frozen=True)
class Result:
    lines: list[str]
    ok: bool = True


def run(config: Config, action: str, ids: Sequence[str] = (), to: Sequence[str] = (),
        rescan: bool = False, as_json: bool = False, now: float | None = None) -> Result:
    root = config.quarantine.dir
    now = time.time() if now is None else now
    try:
        if action == "list":
            return list_held(root, now, as_json)
        if action == "show":
            return show(root, ids[0], now, as_json)
        if action == "release":
            return release_all(config, ids, to, rescan, now)
        if action == "delete":
            return delete(root, ids)
        if action == "expire":
            return expire(config, now)
    except OSError as error:
        raise QuarantineToolError(f"{error.filename or root}: {error.strerror or error}") from None
    raise QuarantineToolError(f"{action!r}: not a quarantine action")


# ---- formatting ---------------------------------------------------------------------------







def _addresses(addresses: Sequence[str]) -> str:
    return ", ".join(f"<{a}>" for a in addresses) or "-"


def printable(line: str) -> str:
    """A stored text made safe to print on a terminal (controls and escapes shown, not run):
    file names, header fields and addresses came from the sender."""
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in line)


def header_block(body: bytes) -> bytes:
    """The message's header block (up to the empty line), at most MAX_SHOWN_HEADER_BYTES."""
    end = body.find(b"\r\n\r\n")
    if end < 0:
        end = body.find(b"\n\n")
    block = body if end < 0 else body[:end]
    return block[:MAX_SHOWN_HEADER_BYTES]


def metadata_json(meta: store.Held, entry: store.Entry | None = None) -> dict[str, object]:
    """The metadata for `--json` (scripts): the file's own fields, and whether it is legacy."""
    data = asdict(meta)
    data["recipients"] = list(meta.recipients)
    data["options"] = list(meta.options)
    data["reasons"] = list(meta.reasons)
    data["parts"] = [asdict(p) for p in meta.parts]
    if entry is not None:
        data["file_size"] = entry.size
    return data


def _valid(queue_id: str) -> None:
    if not store.valid_id(queue_id):
        raise QuarantineToolError(f"{queue_id!r}: not a quarantine id")


# ---- list -----------------------------------------------------------------------------------

def list_held(root: Path, now: float, as_json: bool = False) -> Result:
    """One line per held message, oldest first: id, age, the message's size, rule, sender ->
    recipients; then the count and the room the files take on disk (what max_size bounds)."""
    items, problems = [], []
    for entry in store.scan(root):
        try:
            items.append((entry, store.read_meta(entry)))
        except FileNotFoundError:
            continue                         # released, deleted or expired while we looked
        except store.QuarantineFormatError as error:
            problems.append(f"unreadable: {entry.id}: {error}")
    if as_json:
        listed = [{**metadata_json(meta, entry), "age": round(now - entry.mtime, 3)} for entry, meta in items]
        return Result([json.dumps(listed, indent=2, ensure_ascii=False)], not problems)
    if not items and not problems:
        return Result(["Quarantine is empty."])
    lines = [f"{'QUARANTINE ID':<22} {'AGE':>7} {'SIZE':>7}  {'RULE':<20}  SENDER -> RECIPIENTS"]
    for entry, meta in items:
        rule = (meta.rule or "-") + (" (legacy)" if meta.legacy else "")
        recipients = "(legacy: --to needed)" if meta.legacy else _addresses(meta.recipients)
        lines.append(printable(f"{entry.id:<22} {shown.duration(now - entry.mtime):>7} {shown.size(meta.size):>7}  "
                                     f"{rule:<20}  <{meta.sender}> -> {recipients}"))
    total = sum(entry.size for entry, _ in items)
    lines.append(f"-- {len(items)} message{'s' if len(items) != 1 else ''}, {shown.size(total)}"
                 + (" bytes" if total < 1024 else "") + " on disk")
    lines.extend(problems)
    return Result(lines, not problems)


# ---- show -----------------------------------------------------------------------------------

def show(root: Path, queue_id: str, now: float, as_json: bool = False) -> Result:
    """The metadata, the rule and its reasons, the part tree and the message's header block."""
    _valid(queue_id)
    path = store.find(root, queue_id)
    if path is None:
        raise QuarantineToolError(f"{queue_id}: not in the quarantine")
    try:
        meta, body = store.read(path, queue_id)
    except FileNotFoundError:
        raise QuarantineToolError(f"{queue_id}: not in the quarantine") from None
    except store.QuarantineFormatError as error:
        raise QuarantineToolError(f"{queue_id}: {error}") from None
    headers = header_block(body).decode("utf-8", "replace")
    if as_json:
        document = {**metadata_json(meta), "file": str(path), "age": round(now - meta.arrived, 3),
                    "headers": headers}
        return Result([json.dumps(document, indent=2, ensure_ascii=False)])
    session = [f"HELO {meta.helo or '-'}"]
    if meta.tls:
        session.append("TLS")
    if meta.auth_user:
        session.append(f"AUTH {meta.auth_user}")
    lines = [f"quarantine id: {meta.id}" + ("  (legacy file: its envelope is not trusted)" if meta.legacy else ""),
             f"file:          {path}",
             f"held:          {shown.utc(meta.arrived)} UTC ({shown.duration(now - meta.arrived)} ago)",
             f"client:        {meta.client or '-'} ({', '.join(session)})",
             f"sender:        <{meta.sender}>",
             f"recipients:    {_addresses(meta.recipients)}",
             f"options:       {' '.join(meta.options) or '-'}",
             f"size:          {meta.size} bytes",
             f"rule:          {meta.rule or '-'}",
             f"reply:         {meta.reply or '-'}"]
    if meta.reasons:
        lines.append("reasons:")
        lines.extend(f"  {reason}" for reason in meta.reasons)
    if meta.parts:
        lines.append("parts:")
        for part in meta.parts:
            name = f" {part.filename!r}" if part.filename else ""
            where = " [in archive]" if part.in_archive else ""
            lines.append(f"  {part.path}{name} declared={part.declared_type or '-'} "
                         f"detected={part.detected_type or '-'} size={part.size}{where}")
    if meta.parts_omitted:
        lines.append(f"  ({meta.parts_omitted} more parts not recorded)")
    lines.append("headers:")
    lines.extend(f"  {line}" for line in headers.splitlines())
    return Result([printable(line) for line in lines])


# ---- release, delete ----------------------------------------------------------------------------

def release_all(config: Config, ids: Sequence[str], to: Sequence[str], rescan: bool, now: float) -> Result:
    return _each(ids, "released", lambda queue_id: release.release_one(
        config, config.quarantine.dir, queue_id, to, rescan, now))


def delete(root: Path, ids: Sequence[str]) -> Result:
    """Remove held messages for good, each under its lock (none waited for)."""
    def remove(queue_id: str) -> str:
        path = store.find(root, queue_id)
        if path is None:
            raise safeio.Gone(queue_id)
        with safeio.lock_file(path):
            safeio.unlink_durably(path)
        return f"{queue_id}: deleted"
    return _each(ids, "deleted", remove)


def _each(ids: Sequence[str], done: str, act: Callable[[str], str]) -> Result:
    """`act` on each id (valid ones only), and one line for each: what it did, or what stopped
    it (the message then stays held)."""
    lines, ok = [], True
    for queue_id in ids:
        try:
            _valid(queue_id)
            lines.append(act(queue_id))
            continue
        except (QuarantineToolError, release.ReleaseError) as error:
            lines.append(str(error))
        except safeio.Gone:
            lines.append(f"{queue_id}: not in the quarantine (released, deleted or expired already?)")
        except safeio.Busy:
            lines.append(f"{queue_id}: busy (another process is releasing, deleting or expiring it): skipped")
        except store.QuarantineFormatError as error:
            lines.append(f"{queue_id}: {error}: not {done}")
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            lines.append(f"{queue_id}: {where}{error.strerror or error}: not {done} (still held)")
        ok = False
    return Result(lines, ok)


# ---- expire -----------------------------------------------------------------------------------

def expire(config: Config, now: float) -> Result:
    """The relay's retention, once, now; each removal is left in the ledger for the relay."""
    settings = config.quarantine
    swept = retention.sweep(settings.dir, settings.max_age, settings.max_size, now)
    lines = []
    for removed in swept.removed:
        ledger.record(settings.dir, "expired", removed.id, reason=removed.reason, rule=removed.rule,
                      sender=removed.sender, age=round(removed.age), size=removed.size, legacy=removed.legacy)
        why = (f"held {shown.duration(removed.age)}, quarantine.max_age is {shown.duration(settings.max_age)}"
               if removed.reason == "age" else f"quarantine over quarantine.max_size ({shown.size(settings.max_size)})")
        lines.append(f"{removed.id}: expired ({why}; rule {removed.rule or '-'})")
    for queue_id in swept.busy:
        lines.append(f"{queue_id}: due, but busy (being released or deleted): skipped")
    lines.append(f"-- {len(swept.removed)} removed; {swept.messages} message{'s' if swept.messages != 1 else ''}"
                 f" held, {shown.size(swept.bytes)}" + (" bytes" if swept.bytes < 1024 else "")
                 + (f", oldest {shown.duration(swept.oldest_age)}" if swept.messages else ""))
    return Result(lines, not swept.busy)

