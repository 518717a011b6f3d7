"""The quarantine's files: `QDIR/ID.held`, written once, read by the tool, removed when done.

Format (the spool's, delivery/spool.py, with its own magic):

    FRONTFILTER-QUARANTINE 1\\n
    one line of JSON: the metadata (`Held`)\\n
    the message bytes exactly as the client sent them (`Held.size` bytes)

The metadata is written by the relay, never taken from the message, so nothing a sender puts in
its message can pass for the envelope. It holds what `show` and `release` need without
inspecting the message again: the envelope (sender, recipients, the MAIL options kept for the
backend), the session (client, HELO, AUTH user, TLS), the rule that held it and every matched
rule's reasons, the reply the client got, and the part tree the inspection saw.

Guarantees: `write` is the spool's durable write (safeio.write_atomically: fsynced, renamed,
directory fsynced; mode 0600 in a 0700 directory it creates), so a held message is whole or
absent, and private; the pipeline answers only once it returned. A file whose first line, JSON
or length is wrong raises `QuarantineFormatError` (named, never guessed at). Ids are checked
against `spool.VALID_ID` before they become paths.

Legacy files: the previous format, `QDIR/ID.eml`, was the message with leading
`X-Frontfilter-Quarantine`, `-Envelope-From` and `-Envelope-To` lines. They are read best
effort (`Held.legacy`): the first two lines were the relay's, but a sender could put its own
`X-Frontfilter-Envelope-To:` lines at the top of its message, so their recipients are never
trusted (a release needs `--to`).

Bounds: MAX_METADATA_BYTES on the metadata line (the spool's envelope bound); MAX_TEXT_CHARS on
each text the message supplied (file names, types, reasons); MAX_LISTED_PARTS parts listed. A
part tree that still does not fit is cut (`parts_omitted` says how many), rather than lose the
message: only the envelope itself can make a metadata line too long, and the spool would refuse
that envelope too. Everything here blocks: call it from a thread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from frontfilter.delivery import safeio
from frontfilter.delivery.spool import VALID_ID, Envelope
from frontfilter.mapped import MessageBytes

MAGIC = b"FRONTFILTER-QUARANTINE 1\n"
HELD_SUFFIX = ".held"
LEGACY_SUFFIX = ".eml"
# The metadata line: recipients of up to 256 octets each (RFC 5321 §4.5.3.1.3), the session
# facts, the reasons and the part tree: the spool's envelope bound, which is far above it.
MAX_METADATA_BYTES = 1024 * 1024
# Texts that came from the message (file names, declared types, reasons quoting them): a
# crafted 200 KB file name must not fill the line the envelope needs.
MAX_TEXT_CHARS = 1000
# inspection.max_parts (500) plus archive members: a tree longer than this is summarised.
MAX_LISTED_PARTS = 2000
# The legacy format's leading lines are read from the first bytes only.
LEGACY_HEAD_BYTES = 1024 * 1024
_LEGACY_HOLD = b"X-Frontfilter-Quarantine: "
_LEGACY_FROM = b"X-Frontfilter-Envelope-From: "
_LEGACY_TO = b"X-Frontfilter-Envelope-To: "
_RULE_IN_LEGACY = re.compile(rb"rule=(\S*)")
_CLIENT_IN_LEGACY = re.compile(rb"client=(\S*)")


class QuarantineFormatError(Exception):
    """A quarantine file that cannot be read as one (damaged, or edited by hand)."""


@dataclass(frozen=True)
class PartSummary:
    """One part as the inspection saw it (content/facts.py Part), for `show`."""

    path: str
    filename: str | None
    declared_type: str
    detected_type: str
    size: int
    in_archive: bool = False


@dataclass(frozen=True)
class Held:
    """A held message's metadata: who sent it to whom, from where, and why it is held."""

    id: str                               # the queue id the client saw
    arrived: float                        # Unix time it was held
    sender: str                           # "" is the null sender
    recipients: tuple[str, ...]
    client: str = ""
    helo: str = ""
    auth_user: str | None = None
    tls: bool = False
    options: tuple[str, ...] = ()         # MAIL parameters kept for the backend: BODY=, SMTPUTF8
    rule: str = ""                        # the rule that held it (verdict.rule)
    reasons: tuple[str, ...] = ()         # every matched rule and why (verdict.explain())
    reply: str = ""                       # what the client was answered
    size: int = 0                         # bytes of the message after the metadata line
    parts: tuple[PartSummary, ...] = ()
    parts_omitted: int = 0                # parts left out of `parts` (MAX_LISTED_PARTS, the bound)
    legacy: bool = False                  # read from a previous-format .eml (never written)

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["legacy"]
        # ASCII only: a file name decoded with surrogates stays representable, and the line
        # can hold no raw newline.
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, raw: bytes) -> Held:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            parts = tuple(PartSummary(path=str(p["path"]), filename=_optional(p.get("filename")),
                                      declared_type=str(p.get("declared_type", "")),
                                      detected_type=str(p.get("detected_type", "")),
                                      size=int(p.get("size", 0)), in_archive=bool(p.get("in_archive", False)))
                          for p in data.get("parts", ()))
            recipients = data["recipients"]
            if not isinstance(recipients, list) or not recipients:
                raise ValueError("no recipients")
            return cls(id=str(data["id"]), arrived=float(data["arrived"]), sender=str(data["sender"]),
                       recipients=tuple(str(r) for r in recipients),
                       client=str(data.get("client", "")), helo=str(data.get("helo", "")),
                       auth_user=_optional(data.get("auth_user")), tls=bool(data.get("tls", False)),
                       options=tuple(str(o) for o in data.get("options", ())),
                       rule=str(data.get("rule", "")), reasons=tuple(str(r) for r in data.get("reasons", ())),
                       reply=str(data.get("reply", "")), size=int(data["size"]), parts=parts,
                       parts_omitted=int(data.get("parts_omitted", 0)))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise QuarantineFormatError(f"metadata unreadable: {error}") from None


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def summarise_parts(parts: Iterable[Any]) -> tuple[PartSummary, ...]:
    """The part tree of a `MessageView` (content/facts.py), as the metadata keeps it."""
    return tuple(PartSummary(path=_clip(p.path) or "", filename=_clip(p.filename),
                             declared_type=_clip(p.declared_type) or "",
                             detected_type=_clip(p.detected_type) or "", size=int(p.size),
                             in_archive=bool(p.in_archive))
                 for p in parts)


