"""Shared value types: the SMTP stages, what is known about a session and an envelope, queue ids.

Everything here is a plain immutable value. Every other layer may import this module; it
imports nothing of frontfilter's.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
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
