"""PROXY protocol parsing: v1 and v2, refusals, and reading exactly the header."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from frontfilter.smtp.proxy import ProxyError, ProxyHeader, parse_header, parse_v1, parse_v2
from tests.frontdoor.helpers import proxy_v2


def test_v1_tcp4() -> None:
    header = parse_v1(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\r\n")
    assert header == ProxyHeader(1, ipaddress.ip_address("203.0.113.7"), 51234)


def test_v1_tcp6_and_unknown() -> None:
    assert parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n").source == ipaddress.ip_address("2001:db8::7")
    assert parse_v1(b"PROXY UNKNOWN\r\n").source is None


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n",            # a field missing
    b"PROXY TCP4 2001:db8::7 192.0.2.1 51234 25\r\n",         # family mismatch
    b"PROXY TCP4 203.0.113.7 192.0.2.1 051234 25\r\n",        # leading zero
    b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 25\r\n",         # port out of range
    b"PROXY UDP4 203.0.113.7 192.0.2.1 1 25\r\n",
    b"PROXY TCP4 203.0.113.7 192.0.2.1 1 25\n",               # bare LF
    b"PROXY TCP4 " + b"1" * 120 + b"\r\n",                    # too long
])
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_v1(line)


def test_v2_proxy_and_local() -> None:
    raw = proxy_v2("203.0.113.7", 40000)
    header = parse_v2(raw[:16], raw[16:])
    assert header == ProxyHeader(2, ipaddress.ip_address("203.0.113.7"), 40000)
    local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    assert parse_v2(local, b"").source is None


def test_v2_ipv6_with_tlvs() -> None:
    body = (ipaddress.ip_address("2001:db8::7").packed + ipaddress.ip_address("2001:db8::1").packed
            + struct.pack("!HH", 4000, 25) + b"\x04\x00\x01x")
    head = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + struct.pack("!H", len(body))
    assert parse_v2(head, body).source == ipaddress.ip_address("2001:db8::7")


@pytest.mark.parametrize("mutate", [
    lambda raw: raw[:12] + bytes([0x11]) + raw[13:],      # version 1 in a v2 header
    lambda raw: raw[:12] + bytes([0x22]) + raw[13:],      # command 2
    lambda raw: raw[:13] + bytes([0x12]) + raw[14:],      # UDP
    lambda raw: raw[:14] + struct.pack("!H", 4) + raw[16:20],   # address block truncated
])
def test_v2_malformed_is_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    raw = mutate(proxy_v2("203.0.113.7", 40000))
    with pytest.raises(ProxyError):
        parse_v2(raw[:16], raw[16:])


def test_parse_header_says_how_long_the_header_is() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01"       # a TLS ClientHello right behind the header
    raw = proxy_v2("203.0.113.7", 40000)
    header, length = parse_header(raw + hello)  # type: ignore[misc]
    assert header.source == ipaddress.ip_address("203.0.113.7") and (raw + hello)[length:] == hello
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 5 25\r\n"
    header, length = parse_header(line + b"EHLO x\r\n")  # type: ignore[misc]
    assert header.source_port == 5 and length == len(line)


def test_parse_header_waits_for_a_header_cut_anywhere() -> None:
    for raw in (proxy_v2("203.0.113.7", 40000), b"PROXY TCP4 203.0.113.7 192.0.2.1 5 25\r\n"):
        for cut in range(len(raw)):
            assert parse_header(raw[:cut]) is None, cut
        assert parse_header(raw) is not None


def test_parse_header_refuses_smtp_and_oversize() -> None:
    with pytest.raises(ProxyError):
        parse_header(b"EHLO client.example\r\n")
    with pytest.raises(ProxyError):
        parse_header(b"PROXY " + b"1" * 200)
    big = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 65000)
    with pytest.raises(ProxyError):
        parse_header(big)