def held(envelope: Envelope, *, arrived: float, auth_user: str | None, tls: bool, rule: str | None,
         reasons: Iterable[str], reply: str, size: int, parts: Iterable[Any]) -> Held:
    """The metadata of a message the pipeline is holding: its spool envelope (recipients
    normalised, MAIL options filtered as for forwarding) and what the rules said."""
    return Held(id=envelope.id, arrived=arrived, sender=envelope.sender, recipients=envelope.recipients,
                client=envelope.client, helo=envelope.helo, auth_user=auth_user, tls=tls,
                options=envelope.options, rule=rule or "", reasons=tuple(_clip(r) or "" for r in reasons),
                reply=reply, size=size, parts=summarise_parts(parts))


def _metadata_line(meta: Held) -> bytes:
    """The JSON line, the part tree cut until it fits MAX_METADATA_BYTES."""
    listed = meta.parts[:MAX_LISTED_PARTS]
    meta = replace(meta, parts=listed, parts_omitted=meta.parts_omitted + len(meta.parts) - len(listed))
    line = meta.to_json()
    while len(line) > MAX_METADATA_BYTES and meta.parts:
        keep = len(meta.parts) // 2
        meta = replace(meta, parts=meta.parts[:keep],
                       parts_omitted=meta.parts_omitted + len(meta.parts) - keep)
        line = meta.to_json()
    if len(line) > MAX_METADATA_BYTES:
        meta = replace(meta, reasons=meta.reasons[:1])
        line = meta.to_json()
    if len(line) > MAX_METADATA_BYTES:
        raise QuarantineFormatError(f"metadata of {len(line)} bytes: over {MAX_METADATA_BYTES}")
    return line


