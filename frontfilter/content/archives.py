"""Archive members, listed and read in memory under a per-message budget. Never extracts.

Formats: zip (stdlib `zipfile`, including zips with data prepended, e.g. self-extractors and
polyglots), gzip (stdlib `gzip`), tar (stdlib `tarfile`). Others (rar, 7z, cab …) are reported
by their detected type only.

Bounds (from `InspectionLimits`, shared by all archives of one message through `Budget`):
- `max_archive_members`: entries of all archives together (directories count); past it, the
  listing stops and `Limit.ARCHIVE_MEMBERS` is recorded.
- `max_expanded_size`: uncompressed bytes read from all members together. Members are read in
  64 KiB chunks and reading stops at the bound, so a bomb never fully inflates.
- `max_compression_ratio`: a member whose read bytes pass ratio x compressed size (and at least
  RATIO_FLOOR_BYTES: a tiny member cannot hurt, and small runs of zeros compress very well)
  stops there; `Limit.COMPRESSION_RATIO` is recorded. The sizes the archive *declares* are not
  trusted; only bytes actually produced count.
- `max_archive_depth` is applied by the caller (`inspect`), which recurses into members.
Known gap: zip is read through its central directory, as most tools do; a zip whose local
headers disagree with its central directory is read the central directory's way (zipfile
refuses a member whose local name differs, which we report as unreadable).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from dataclasses import dataclass, field

from frontfilter.content.limits import InspectionLimits
from frontfilter.content.view import Limit

CHUNK_BYTES = 64 * 1024
RATIO_FLOOR_BYTES = 1024 * 1024
_EOCD = b"PK\x05\x06"
_EOCD_SEARCH_BYTES = 65536 + 22   # the end record sits in the last 22 bytes + a 64 KiB comment


@dataclass
class Budget:
    """What all archives of one message may still use. Mutable; owned by one `inspect` call."""

    limits: InspectionLimits
    exceeded: set[Limit] = field(default_factory=set)
    members: int = 0
    expanded_bytes: int = 0


@dataclass(frozen=True)
class Member:
    name: str                 # as stored in the archive, decoded
    data: bytes | None        # None when it could not be read (encrypted, unsupported, broken)
    encrypted: bool = False
    truncated: bool = False   # reading stopped at a bound; `data` is the prefix read


def kind(payload: bytes, detected_type: str) -> str | None:
    """"zip", "gzip", "tar" or None, by content (the sender's name and type do not count)."""
    if payload[:2] == b"\x1f\x8b":
        return "gzip"
    if payload[:4] == b"PK\x03\x04" or _EOCD in payload[-_EOCD_SEARCH_BYTES:]:
        return "zip"
    if payload[257:262] == b"ustar" or detected_type == "application/x-tar":
        return "tar"
    return None


def members(payload: bytes, archive_kind: str, budget: Budget) -> tuple[list[Member], bool]:
    """(members, readable): `readable` is False when the container itself could not be opened."""
    try:
        if archive_kind == "zip":
            return _zip(payload, budget), True
        if archive_kind == "gzip":
            return _gzip(payload, budget), True
        if archive_kind == "tar":
            return _tar(payload, budget), True
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError, OverflowError, IndexError):
        return [], False
    return [], False


def _take_member(budget: Budget) -> bool:
    if budget.members >= budget.limits.max_archive_members:
        budget.exceeded.add(Limit.ARCHIVE_MEMBERS)
        return False
    budget.members += 1
    return True


def _read_bounded(stream: io.BufferedIOBase, compressed_bytes: int | None, budget: Budget) -> tuple[bytes, bool]:
    """Read a member in chunks until EOF or a bound. Returns (bytes read, truncated)."""
    limits = budget.limits
    ratio_cap = None
    if compressed_bytes is not None:
        ratio_cap = max(limits.max_compression_ratio * max(compressed_bytes, 1), RATIO_FLOOR_BYTES)
    chunks = []
    total = 0
    while True:
        room = limits.max_expanded_size - budget.expanded_bytes
        if room <= 0:
            budget.exceeded.add(Limit.EXPANDED_SIZE)
            return b"".join(chunks), True
        if ratio_cap is not None and total >= ratio_cap:
            try:
                more = stream.read(1)
            except Exception:
                more = b""
            if not more:  # ended exactly at the cap: within the ratio
                return b"".join(chunks), False
            budget.exceeded.add(Limit.COMPRESSION_RATIO)
            return b"".join(chunks), True
        want = min(CHUNK_BYTES, room, ratio_cap - total if ratio_cap is not None else room)
        try:
            chunk = stream.read(want)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError, IndexError):
            # A bad CRC or a truncated stream: keep what a client would have got so far.
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        total += len(chunk)
        budget.expanded_bytes += len(chunk)


def _zip(payload: bytes, budget: Budget) -> list[Member]:
    found: list[Member] = []
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for info in archive.infolist():
            if not _take_member(budget):
                break
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:  # APPNOTE 4.4.4 bit 0: encrypted; cannot be read
                found.append(Member(info.filename, None, encrypted=True))
                continue
            try:
                with archive.open(info) as stream:
                    data, truncated = _read_bounded(stream, info.compress_size, budget)
            except (zipfile.BadZipFile, NotImplementedError, OSError, ValueError, RuntimeError,
                    EOFError, KeyError, IndexError):
                found.append(Member(info.filename, None))
                continue
            found.append(Member(info.filename, data, truncated=truncated))
    return found


def _gzip_name(payload: bytes) -> str:
    """RFC 1952 §2.3: the optional FNAME field, after the optional FEXTRA field."""
    flags = payload[3] if len(payload) > 3 else 0
    position = 10
    if flags & 0x04 and len(payload) >= 12:
        position += 2 + int.from_bytes(payload[10:12], "little")
    if flags & 0x08:
        end = payload.find(b"\0", position, position + 1024)
        if end != -1:
            return payload[position:end].decode("latin-1")
    return ""


def _gzip(payload: bytes, budget: Budget) -> list[Member]:
    if not _take_member(budget):
        return []
    with gzip.GzipFile(fileobj=io.BytesIO(payload)) as stream:
        data, truncated = _read_bounded(stream, len(payload), budget)  # type: ignore[arg-type]
    return [Member(_gzip_name(payload) or "", data, truncated=truncated)]


def _tar(payload: bytes, budget: Budget) -> list[Member]:
    found: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
        while True:
            try:
                info = archive.next()
            except tarfile.TarError:
                break
            if info is None or not _take_member(budget):
                break
            if not info.isfile():
                continue
            stream = archive.extractfile(info)
            if stream is None:
                continue
            # tar does not compress: only the expanded-size budget applies.
            data, truncated = _read_bounded(stream, None, budget)  # type: ignore[arg-type]
            found.append(Member(info.name, data, truncated=truncated))
    return found
