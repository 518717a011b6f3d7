"""The values a config holds, parsed and checked one by one: host:port, networks, domains,
MIME types, DNS list specs, reply codes. Each parser raises ValueError with the problem; the
loader adds file and key."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any



class ConfigError(Exception):
    """One or more problems, each a line `FILE: key: problem`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    """"127.0.0.1:2525", "[::1]:2525", "mx.example.org:25"."""
    if not isinstance(value, str):
        raise ValueError(f"expected \"host:port\", got {type(value).__name__}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (IPv6 as [::1]:2525)")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    return HostPort(host, int(port))


def parse_listen_address(value: object) -> HostPort:
    """Where to listen: host:port, where port 0 asks the kernel for a free port (the relay logs
    the one it got: `listening`, `http_listening`), for tests and side-by-side instances."""
    if isinstance(value, str) and value.strip().endswith(":0"):
        address = parse_host_port(value.strip()[:-1] + "1")
        return HostPort(address.host, 0)
    return parse_host_port(value)


def parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 192.0.2.0/24, got {type(value).__name__}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (e.g. 192.0.2.0/24, 2001:db8::/32)") from None


def parse_domain(value: object) -> str:
    """A relay domain, lower-case, without a trailing dot; IDNs in their A-label form."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a domain name")
    domain = value.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid domain name") from None
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels) or any(len(label) > 63 for label in labels):
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return domain


# RFC 6376 §3.1: a selector is one or more DNS labels (letters, digits, inner hyphens).
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def parse_selector(value: object) -> str:
    """A DKIM selector (s=), as published under `SELECTOR._domainkey.DOMAIN`."""
    if not isinstance(value, str) or not _SELECTOR.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not a selector (DNS labels: letters, digits, inner "
                         "hyphens, e.g. \"edge2025\")")
    return value.strip()


_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def parse_mime_type(value: object) -> str:
    """A lower-case "type/subtype" as libmagic reports it (RFC 6838 characters)."""
    if not isinstance(value, str) or not _MIME_TYPE.fullmatch(value.strip().lower()):
        raise ValueError(f"{value!r} is not a MIME type such as \"application/pdf\"")
    return value.strip().lower()


# Field metadata: how to convert a raw TOML value. Default conversion follows the annotation.
def conv(fn: Any, **kw: Any) -> Any:
    return field(metadata={"convert": fn}, **kw)


MAX_WORKERS = 256


def parse_workers(value: object) -> int:
    """A number of processes, or "auto": one per CPU this process may run on."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected a number of processes or "auto", got {value!r}')
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be between 1 and {MAX_WORKERS}")
    return value


