"""The PROXY protocol header (HAProxy's, versions 1 and 2): who the real client is.

A listener with `proxy_protocol = true` sits behind a load balancer that prepends one header to
each connection, naming the client it accepted. frontfilter believes that header only from the
addresses in `proxy.networks` (anyone else could claim any address and walk past relay policy,
limits and rules), and only on such listeners; a connection there without a valid header is
closed. A direct client on a normal listener that sends "PROXY …" gets the usual unknown-command
reply: a header is never honoured from where it is not expected.

The parsers are pure; `parse_header` says how many octets the header took, so whatever follows
(SMTP, or a TLS ClientHello on an implicit-TLS listener) is left to the session.

Bounds (from the specification, haproxy/doc/proxy-protocol.txt): a v1 line is at most 107
octets; a v2 header is 16 octets plus a length we cap at `V2_MAX_LENGTH` (addresses are at most
216 octets; the rest is TLVs, which are skipped).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from frontfilter.model import IPAddress

V1_MAX_LINE = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_LENGTH = 2048      # addresses (<= 216) plus TLVs; more is not a proxy talking
_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_FAMILIES = {0x11: (4, "!4s4sHH"), 0x21: (16, "!16s16sHH")}   # TCP over IPv4, IPv6


class ProxyError(Exception):
    """A malformed or unsupported header; the text names the problem (for the log only)."""


@dataclass(frozen=True)
class ProxyHeader:
    """`source` is None for a header that names no client (v1 UNKNOWN, v2 LOCAL: health checks)."""

    version: int
    source: IPAddress | None = None
    source_port: int = 0


def parse_v1(line: bytes) -> ProxyHeader:
    """`PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\\r\\n` (the whole line, CRLF included)."""
    if len(line) > V1_MAX_LINE or not line.endswith(b"\r\n"):
        raise ProxyError("v1 line too long or not ended by CRLF")
    parts = line[:-2].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyError("v1 line does not start with 'PROXY '")
    if parts[1] == b"UNKNOWN":
        return ProxyHeader(version=1)
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyError("v1 protocol must be TCP4, TCP6 or UNKNOWN with 4 fields")
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        destination = ipaddress.ip_address(parts[3].decode("ascii"))
        ports = [_port(p) for p in parts[4:6]]
    except (ValueError, UnicodeDecodeError):
        raise ProxyError("v1 address or port malformed") from None
    wanted = 4 if parts[1] == b"TCP4" else 6
    if source.version != wanted or destination.version != wanted:
        raise ProxyError("v1 address family does not match the protocol")
    return ProxyHeader(version=1, source=_unmapped(source), source_port=ports[0])


def parse_v2(head: bytes, body: bytes) -> ProxyHeader:
    """`head` is the fixed 16 octets, `body` the `length` octets that follow."""
    if len(head) != 16 or head[:12] != V2_SIGNATURE:
        raise ProxyError("v2 signature wrong")
    version_command, family, length = struct.unpack("!BBH", head[12:16])
    if version_command >> 4 != 2:
        raise ProxyError("v2 version is not 2")
    if len(body) != length:
        raise ProxyError("v2 header truncated")
    command = version_command & 0x0F
    if command == _V2_COMMAND_LOCAL:
        return ProxyHeader(version=2)
    if command != _V2_COMMAND_PROXY:
        raise ProxyError("v2 command unknown")
    if family not in _V2_FAMILIES:
        if family == 0x00:       # UNSPEC: the proxy does not know the client
            return ProxyHeader(version=2)
        raise ProxyError("v2 family is not TCP over IPv4 or IPv6")
    size, layout = _V2_FAMILIES[family]
    if length < struct.calcsize(layout):
        raise ProxyError("v2 address block truncated")
    source, _, source_port, _ = struct.unpack_from(layout, body)
    ip = ipaddress.IPv4Address(source) if size == 4 else ipaddress.IPv6Address(source)
    return ProxyHeader(version=2, source=_unmapped(ip), source_port=source_port)


HEADER_MAX = 16 + V2_MAX_LENGTH    # the most octets a header may take


def parse_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `data` and its length in octets, or None while `data` is a
    proper beginning of one. Raises ProxyError when it cannot be one."""
    if data[:5] == b"PROXY"[:len(data)] and not data.startswith(V2_SIGNATURE[:1]):
        end = data.find(b"\r\n", 0, V1_MAX_LINE)
        if end < 0:
            if len(data) >= V1_MAX_LINE or b"\n" in data:
                raise ProxyError("v1 line too long or not ended by CRLF")
            return None
        return parse_v1(data[:end + 2]), end + 2
    if data[:12] == V2_SIGNATURE[:min(len(data), 12)]:
        if len(data) < 16:
            return None
        (length,) = struct.unpack("!H", data[14:16])
        if length > V2_MAX_LENGTH:
            raise ProxyError("v2 header longer than allowed")
        if len(data) < 16 + length:
            return None
        return parse_v2(data[:16], data[16:16 + length]), 16 + length
    raise ProxyError("no PROXY header")


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise ValueError("bad port")
    return int(text)


def _unmapped(ip: IPAddress) -> IPAddress:
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
