"""Shared value types: the SMTP stages, what is known about a session and an envelope, queue ids.

Everything here is a plain immutable value. Every other layer may import this module; it
imports nothing of frontfilter's.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import mmap
import secrets
import time
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The plain addr-spec nearly every client sends: dot-atom local part, dotted host name. Both the
# SMTP side's fast path (`smtp.paths`) and the forwarder's (`delivery.wire.path`) take it as it
# is and leave anything else to a full reading (RFC 5321's grammar in `smtp.paths`, aiosmtplib's
# `quote_address` in `delivery.wire`).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"


class CrlfText(bytes):
    """A message whose line ends are all CRLF, with no other CR or LF anywhere.

    Made only where that is known: by `smtp.data.DataCollector`, which refuses anything else.
    (The header fields frontfilter adds, `content.rewrite.header_fields`, travel apart from the
    message, never joined to it.) The forwarder then dot-stuffs it without counting its line
    ends again (`delivery.wire`: three passes over the message on the event loop, 5 % of it on
    100 KB mail). Anything derived from it by slicing or joining is plain `bytes`, and is
    checked.

    Only messages up to `MAX_MARKED` bytes are made one: CPython builds a bytes subclass
    through a temporary plain copy, and two extra copies of a 25 MB message at once are what
    the peak-memory bound cannot afford (the forwarder counts a big one in a thread)."""

    __slots__ = ()

    MAX_MARKED = 1024 * 1024

    @classmethod
    def marked(cls, data: bytes | bytearray | memoryview) -> bytes:
        """`data` as CrlfText when small enough, else as plain bytes: the caller knows it clean."""
        return cls(data) if len(data) <= cls.MAX_MARKED else bytes(data)


class DotFreeText(CrlfText):
    """CrlfText in which no line starts with a dot: nothing to stuff, so the forwarder sends it
    as it is, without searching it for `<CRLF>.` (120 us on the event loop per 100 KB here).

    Made by `smtp.data.DataCollector` when the client stuffed no line (its terminator search
    sees the first dotted line anyway)."""

    __slots__ = ()


class MappedText(mmap.mmap):
    """Bytes read through a mapping of the file that holds them, not copied into the process's
    memory: a big message in its spill file (`SpilledMessage`), a big archive being read
    (content/scratch.py).

    Read like bytes: the buffer protocol, slices, `re`, and `find`, `rfind`, `startswith`,
    `endswith` and `in` as bytes answer them (mmap's own differ: below). Not `==`: a mapping
    equals only itself. A page read through the mapping stays mapped, and counts in the
    process's RSS, until `release` drops the mapping's pages: the readers of a whole big
    message (a part's decoding, the spool write, the forwarder's writes) release behind them,
    so its pages are not held beside what is decoded from them. The pages stay in the page
    cache; reading them again costs a minor fault.

    The price of a mapping: a disk that fails to read a page back (the page cache evicted it
    first) is SIGBUS, the end of the process, not an OSError for one message. Those read it on
    the event loop (the forwarder, clamd) copy its slices in a thread, so that a page read from
    disk does not stall the loop."""

    # mmap's own find and rfind search from the mapping's file position when no start is
    # given (after zipfile has read the mapping, that is its end) and clamp a start past the
    # end; bytes search from 0 and find nothing past the end. These answer as bytes do.
    def find(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:  # type: ignore[override]
        first, last = self._bounds(start, end)
        return -1 if last - first < len(sub) else super().find(sub, first, last)

    def rfind(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:  # type: ignore[override]
        first, last = self._bounds(start, end)
        return -1 if last - first < len(sub) else super().rfind(sub, first, last)

    def _bounds(self, start: int | None, end: int | None) -> tuple[int, int]:
        size = len(self)
        first = 0 if start is None else max(start + size, 0) if start < 0 else start
        last = size if end is None else max(end + size, 0) if end < 0 else min(end, size)
        return first, last

    def startswith(self, prefix: bytes | tuple[bytes, ...], start: int | None = None, end: int | None = None) -> bool:
        first, last = self._bounds(start, end)
        prefixes = prefix if isinstance(prefix, tuple) else (prefix,)
        return first <= len(self) and any(
            last - first >= len(p) and self[first:first + len(p)] == p for p in prefixes)

    def endswith(self, suffix: bytes | tuple[bytes, ...], start: int | None = None, end: int | None = None) -> bool:
        first, last = self._bounds(start, end)
        suffixes = suffix if isinstance(suffix, tuple) else (suffix,)
        return first <= len(self) and any(
            last - first >= len(s) and self[last - len(s):last] == s for s in suffixes)

    def __contains__(self, sub: object) -> bool:
        if isinstance(sub, int):
            return self.find(bytes((sub,))) != -1       # bytes((300,)) raises, as bytes do
        if not isinstance(sub, (bytes, bytearray, memoryview)):
            raise TypeError(f"a bytes-like object is required, not {type(sub).__name__!r}")
        return self.find(bytes(sub)) != -1

    def seekable(self) -> bool:
        """A file to read (`zipfile` asks; mmap has the method from Python 3.13 on)."""
        return True

    def release(self) -> None:
        """Drop the pages mapped so far from this process (not from the page cache)."""
        if not self.closed and len(self):
            self.madvise(mmap.MADV_DONTNEED)


class SpilledMessage(MappedText):
    """A message in its spill file, mapped read-only: what DotFreeText is (CRLF-clean, no
    dotted line), made only by `smtp.data.SpilledBody.map` from a message the client stuffed
    nowhere, so the forwarder sends it as it is."""


# A message as the pipeline carries it: in memory, or (big) mapped from its spill file.
MessageBytes = bytes | MappedText


def release_pages(data: object) -> None:
    """`MappedText.release` where `data` is one; nothing for bytes."""
    if isinstance(data, MappedText):
        data.release()


class Stage(enum.Enum):
    """The points of the SMTP dialogue where a decision can be taken (milter style)."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"

    @property
    def order(self) -> int:
        return _STAGE_ORDER[self]


_STAGE_ORDER = {stage: index for index, stage in enumerate(Stage)}


@dataclass(frozen=True)
class Peer:
    """The client as policy sees it: after PROXY protocol, the real address."""

    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:
        """Made once: the log line, the rules and the Received header each ask for it."""
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class SessionFacts:
    """What is known about the connection at a given moment."""

    peer: Peer
    helo: str | None = None
    tls: bool = False
    auth_user: str | None = None


@dataclass(frozen=True)
class EnvelopeFacts:
    """What is known about the transaction: sender ("" is the null sender), accepted recipients."""

    sender: str | None = None
    recipients: tuple[str, ...] = field(default_factory=tuple)
    smtputf8: bool = False


# Queue ids: 12 characters of time prefix + random, sortable by arrival, safe as file names.
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"


def new_queue_id() -> str:
    """A queue id that sorts by arrival time and never collides in practice (60 random bits)."""
    stamp = int(time.time() * 1000)
    head = []
    for _ in range(9):
        stamp, digit = divmod(stamp, len(_ALPHABET))
        head.append(_ALPHABET[digit])
    # One read of the system's randomness, cut into digits (a choice per character cost a
    # syscall each: 12% of the event loop's time in the bench profile).
    bits = int.from_bytes(secrets.token_bytes(8))
    tail = []
    for _ in range(12):
        bits, digit = divmod(bits, len(_ALPHABET))
        tail.append(_ALPHABET[digit])
    return "".join(reversed(head)) + "".join(tail)