def parse_fraction(value: object) -> float:
    """A share between 0 and 1: 0.2 or "20%"."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage (e.g. \"20%\")") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"expected a share between 0 and 1 (e.g. 0.2 or \"20%\"), got {value!r}")
    return float(value)


def parse_clamd_address(value: object) -> Path | HostPort:
    """clamd's socket: a unix socket path (it holds a "/") or "host:port" for TCP."""
    if isinstance(value, str) and "/" in value:
        return Path(value.strip())
    try:
        return parse_host_port(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a unix socket path (with a /, e.g. "
                         "\"/run/clamav/clamd.ctl\") nor host:port (e.g. \"127.0.0.1:3310\")") from None


def parse_resolver(value: object) -> HostPort:
    """A DNS resolver: an IP address, with a port if not 53 ("127.0.0.1:5353", "[::1]:53")."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a resolver address such as \"127.0.0.1\" or \"[::1]:5353\"")
    text = value.strip()
    try:
        return HostPort(str(ipaddress.ip_address(text)), 53)    # a bare address
    except ValueError:
        pass
    try:
        address = parse_host_port(text)
        ipaddress.ip_address(address.host)
    except ValueError:
        # A resolver named by host name would need a resolver to find it.
        raise ValueError(f"{value!r} is not an IP address, with :port if not 53 "
                         "(e.g. \"192.0.2.53\", \"[2001:db8::53]:5353\")") from None
    return address


@dataclass(frozen=True)
class ReplyCode:
    """DNSBL answers that count as a listing: one range per octet, postscreen style.

    `127.0.0.2` (one address), `127.0.0.0/24` (a network) and `127.0.[0..255].[2..3]` or
    `127.0.0.[2;4..7]` (per-octet ranges, as Postfix's postscreen_dnsbl_sites writes them)."""

    text: str
    octets: tuple[tuple[tuple[int, int], ...], ...]   # per octet: accepted (low, high) ranges

    def matches(self, address: ipaddress.IPv4Address) -> bool:
        return all(any(low <= octet <= high for low, high in ranges)
                   for octet, ranges in zip(address.packed, self.octets))


_OCTET = re.compile(r"^(\d{1,3})(?:\.\.(\d{1,3}))?$")


def parse_reply_code(value: object) -> ReplyCode:
    if not isinstance(value, str):
        raise ValueError(f"expected a reply code such as \"127.0.0.2\", got {type_name(value)}")
    text = value.strip()
    problem = ValueError(f"{value!r} is not a reply code (e.g. \"127.0.0.2\", \"127.0.0.0/24\", "
                         f"\"127.0.0.[2..11]\")")
    if "/" in text:
        try:
            network = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise problem from None
        first, last = network.network_address.packed, network.broadcast_address.packed
        return ReplyCode(text, tuple(((lo, hi),) for lo, hi in zip(first, last)))
    octets = re.findall(r"\[[^\]]*\]|[^.\[\]]+", text)   # "." inside [2..11] is not a separator
    if len(octets) != 4 or ".".join(octets) != text:
        raise problem
    parsed: list[tuple[tuple[int, int], ...]] = []
    for octet in octets:
        items = octet[1:-1].split(";") if octet.startswith("[") and octet.endswith("]") else [octet]
        ranges = []
        for item in items:
            found = _OCTET.match(item)
            if not found:
                raise problem
            low = int(found.group(1))
            high = int(found.group(2) or low)
            if not low <= high <= 255:
                raise problem
            ranges.append((low, high))
        parsed.append(tuple(ranges))
    return ReplyCode(text, tuple(parsed))


# Only answers inside 127.0.0.0/24 count unless a list says otherwise (RFC 5782 §2.1: listings
# are 127.0.0.2 and up; public lists use other values for "you may not ask" and "over quota").
DEFAULT_REPLY_CODES: tuple[ReplyCode, ...] = (parse_reply_code("127.0.0.0/24"),)


_DNS_LIST_SPEC = re.compile(r"^([^=*\s]+)(?:=([^*\s]+))?(?:\*(-?\d+))?$")


@dataclass(frozen=True)
class DnsListConfig:
    """One DNS block list (positive weight) or allow list (negative weight)."""

    zone: str
    weight: int = 1
    name: str = ""                      # in facts, logs and metrics; default: the zone
    codes: tuple[ReplyCode, ...] = DEFAULT_REPLY_CODES


def parse_dns_list(value: object) -> DnsListConfig:
    """`{ zone = "zen.spamhaus.org", weight = 3, codes = [...] }`, or postscreen's one-line form
    `"zen.spamhaus.org=127.0.0.[2..11]*3"` (`=codes` and `*weight` both optional)."""
    if isinstance(value, str):
        found = _DNS_LIST_SPEC.match(value.strip())
        if not found:
            raise ValueError(f"{value!r} is not ZONE[=CODE][*WEIGHT] (e.g. \"zen.spamhaus.org*3\")")
        zone, code, weight = found.groups()
        table: dict[str, Any] = {"zone": zone}
        if code is not None:
            table["codes"] = [code]
        if weight is not None:
            table["weight"] = int(weight)
        value = table
    if not isinstance(value, dict):
        raise ValueError(f"expected a table {{ zone = ..., weight = ... }} or \"ZONE*WEIGHT\", got {type_name(value)}")
    unknown = sorted(set(value) - {"zone", "weight", "name", "codes"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (a list takes zone, weight, name, codes)")
    if "zone" not in value:
        raise ValueError("zone: missing")
    zone = parse_domain(value["zone"])
    weight = value.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight == 0:
        raise ValueError("weight: must be a whole number other than 0 (negative: an allow list)")
    name = value.get("name", zone)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ValueError("name: letters, digits, '_', '.' and '-' (it is a metric label)")
    codes = value.get("codes", None)
    if codes is None:
        parsed = DEFAULT_REPLY_CODES
    else:
        items = [codes] if isinstance(codes, str) else codes
        if not isinstance(items, list) or not items:
            raise ValueError("codes: expected a non-empty list of reply codes")
        parsed = tuple(parse_reply_code(item) for item in items)
    return DnsListConfig(zone=zone, weight=weight, name=name, codes=parsed)


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