# ---- paths ----------------------------------------------------------------------------------

def valid_id(queue_id: str) -> bool:
    return bool(VALID_ID.match(queue_id))


def held_path(root: Path, queue_id: str) -> Path:
    return root / f"{queue_id}{HELD_SUFFIX}"


def legacy_path(root: Path, queue_id: str) -> Path:
    return root / f"{queue_id}{LEGACY_SUFFIX}"


def owner_of(root: Path) -> tuple[int, int] | None:
    """(uid, gid) of the quarantine directory: the daemon's user, whom every file the tool
    writes must belong to (run as root, it would leave files the daemon cannot read)."""
    try:
        stat = os.stat(root)
    except OSError:
        return None
    return stat.st_uid, stat.st_gid


def ensure_private_dir(directory: Path, owner: tuple[int, int] | None) -> None:
    """safeio.ensure_dir, then given to `owner` when we are root and made it."""
    existed = directory.is_dir()
    safeio.ensure_dir(directory)
    if not existed and owner is not None and os.geteuid() == 0:
        os.chown(directory, *owner)


# ---- write ----------------------------------------------------------------------------------

def write(root: Path, meta: Held, raw: MessageBytes) -> os.stat_result:
    """Hold a message durably (the pipeline, before its reply). Raises OSError (disk full:
    safeio.is_disk_full), or QuarantineFormatError for an envelope too large to record."""
    line = _metadata_line(replace(meta, size=len(raw)))
    safeio.ensure_dir(root)
    return safeio.write_atomically(root, held_path(root, meta.id), (MAGIC, line, b"\n", raw))


# ---- read -----------------------------------------------------------------------------------

def parse_head(head: bytes) -> tuple[Held, int]:
    """The metadata at the start of a .held file (or of its first bytes), and where the
    message begins."""
    if not head.startswith(MAGIC):
        raise QuarantineFormatError("not a frontfilter quarantine file (bad first line)")
    end = head.find(b"\n", len(MAGIC), len(MAGIC) + MAX_METADATA_BYTES + 1)
    if end < 0:
        raise QuarantineFormatError("metadata line missing or too long")
    return Held.from_json(head[len(MAGIC):end]), end + 1


def parse(raw: bytes, queue_id: str) -> tuple[Held, bytes]:
    """A whole .held file: its metadata and the message, both checked."""
    meta, start = parse_head(raw)
    body = raw[start:]
    if len(body) != meta.size:
        raise QuarantineFormatError(f"message is {len(body)} bytes, the metadata says {meta.size}")
    if meta.id != queue_id:
        raise QuarantineFormatError(f"file says it is {meta.id}")
    return meta, body


def parse_legacy(raw: bytes, queue_id: str, mtime: float, complete: bool = True) -> tuple[Held, bytes]:
    """A previous-format .eml (best effort, `legacy`): its leading lines, and the message after
    them. The recipients it names cannot be told from lines the sender wrote (module doc)."""
    if not raw.startswith(_LEGACY_HOLD):
        raise QuarantineFormatError("not a frontfilter quarantine file (no X-Frontfilter-Quarantine line)")
    lines, offset = [], 0
    while offset < len(raw):
        end = raw.find(b"\n", offset)
        if end < 0:
            raise QuarantineFormatError("leading lines unterminated")
        line = raw[offset:end + 1]
        if offset and not line.startswith((_LEGACY_FROM, _LEGACY_TO)):
            break
        lines.append(line.rstrip(b"\r\n"))
        offset = end + 1
    first = lines[0]
    rule = _RULE_IN_LEGACY.search(first)
    client = _CLIENT_IN_LEGACY.search(first)
    sender = next((line[len(_LEGACY_FROM):] for line in lines[1:2] if line.startswith(_LEGACY_FROM)), b"<>")
    recipients = tuple(_unbracket(line[len(_LEGACY_TO):]) for line in lines if line.startswith(_LEGACY_TO))
    body = raw[offset:]
    meta = Held(id=queue_id, arrived=mtime, sender=_unbracket(sender), recipients=recipients,
                client=client.group(1).decode("utf-8", "replace") if client else "",
                rule=rule.group(1).decode("utf-8", "replace") if rule else "",
                size=len(body) if complete else 0, legacy=True)
    return meta, body


