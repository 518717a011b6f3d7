"""An asyncio client for clamd's INSTREAM command, over a unix socket or TCP.

Protocol (clamd(8)): `zINSTREAM\\0`, then the message as chunks, each a 4-byte big-endian length
and that many bytes, then a zero length. clamd answers one NUL-terminated line per finding —
`stream: OK`, `stream: NAME FOUND` (several with AllMatchScan), or `... ERROR` — and closes the
connection.

What is sent: the raw message, once, as received. clamd decodes MIME (base64, quoted-printable,
uuencode, binhex, TNEF, nested messages) and unpacks archives itself, with its own limits; it
reads the bytes the recipient's mail program will read, not our parse of them. One scan per
message also means one connection and one round trip per message, whatever its part count.

Guarantees:
- `scan` never raises (cancellation aside): every failure is a `ScanResult` whose status says
  what kind (error, timeout, too_big) and whose detail names the address, for the log.
- Nothing blocks the event loop: non-blocking sockets driven by `loop.sock_*`.
- Past clamd's StreamMaxLength, clamd answers `INSTREAM size limit exceeded. ERROR` and closes
  while we are still sending: the send then fails (EPIPE / ECONNRESET), and the reply is read all
  the same, so the result is TOO_BIG at once, not a hang and not a bare "broken pipe".

Bounds: at most `concurrency` scans talk to clamd at once (a semaphore; more wait their turn);
`timeout` covers one whole scan — the wait for a slot, connecting, sending, clamd's work and the
reply — so an overloaded or hung clamd costs a message at most `timeout`; a message over
`max_size` is not sent at all; the reply read is capped at `MAX_REPLY_BYTES`.

Connections: one per scan, no pool. Connecting to a unix or loopback socket costs tens of
microseconds against a millisecond or more of scanning; clamd closes a connection after each
command anyway, and IDSESSION (its only way to keep one) multiplexes replies by id and drops idle
sessions after its IdleTimeout — a pool would add failure modes to save nothing measurable.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import time
from typing import Any
from pathlib import Path

from frontfilter.antivirus.result import ScanResult, ScanStatus
from frontfilter.config import AntivirusConfig, HostPort
from frontfilter.units import KiB
from frontfilter.mapped import MessageBytes, slices_off_the_loop

# Bytes per INSTREAM chunk: big enough to keep system calls few, small enough that clamd
# (which buffers a chunk at a time) and our memoryview slices stay cheap.
CHUNK_BYTES = 64 * KiB
# clamd's answer is one short line per finding; anything longer is not clamd talking.
MAX_REPLY_BYTES = 16 * KiB
# Names kept from one answer (AllMatchScan may list many), and the length of one name: real
# signature names are under 100 characters.
MAX_SIGNATURES = 16
# A PING (readiness) waits at most this long: clamd answers it at once unless it is gone or stuck.
PING_TIMEOUT = 5.0
MAX_SIGNATURE_CHARS = 200

_COMMAND = b"zINSTREAM\0"
_END_OF_STREAM = struct.pack(">I", 0)
# ExtendedDetectionInfo appends "(md5-or-sha:size)" to the name: not part of the signature's name.
_EXTENDED_INFO = re.compile(r"\((?:[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64}):\d+\)$")
_SIZE_LIMIT = "size limit exceeded"

Address = Path | HostPort


class ClamdClient:
    """Scans messages with one clamd. Safe to share between all sessions of the relay."""

    def __init__(self, address: Address, *, timeout: float, max_size: int, concurrency: int):
        self.address = address
        self.timeout = timeout
        self.max_size = max_size
        self._slots = asyncio.Semaphore(concurrency)

    @classmethod
    def from_config(cls, config: AntivirusConfig) -> ClamdClient:
        if config.max_size is None:   # load_config sets it (default: server.max_message_size)
            raise ValueError("antivirus.max_size was not resolved by load_config")
        return cls(config.address, timeout=config.timeout, max_size=config.max_size,
                   concurrency=config.concurrency)

    async def scan(self, data: MessageBytes) -> ScanResult:
        """What clamd says about `data`. Never raises; a failure is a result with a detail."""
        started = time.monotonic()

        def result(status: ScanStatus, signatures: tuple[str, ...] = (), detail: str = "") -> ScanResult:
            return ScanResult(status, signatures, detail, time.monotonic() - started)

        if len(data) > self.max_size:
            return result(ScanStatus.TOO_BIG,
                          detail=f"{len(data)} bytes is over [antivirus] max_size ({self.max_size}): not sent")
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    reply = await self._instream(data)
        except TimeoutError:
            return result(ScanStatus.TIMEOUT,
                          detail=f"no answer from clamd at {self.address} within {self.timeout:g}s")
        except OSError as error:
            return result(ScanStatus.ERROR, detail=f"clamd at {self.address}: {_why(error)}")
        return result(*parse_reply(reply))

    async def ping(self) -> str | None:
        """None when clamd answers PING with PONG within PING_TIMEOUT (or `timeout`, if less);
        else why not. For readiness: a fail-closed relay whose clamd is gone refuses all mail."""
        limit = min(self.timeout, PING_TIMEOUT)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                sock = await self._connect(loop)
                try:
                    await loop.sock_sendall(sock, b"zPING\0")
                    reply = await _read_reply(loop, sock)
                finally:
                    sock.close()
        except TimeoutError:
            return f"no answer from clamd at {self.address} within {limit:g}s"
        except OSError as error:
            return f"clamd at {self.address}: {_why(error)}"
        if reply.rstrip(b"\0\n") != b"PONG":
            return f"clamd at {self.address} answered {_printable(reply[:80].decode('utf-8', 'replace'))!r} to PING"
        return None

    async def _instream(self, data: MessageBytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await self._connect(loop)
        try:
            try:
                await loop.sock_sendall(sock, _COMMAND)
                async for chunk in slices_off_the_loop(data, CHUNK_BYTES):
                    await loop.sock_sendall(sock, struct.pack(">I", len(chunk)))
                    await loop.sock_sendall(sock, chunk)
                await loop.sock_sendall(sock, _END_OF_STREAM)
            except (BrokenPipeError, ConnectionResetError):
                pass  # clamd stopped reading (StreamMaxLength) and closed: its answer says why
            return await _read_reply(loop, sock)
        finally:
            sock.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        targets: list[tuple[int, int, int, Any]]
        if isinstance(self.address, HostPort):
            targets = [(family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr in
                       await loop.getaddrinfo(self.address.host, self.address.port,
                                              type=socket.SOCK_STREAM)]
        else:
            targets = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, str(self.address))]
        failure: OSError = OSError(f"{self.address}: no address to connect to")
        for family, kind, proto, sockaddr in targets:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
                return sock
            except OSError as error:
                sock.close()
                failure = error
            except BaseException:
                sock.close()
                raise
        raise failure


async def _read_reply(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """Everything clamd says until it closes, at most MAX_REPLY_BYTES."""
    reply = bytearray()
    while len(reply) < MAX_REPLY_BYTES:
        try:
            chunk = await loop.sock_recv(sock, MAX_REPLY_BYTES - len(reply))
        except ConnectionResetError:
            break  # clamd closed with our unsent bytes pending; what it said first is here
        if not chunk:
            break
        reply += chunk
    return bytes(reply)


def parse_reply(reply: bytes) -> tuple[ScanStatus, tuple[str, ...], str]:
    """clamd's answer to INSTREAM -> (status, signature names, detail for the log)."""
    lines = [_printable(line.decode("utf-8", "replace")) for line in reply.split(b"\0")]
    lines = [line for line in lines if line]
    signatures: list[str] = []
    other: list[str] = []
    clean = False
    for line in lines:
        text = line.removeprefix("stream:").strip()
        if text.endswith(" FOUND"):
            name = _EXTENDED_INFO.sub("", text[: -len(" FOUND")].strip()).strip()[:MAX_SIGNATURE_CHARS]
            if name and name not in signatures and len(signatures) < MAX_SIGNATURES:
                signatures.append(name)
        elif text == "OK":
            clean = True
        else:
            other.append(line)
    if signatures:
        return ScanStatus.INFECTED, tuple(signatures), ""
    limit = next((line for line in other if _SIZE_LIMIT in line), None)
    if limit is not None:
        return (ScanStatus.TOO_BIG, (),
                f"clamd refused the stream ({limit}): raise StreamMaxLength in clamd.conf "
                "to at least [antivirus] max_size")
    if clean and not other:
        return ScanStatus.CLEAN, (), ""
    if not lines:
        return ScanStatus.ERROR, (), "clamd closed the connection without an answer"
    return ScanStatus.ERROR, (), f"clamd answered {other[0] if other else lines[0]!r}"


def _why(error: OSError) -> str:
    # asyncio's connect errors carry "Connect call failed (addr)" as strerror: say the errno's words.
    if isinstance(error, socket.gaierror) or not error.errno:
        return str(error.strerror or error)
    return os.strerror(error.errno)


def _printable(text: str) -> str:
    """Log-safe: printable ASCII only, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text.strip())[:MAX_REPLY_BYTES]