def _unbracket(value: bytes) -> str:
    text = value.decode("utf-8", "replace").strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


@dataclass(frozen=True)
class Entry:
    """A quarantine file as the directory lists it."""

    id: str
    path: Path
    size: int                # bytes on disk
    mtime: float             # when it was written: when the message was held
    legacy: bool = False


def scan(root: Path) -> list[Entry]:
    """Every held message (both formats), oldest first; [] when the directory does not exist
    (nothing was ever held). Temporaries and anything not named by a valid id are skipped."""
    found = []
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return []
    with entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if not dot or f".{suffix}" not in (HELD_SUFFIX, LEGACY_SUFFIX) or not valid_id(stem):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            found.append(Entry(stem, Path(entry.path), stat.st_size, stat.st_mtime, f".{suffix}" == LEGACY_SUFFIX))
    found.sort(key=lambda e: (e.mtime, e.id))
    return found


def find(root: Path, queue_id: str) -> Path | None:
    """The file holding `queue_id` (the current format first), or None."""
    for path in (held_path(root, queue_id), legacy_path(root, queue_id)):
        if path.exists():
            return path
    return None


def read_meta(entry: Entry) -> Held:
    """The metadata of a listed file, reading only its head."""
    with open(entry.path, "rb") as handle:
        if entry.legacy:
            head = handle.read(LEGACY_HEAD_BYTES)
            meta, body = parse_legacy(head, entry.id, entry.mtime, complete=False)
            return replace(meta, size=entry.size - (len(head) - len(body)))
        meta, _ = parse_head(handle.read(len(MAGIC) + MAX_METADATA_BYTES + 1))
    if meta.id != entry.id:
        raise QuarantineFormatError(f"file says it is {meta.id}")
    return meta


def read(path: Path, queue_id: str) -> tuple[Held, bytes]:
    """Metadata and message of one file (unlocked: the files never change once written)."""
    raw = path.read_bytes()
    if path.suffix == LEGACY_SUFFIX:
        return parse_legacy(raw, queue_id, path.stat().st_mtime)
    return parse(raw, queue_id)


class Locked:
    """A held message under its file's flock: read it, then remove it (or let go)."""

    def __init__(self, path: Path, queue_id: str, lock: safeio.LockedFile):
        self.path = path
        self.id = queue_id
        self._lock = lock
        stat = lock.stat()
        self.owner = (stat.st_uid, stat.st_gid)
        raw = lock.read_all()
        if path.suffix == LEGACY_SUFFIX:
            self.meta, self.body = parse_legacy(raw, queue_id, stat.st_mtime)
        else:
            self.meta, self.body = parse(raw, queue_id)

    def remove(self) -> None:
        """Durably gone (still locked: nobody else can act on it meanwhile)."""
        safeio.unlink_durably(self.path)

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> Locked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_locked(root: Path, queue_id: str, wait: float = 0.0) -> Locked:
    """Lock and read one held message. Raises safeio.Gone (not held), safeio.Busy (another
    process has it: a release, a delete, the retention), QuarantineFormatError."""
    path = find(root, queue_id)
    if path is None:
        raise safeio.Gone(str(held_path(root, queue_id)))
    lock = safeio.lock_file(path, wait=wait)
    try:
        return Locked(path, queue_id, lock)
    except BaseException:
        lock.close()
        raise
