"""frontfilter.toml -> frozen dataclasses.

Guarantees: every key is known, typed and checked before anything starts. Unknown keys (with a
"did you mean" hint), wrong types, bad sizes, durations, addresses and networks are reported as
`FILE: section.key: problem`, all of them at once, in a `ConfigError`. TOML itself refuses
duplicate keys (reported with their line). Relative paths are relative to the config file's
folder, so a config means the same thing whatever the working directory of the process.

Config knows nothing of the other layers: it imports only `model`, `reply` and `units`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontfilter.units import DAYS, HOURS, MINUTES, GiB, MiB, SECONDS, parse_duration, parse_size


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


_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def parse_mime_type(value: object) -> str:
    """A lower-case "type/subtype" as libmagic reports it (RFC 6838 characters)."""
    if not isinstance(value, str) or not _MIME_TYPE.fullmatch(value.strip().lower()):
        raise ValueError(f"{value!r} is not a MIME type such as \"application/pdf\"")
    return value.strip().lower()


class OutboundSenders(enum.Enum):
    """Which envelope senders a trusted or authenticated client may relay out (to a foreign domain)."""

    ANY = "any"                  # any sender (a compromised internal host can then spoof anyone)
    OWN_DOMAINS = "own_domains"  # only senders in relay.sender_domains, and the null sender


class BackendMode(enum.Enum):
    SYNC = "sync"    # 250 only once the backend accepted (before-queue, like a Postfix proxy)
    QUEUE = "queue"  # 250 once durably spooled; a worker delivers (store-and-forward)


class LogFormat(enum.Enum):
    JSON = "json"
    TEXT = "text"


class TlsMode(enum.Enum):
    """How a listener offers TLS."""

    NONE = "none"
    STARTTLS = "starttls"    # plain connect, STARTTLS offered (port 25, 587)
    IMPLICIT = "implicit"    # TLS from the first byte (port 465, RFC 8314)


class AuthMode(enum.Enum):
    """Whether a listener offers SMTP AUTH (always only inside TLS)."""

    NONE = "none"
    OPTIONAL = "optional"    # offered; unauthenticated clients are treated as the internet
    REQUIRED = "required"    # MAIL is refused until the client authenticated (submission)


class TlsVersion(enum.Enum):
    V1_2 = "1.2"
    V1_3 = "1.3"


class BackendTls(enum.Enum):
    NONE = "none"                    # plain SMTP to the backend
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, certificate not checked (Postfix "may")
    REQUIRED = "required"            # STARTTLS or no delivery; certificate and name verified


# Field metadata: how to convert a raw TOML value. Default conversion follows the annotation.
def _conv(fn: Any, **kw: Any) -> Any:
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


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    listen: tuple[HostPort, ...] = _conv(parse_listen_address, default=(HostPort("127.0.0.1", 2525),))
    # RFC 5321 §4.5.3.1.7 asks servers to take at least 100 recipients.
    max_message_size: int = _conv(parse_size, default=25 * MiB)
    max_recipients: int = 100
    # RFC 5321 §4.5.3.1.6: 998 octets of text per line; longer lines are refused, not folded,
    # because folding would change the message the recipient signed (DKIM).
    max_line_length: int = 998
    # Junk commands per session, as Postfix counts them (smtpd_junk_command_limit): NOOP, RSET,
    # VRFY, EXPN, HELP, ETRN, and recipients past max_recipients; then 421. RCPT within the
    # limit is not junk, so max_recipients can always be reached. A client looping is not mail.
    max_commands: int = 1000
    max_errors: int = 10                     # 4xx/5xx since the last message taken, then 421 and close
    command_timeout: float = _conv(parse_duration, default=5 * MINUTES)   # RFC 5321 §4.5.3.2
    data_timeout: float = _conv(parse_duration, default=10 * MINUTES)     # whole DATA phase
    session_timeout: float = _conv(parse_duration, default=30 * MINUTES)  # whole connection
    shutdown_grace: float = _conv(parse_duration, default=30 * SECONDS)
    smtputf8: bool = True
    # Processes serving SMTP on the same sockets, spool and metrics (supervisor.py); "auto" is
    # one per CPU. 1 is a single process, with nothing between systemd and the relay.
    workers: int = _conv(parse_workers, default=1)


@dataclass(frozen=True)
class RelayConfig:
    domains: tuple[str, ...] = _conv(parse_domain, default=())
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _conv(
        parse_network, default=())
    open: bool = False                 # anyone may relay anywhere: needs open_confirmation
    open_confirmation: str = ""
    # Domain-bound relaying (see policy.py): our own domains as senders (default: domains),
    # what trusted/authenticated clients may send as when relaying out, and the login map.
    sender_domains: tuple[str, ...] = _conv(parse_domain, default=())
    outbound_senders: OutboundSenders = OutboundSenders.ANY
    sender_map: Path | None = None      # login: allowed senders; set, AUTH users are bound to it


# What `relay.open_confirmation` must say, word for word, before an open relay starts.
OPEN_RELAY_CONFIRMATION = "anyone may send mail anywhere through this relay"


@dataclass(frozen=True)
class ListenerConfig:
    """One `[[listener]]` table: an address and its role."""

    address: HostPort | None = _conv(parse_listen_address, default=None)   # required
    name: str = ""                      # in log lines; default: the address
    tls: TlsMode | None = None          # default: starttls when [tls] has a certificate, else none
    require_tls: bool = False           # MAIL refused before TLS (530 5.7.0)
    auth: AuthMode = AuthMode.NONE
    proxy_protocol: bool = False        # expect a PROXY header from proxy.networks


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path | None = None       # PEM: the certificate, then its chain
    key_file: Path | None = None
    min_version: TlsVersion = TlsVersion.V1_2


@dataclass(frozen=True)
class AuthConfig:
    users_file: Path | None = None      # name:scrypt-hash lines, see `frontfilter passwd`
    failure_delay: float = _conv(parse_duration, default=2 * SECONDS)   # before each 535
    max_failures: int = 5               # per client address within lockout_time; 0: never lock
    lockout_time: float = _conv(parse_duration, default=15 * MINUTES)


@dataclass(frozen=True)
class LimitsConfig:
    """Connection limits (0: no limit); see frontfilter/smtp/limits.py for the reasons."""

    max_connections: int = 500
    max_connections_per_ip: int = 20
    # New connections per connection_rate_window. Off by default, as Postfix's
    # smtpd_client_connection_rate_limit: a large sender (a provider's outbound pool, a mailing
    # list) reconnects for every few messages and must never be deferred by a default.
    connection_rate_per_ip: int = 0
    connection_rate_window: float = _conv(parse_duration, default=1 * MINUTES)
    tarpit_after: int = 3               # errors in a session answered at full speed
    tarpit_delay: float = _conv(parse_duration, default=1 * SECONDS)    # before each later one


@dataclass(frozen=True)
class ProxyConfig:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _conv(
        parse_network, default=())      # load balancers allowed to send a PROXY header
    timeout: float = _conv(parse_duration, default=10 * SECONDS)


@dataclass(frozen=True)
class BackendConfig:
    servers: tuple[HostPort, ...] = _conv(parse_host_port, default=())
    mode: BackendMode = BackendMode.QUEUE
    connect_timeout: float = _conv(parse_duration, default=10 * SECONDS)
    timeout: float = _conv(parse_duration, default=2 * MINUTES)    # per SMTP command
    helo_name: str = ""                                            # default: server.hostname
    tls: BackendTls = BackendTls.OPPORTUNISTIC    # STARTTLS when offered (issue 4); "required" verifies
    tls_ca_file: Path | None = None      # default: the system's CAs
    tls_cert_file: Path | None = None    # client certificate, if the backend asks for one
    tls_key_file: Path | None = None
    tls_verify_name: str = ""            # name the certificate must carry; default: the host
    # Queue mode: deliveries from the spool in parallel, which is also the most connections
    # open to the backends at once (Postfix's default_destination_concurrency_limit is 20).
    concurrency: int = 10
    # A backend that refused a connection or failed its greeting is skipped this long, so mail
    # goes straight to the next one instead of waiting on a dead host (Postfix's dead-host cache).
    skip_failed_for: float = _conv(parse_duration, default=30 * SECONDS)
    # Queue mode: ask the backend about each recipient at RCPT (Postfix reject_unverified_recipient)
    # so unknown users are refused while the client is connected, not bounced later.
    verify_recipients: bool = False
    verify_positive_ttl: float = _conv(parse_duration, default=1 * HOURS)
    verify_negative_ttl: float = _conv(parse_duration, default=10 * MINUTES)


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


@dataclass(frozen=True)
class SpoolConfig:
    """Queue mode's durable spool and its retry schedule (see docs/spool.md)."""

    dir: Path = Path("var/spool")
    # Back-pressure: past any of these, new mail gets 452 4.3.1 (RFC 3463 "mail system full").
    max_messages: int = 100_000
    max_size: int = _conv(parse_size, default=10 * GiB)
    min_free_space: int = _conv(parse_size, default=1 * GiB)   # kept free on the spool's disk
    # Retries: exponential from retry_min, doubling up to retry_max, each delay +- retry_jitter
    # so messages deferred together do not come back together. Postfix: 300s .. 4000s.
    retry_min: float = _conv(parse_duration, default=1 * MINUTES)
    retry_max: float = _conv(parse_duration, default=1 * HOURS)
    retry_jitter: float = _conv(parse_fraction, default=0.2)
    # Then the message is given up: dead-letter directory and a DSN to the sender (Postfix: 5d).
    max_lifetime: float = _conv(parse_duration, default=5 * DAYS)
    # How often the spool directory is re-read: changes made by `frontfilter queue` (or another
    # process) are seen within this time, and the spool gauges refreshed.
    scan_interval: float = _conv(parse_duration, default=2 * SECONDS)


@dataclass(frozen=True)
class RulesConfig:
    dir: Path = Path("rules")
    soft_reject: bool = False          # turn every 5xx into 4xx while a rule set is on trial
    watch: bool = True                 # reload when a rule file changes on disk
    watch_interval: float = _conv(parse_duration, default=2 * SECONDS)


@dataclass(frozen=True)
class InspectionConfig:
    """Bounds of the content walk; see frontfilter/content/limits.py for each reason."""

    timeout: float = _conv(parse_duration, default=30 * SECONDS)
    max_depth: int = 20
    max_parts: int = 500
    max_header_bytes: int = _conv(parse_size, default=256 * 1024)
    max_decoded_bytes: int = _conv(parse_size, default=100 * MiB)
    max_archive_depth: int = 3
    max_archive_members: int = 1000
    max_expanded_size: int = _conv(parse_size, default=200 * MiB)
    max_compression_ratio: int = 100
    text_bytes: int = _conv(parse_size, default=1 * MiB)
    # Content types remembered by SHA-256 (content/sniff.py TypeCache): about 150 bytes each;
    # 0 runs libmagic on every part of every message.
    type_cache: int = 10_000


class QuarantineOutcome(enum.Enum):
    REJECT = "reject"   # the client is refused (the rule's reply); a copy is kept
    ACCEPT = "accept"   # the client gets 250; the copy is kept and nothing is forwarded


@dataclass(frozen=True)
class QuarantineConfig:
    """Messages rules set aside (frontfilter/quarantine/), and how long the relay keeps them."""

    dir: Path = Path("var/quarantine")
    then: QuarantineOutcome = QuarantineOutcome.REJECT
    # Retention, applied by the running relay: older messages are removed, then the oldest
    # while the whole quarantine is over max_size (0: no size bound). A quarantine nobody
    # reviews must not fill the disk the spool shares.
    max_age: float = _conv(parse_duration, default=30 * DAYS)
    max_size: int = _conv(parse_size, default=1 * GiB)


class OnError(enum.Enum):
    """What happens to a message clamd could not scan (unreachable, timeout, error, too big)."""

    TEMPFAIL = "tempfail"   # 4xx: the client retries later; nothing passes unscanned
    ACCEPT = "accept"       # passes unscanned, counted and logged: availability before safety


def parse_clamd_address(value: object) -> Path | HostPort:
    """clamd's socket: a unix socket path (it holds a "/") or "host:port" for TCP."""
    if isinstance(value, str) and "/" in value:
        return Path(value.strip())
    try:
        return parse_host_port(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a unix socket path (with a /, e.g. "
                         "\"/run/clamav/clamd.ctl\") nor host:port (e.g. \"127.0.0.1:3310\")") from None


@dataclass(frozen=True)
class AntivirusConfig:
    """[antivirus]: present, every message is scanned by clamd (see frontfilter/antivirus/)."""

    # Debian's LocalSocket. TCP carries the mail in clear and unauthenticated: loopback only.
    address: Path | HostPort = _conv(parse_clamd_address, default=Path("/run/clamav/clamd.ctl"))
    timeout: float = _conv(parse_duration, default=30 * SECONDS)   # one whole scan, queueing included
    # Most bytes sent; a larger message is not scanned and gets on_error. Unset: the server's
    # max_message_size, so every message it takes is scanned (clamd's StreamMaxLength must be
    # at least as large: Debian ships 25M).
    max_size: int | None = _conv(parse_size, default=None)
    # Scans in flight at once, per worker process (server.workers): their sum should stay below
    # clamd's MaxThreads (10 by default) so that clamd never queues our scans behind each other
    # where our timeout cannot tell load from a hang.
    concurrency: int = 8
    on_error: OnError = OnError.TEMPFAIL


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None = _conv(parse_listen_address, default=None)   # /metrics, /healthz, /readyz
    # Detected types counted under their own name in frontfilter_attachments_stripped_total;
    # any other type is counted as "other". Unset: the built-in list (observe.STRIPPED_TYPE_LABELS).
    type_labels: tuple[str, ...] | None = _conv(parse_mime_type, default=None)


# Each type label is one more time series; past this the label is no longer "a small set".
MAX_TYPE_LABELS = 64


@dataclass(frozen=True)
class LogConfig:
    format: LogFormat = LogFormat.JSON
    level: str = "info"


# ---- reputation: DNS lists, SPF, greylisting (frontfilter/reputation/) ---------------------

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
        raise ValueError(f"expected a reply code such as \"127.0.0.2\", got {_type_name(value)}")
    text = value.strip()
    problem = ValueError(f"{value!r} is not a reply code (e.g. \"127.0.0.2\", \"127.0.0.0/24\", "
                         f"\"127.0.0.[2..11]\")")
    if "/" in text:
        try:
            network = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise problem from None
        low, high = network.network_address.packed, network.broadcast_address.packed
        return ReplyCode(text, tuple(((lo, hi),) for lo, hi in zip(low, high)))
    octets = re.findall(r"\[[^\]]*\]|[^.\[\]]+", text)   # "." inside [2..11] is not a separator
    if len(octets) != 4 or ".".join(octets) != text:
        raise problem
    parsed = []
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
DEFAULT_REPLY_CODES = (parse_reply_code("127.0.0.0/24"),)
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
        raise ValueError(f"expected a table {{ zone = ..., weight = ... }} or \"ZONE*WEIGHT\", got {_type_name(value)}")
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


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: the resolvers the reputation checks ask, and how long they wait."""

    resolvers: tuple[HostPort, ...] = _conv(parse_resolver, default=())  # empty: /etc/resolv.conf
    timeout: float = _conv(parse_duration, default=5 * SECONDS)   # all DNSBL lookups of a client
    cache_size: int = 10_000                                      # answers kept (LRU)
    max_ttl: float = _conv(parse_duration, default=1 * HOURS)     # cap on what a zone asks for
    negative_ttl: float = _conv(parse_duration, default=5 * MINUTES)   # "not listed", no SOA given
    # Look up the envelope sender's domain at MAIL (MX, else A/AAAA) when a rule reads
    # sender.domain_exists (the shipped unknown-sender-domain rule does): Postfix's
    # reject_unknown_sender_domain. Off by default: it needs a resolver that answers.
    check_sender_domain: bool = False


@dataclass(frozen=True)
class DnsblConfig:
    """[dnsbl]: weighted block and allow lists of the client address (postscreen_dnsbl_sites)."""

    threshold: int = 1                  # score at which client.dnsbl holds (postscreen_dnsbl_threshold)
    lists: tuple[DnsListConfig, ...] = _conv(parse_dns_list, default=())


@dataclass(frozen=True)
class SpfConfig:
    """[spf]: evaluate SPF (RFC 7208) for the envelope sender (or the HELO name for bounces)."""

    enabled: bool = False
    # RFC 7208 §4.6.4: at least 20 seconds for a whole evaluation before temperror.
    timeout: float = _conv(parse_duration, default=20 * SECONDS)
    header: bool = True                 # add Received-SPF (RFC 7208 §9.1) to the message
    concurrency: int = 16               # evaluations at once (each holds a worker thread)


@dataclass(frozen=True)
class GreylistConfig:
    """[greylist]: tempfail the first try of an unknown (client net, sender, recipient)."""

    enabled: bool = False
    database: Path = Path("var/greylist.sqlite")
    delay: float = _conv(parse_duration, default=5 * MINUTES)          # postgrey --delay
    retry_window: float = _conv(parse_duration, default=2 * DAYS)      # postgrey --retry-window
    expiry: float = _conv(parse_duration, default=35 * DAYS)           # postgrey --max-age
    ipv4_prefix: int = 24               # a sending farm retries from another address of its /24
    ipv6_prefix: int = 64
    whitelist_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _conv(
        parse_network, default=())
    whitelist_domains: tuple[str, ...] = _conv(parse_domain, default=())   # sender domains (and subdomains)


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    relay: RelayConfig
    backend: BackendConfig
    spool: SpoolConfig
    rules: RulesConfig
    inspection: InspectionConfig
    quarantine: QuarantineConfig
    metrics: MetricsConfig
    log: LogConfig
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    proxy: ProxyConfig = ProxyConfig()
    listeners: tuple[ListenerConfig, ...] = ()   # [[listener]], or server.listen as inbound ones
    antivirus: AntivirusConfig | None = None     # None: no [antivirus] section, no scanning
    dns: DnsConfig = DnsConfig()
    dnsbl: DnsblConfig = DnsblConfig()
    spf: SpfConfig = SpfConfig()
    greylist: GreylistConfig = GreylistConfig()


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "relay": RelayConfig,
    "backend": BackendConfig,
    "spool": SpoolConfig,
    "rules": RulesConfig,
    "inspection": InspectionConfig,
    "quarantine": QuarantineConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "tls": TlsConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "proxy": ProxyConfig,
    "antivirus": AntivirusConfig,
    "dns": DnsConfig,
    "dnsbl": DnsblConfig,
    "spf": SpfConfig,
    "greylist": GreylistConfig,
}
# Sections that switch a feature on by being present: absent, their Config field is None.
_OPTIONAL_SECTIONS = frozenset({"antivirus"})
_LOG_LEVELS = ("debug", "info", "warning", "error")


# Where systemd puts a service's credentials (LoadCredential=, systemd.exec(5)).
CREDENTIALS_ROOT = Path("/run/credentials")


def credential_files_not_there_yet(config: Config) -> list[tuple[str, Path]]:
    """(key, path) of the secret files under /run/credentials that do not exist: the deploy
    guide hands the key and the users file over that way, and systemd makes them only when it
    starts the service — `frontfilter check` before the first start cannot read them."""
    files = [("tls.cert_file", config.tls.cert_file), ("tls.key_file", config.tls.key_file),
             ("auth.users_file", config.auth.users_file)]
    return [(key, path) for key, path in files
            if path is not None and path.is_relative_to(CREDENTIALS_ROOT) and not path.exists()]


def config_warnings(config: Config) -> list[tuple[str, str]]:
    """(key, why) for settings that work but hurt: `frontfilter check` prints them, the relay
    logs them at start. Not errors: an administrator may have reasons."""
    warnings = []
    for key, path in credential_files_not_there_yet(config):
        warnings.append((key, f"{path}: a systemd credential (LoadCredential), there only while the "
                              "service runs: not checked here"))
    if config.backend.mode is BackendMode.QUEUE and not config.backend.verify_recipients:
        warnings.append(("backend.verify_recipients",
                         "false in queue mode: mail to an unknown user at relay.domains is taken, "
                         "then bounced to its sender, who may be forged (backscatter); set it to "
                         "true, as Postfix's relay_recipient_maps"))
    return warnings


def load_config(path: str | Path) -> Config:
    """Read, check and freeze a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    label = str(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{label}: file not found"]) from None
    except OSError as error:
        raise ConfigError([f"{label}: cannot read: {error.strerror}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{label}: {error}"]) from None
    return build_config(raw, path)


def build_config(raw: dict[str, Any], path: Path) -> Config:
    label = str(path)
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in _SECTIONS and key != "listener":
            problems.append(f"{label}: {key}: unknown section{_hint(key, _SECTIONS)}")
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{label}: {name}: expected a table [{name}]")
            table = {}
        sections[name] = _build_section(cls, name, table, label, problems)
    for name in _OPTIONAL_SECTIONS - raw.keys():
        sections[name] = None
    listeners = _build_listeners(raw, label, problems)
    if listeners and isinstance(raw.get("server"), dict) and "listen" in raw["server"]:
        problems.append(f"{label}: server.listen: use either server.listen or [[listener]] tables, not both")
    if not problems:
        problems.extend(_cross_checks(sections, label))
        given = bool(listeners)
        listeners = _resolve_listeners(raw, sections, listeners)
        problems.extend(_front_door_checks(sections, listeners, label))
        if given:     # server.listen then says where the [[listener]] tables listen, not its default
            sections["server"] = dataclasses.replace(
                sections["server"], listen=tuple(listener.address for listener in listeners))
    if problems:
        raise ConfigError(problems)
    base = path.resolve().parent
    for name in ("spool", "rules", "quarantine"):
        sections[name] = dataclasses.replace(sections[name], dir=_resolve(base, sections[name].dir))
    for name in ("tls", "auth", "backend"):
        sections[name] = _resolve_files(base, sections[name])
    for name in ("relay", "greylist"):      # relay.sender_map, greylist.database
        sections[name] = _resolve_files(base, sections[name])
    sections["antivirus"] = _resolve_antivirus(base, sections["antivirus"], sections["server"])
    return Config(path=path.resolve(), listeners=listeners, **sections)


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def _cross_checks(sections: dict[str, Any], label: str) -> list[str]:
    problems = []
    server: ServerConfig = sections["server"]
    if not server.listen:
        problems.append(f"{label}: server.listen: at least one address is needed")
    if not sections["backend"].servers:
        problems.append(f"{label}: backend.servers: at least one backend is needed")
    if server.max_recipients < 1:
        problems.append(f"{label}: server.max_recipients: must be at least 1")
    if server.max_message_size < 1024:
        problems.append(f"{label}: server.max_message_size: must be at least 1KiB")
    if server.max_line_length < 78:
        problems.append(f"{label}: server.max_line_length: must be at least 78")
    problems.extend(_hidden_limit_checks(sections, label))
    problems.extend(_spool_checks(sections["backend"], sections["spool"], label))
    if sections["quarantine"].max_age <= 0:
        problems.append(f"{label}: quarantine.max_age: must be more than 0s")
    problems.extend(_antivirus_checks(sections["antivirus"], label))
    problems.extend(_reputation_checks(sections, label))
    if len(sections["metrics"].type_labels or ()) > MAX_TYPE_LABELS:
        problems.append(f"{label}: metrics.type_labels: at most {MAX_TYPE_LABELS} types")
    if sections["log"].level not in _LOG_LEVELS:
        problems.append(f"{label}: log.level: must be one of {', '.join(_LOG_LEVELS)}")
    return problems


def _hidden_limit_checks(sections: dict[str, Any], label: str) -> list[str]:
    """Limits that could never act because another one always comes first: the administrator
    who set them expects them to, so they are refused rather than silently outranked."""
    problems = []
    server: ServerConfig = sections["server"]
    if server.max_errors < 1:
        problems.append(f"{label}: server.max_errors: must be at least 1")
    if server.max_commands < 1:
        problems.append(f"{label}: server.max_commands: must be at least 1")
    # The session clock starts at connect, before any command, DATA phase or decision, so a
    # timeout of one of those as long as the session's would always be beaten by it.
    session = server.session_timeout
    within = [("server.command_timeout", server.command_timeout),
              ("server.data_timeout", server.data_timeout),
              ("inspection.timeout", sections["inspection"].timeout)]
    if sections["antivirus"] is not None:
        within.append(("antivirus.timeout", sections["antivirus"].timeout))
    for key, timeout in within:
        if timeout >= session:
            problems.append(f"{label}: {key}: must be less than server.session_timeout "
                            f"({_seconds(timeout)} >= {_seconds(session)}): it could never fire")
    # The tarpit slows error replies after the first tarpit_after; the session is closed at
    # max_errors, so with tarpit_after >= max_errors no error is ever slowed.
    limits: LimitsConfig = sections["limits"]
    if limits.tarpit_delay > 0 and server.max_errors >= 1 and limits.tarpit_after >= server.max_errors:
        problems.append(f"{label}: limits.tarpit_after: must be less than server.max_errors "
                        f"({limits.tarpit_after} >= {server.max_errors}): the session is closed "
                        f"before the tarpit starts")
    # The total is checked first and one address's sessions are among the total.
    if limits.max_connections and limits.max_connections_per_ip >= limits.max_connections:
        problems.append(f"{label}: limits.max_connections_per_ip: must be less than limits.max_connections "
                        f"({limits.max_connections_per_ip} >= {limits.max_connections}): "
                        f"the total limit is always reached first")
    return problems


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _reputation_checks(sections: dict[str, Any], label: str) -> list[str]:
    problems = []
    dns: DnsConfig = sections["dns"]
    if dns.timeout <= 0:
        problems.append(f"{label}: dns.timeout: must be more than 0s")
    dnsbl: DnsblConfig = sections["dnsbl"]
    if dnsbl.threshold < 1:
        problems.append(f"{label}: dnsbl.threshold: must be at least 1")
    names = [entry.name for entry in dnsbl.lists]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{label}: dnsbl.lists: {name!r} appears twice (give one a name)")
    spf: SpfConfig = sections["spf"]
    if spf.timeout <= 0:
        problems.append(f"{label}: spf.timeout: must be more than 0s")
    if spf.concurrency < 1:
        problems.append(f"{label}: spf.concurrency: must be at least 1")
    greylist: GreylistConfig = sections["greylist"]
    if not 8 <= greylist.ipv4_prefix <= 32:
        problems.append(f"{label}: greylist.ipv4_prefix: must be between 8 and 32")
    if not 16 <= greylist.ipv6_prefix <= 128:
        problems.append(f"{label}: greylist.ipv6_prefix: must be between 16 and 128")
    if greylist.expiry < greylist.delay + greylist.retry_window:
        problems.append(f"{label}: greylist.expiry: must be at least delay + retry_window")
    return problems


def _antivirus_checks(antivirus: AntivirusConfig | None, label: str) -> list[str]:
    if antivirus is None:
        return []
    problems = []
    if antivirus.timeout <= 0:
        problems.append(f"{label}: antivirus.timeout: must be more than 0s")
    if antivirus.concurrency < 1:
        problems.append(f"{label}: antivirus.concurrency: must be at least 1")
    if antivirus.max_size is not None and antivirus.max_size < 1024:
        problems.append(f"{label}: antivirus.max_size: must be at least 1KiB")
    return problems


def _resolve_antivirus(base: Path, antivirus: AntivirusConfig | None,
                       server: ServerConfig) -> AntivirusConfig | None:
    """A relative socket path is relative to the config file; max_size defaults to the server's."""
    if antivirus is None:
        return None
    address = antivirus.address
    if isinstance(address, Path):
        address = _resolve(base, address)
    max_size = server.max_message_size if antivirus.max_size is None else antivirus.max_size
    return dataclasses.replace(antivirus, address=address, max_size=max_size)


def _spool_checks(backend: BackendConfig, spool: SpoolConfig, label: str) -> list[str]:
    problems = []
    if backend.concurrency < 1:
        problems.append(f"{label}: backend.concurrency: must be at least 1")
    if spool.max_messages < 1:
        problems.append(f"{label}: spool.max_messages: must be at least 1")
    if spool.retry_min <= 0:
        problems.append(f"{label}: spool.retry_min: must be more than 0s")
    if spool.retry_max < spool.retry_min:
        problems.append(f"{label}: spool.retry_max: must not be less than spool.retry_min")
    if spool.scan_interval <= 0:
        problems.append(f"{label}: spool.scan_interval: must be more than 0s")
    if spool.max_lifetime < spool.retry_min:
        problems.append(f"{label}: spool.max_lifetime: must not be less than spool.retry_min")
    return problems


def _build_listeners(raw: dict[str, Any], label: str, problems: list[str]) -> tuple[ListenerConfig, ...]:
    tables = raw.get("listener", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(f"{label}: listener: expected [[listener]] tables")
        return ()
    listeners = []
    for index, table in enumerate(tables, 1):
        section = f"listener[{index}]"
        listener = _build_section(ListenerConfig, section, table, label, problems)
        if "address" not in table:
            problems.append(f"{label}: {section}.address: missing (e.g. \"0.0.0.0:25\")")
        listeners.append(listener)
    return tuple(listeners)


def _resolve_listeners(raw: dict[str, Any], sections: dict[str, Any],
                       listeners: tuple[ListenerConfig, ...]) -> tuple[ListenerConfig, ...]:
    """[[listener]] tables, or server.listen as inbound listeners; default TLS mode filled in."""
    if not listeners:
        listeners = tuple(ListenerConfig(address=a) for a in sections["server"].listen)
    default_tls = TlsMode.STARTTLS if sections["tls"].cert_file is not None else TlsMode.NONE
    return tuple(dataclasses.replace(
        listener, name=listener.name or str(listener.address),
        tls=listener.tls if listener.tls is not None else default_tls) for listener in listeners)


def _front_door_checks(sections: dict[str, Any], listeners: tuple[ListenerConfig, ...],
                       label: str) -> list[str]:
    """Listeners, TLS, AUTH, PROXY and open-relay settings that only make sense together."""
    problems = []
    tls: TlsConfig = sections["tls"]
    if (tls.cert_file is None) != (tls.key_file is None):
        problems.append(f"{label}: tls: cert_file and key_file go together")
    seen: dict[str, str] = {}
    for index, listener in enumerate(listeners, 1):
        where = f"{label}: listener[{index}]"
        for key, value in (("address", str(listener.address)), ("name", listener.name)):
            if key == "address" and listener.address is not None and listener.address.port == 0:
                continue          # port 0: each listener gets a port of its own
            if f"{key}:{value}" in seen:
                problems.append(f"{where}.{key}: {value!r} is already used by {seen[f'{key}:{value}']}")
                break
            seen[f"{key}:{value}"] = f"listener[{index}]"
        if listener.tls is not TlsMode.NONE and tls.cert_file is None:
            problems.append(f"{where}.tls: {listener.tls.value!r} needs tls.cert_file and tls.key_file")
        if listener.require_tls and listener.tls is TlsMode.NONE:
            problems.append(f"{where}.require_tls: needs tls = \"starttls\" or \"implicit\"")
        if listener.auth is not AuthMode.NONE:
            if listener.tls is TlsMode.NONE:
                problems.append(f"{where}.auth: AUTH is offered only inside TLS: set tls")
            if sections["auth"].users_file is None:
                problems.append(f"{where}.auth: needs auth.users_file")
        if listener.proxy_protocol and not sections["proxy"].networks:
            problems.append(f"{where}.proxy_protocol: needs proxy.networks (the load balancers)")
    proxy: ProxyConfig = sections["proxy"]
    command_timeout = sections["server"].command_timeout
    if any(listener.proxy_protocol for listener in listeners) and proxy.timeout >= command_timeout:
        # The idle clock runs from connect too: a silent balancer meets command_timeout first.
        problems.append(f"{label}: proxy.timeout: must be less than server.command_timeout "
                        f"({_seconds(proxy.timeout)} >= {_seconds(command_timeout)}): it could never fire")
    relay: RelayConfig = sections["relay"]
    if relay.open and relay.open_confirmation != OPEN_RELAY_CONFIRMATION:
        problems.append(f"{label}: relay.open_confirmation: an open relay needs "
                        f"open_confirmation = \"{OPEN_RELAY_CONFIRMATION}\"")
    backend: BackendConfig = sections["backend"]
    if (backend.tls_cert_file is None) != (backend.tls_key_file is None):
        problems.append(f"{label}: backend: tls_cert_file and tls_key_file go together")
    if backend.tls is BackendTls.NONE:
        for key in ("tls_ca_file", "tls_cert_file", "tls_verify_name"):
            if getattr(backend, key):
                problems.append(f"{label}: backend.{key}: has no effect while backend.tls = \"none\"")
    elif backend.tls is BackendTls.OPPORTUNISTIC:     # the certificate is not checked
        for key in ("tls_ca_file", "tls_verify_name"):
            if getattr(backend, key):
                problems.append(f"{label}: backend.{key}: has no effect unless backend.tls = \"required\" "
                                f"(\"opportunistic\" does not check the certificate)")
    limits: LimitsConfig = sections["limits"]
    if limits.connection_rate_per_ip and limits.connection_rate_window <= 0:
        problems.append(f"{label}: limits.connection_rate_window: must be more than 0")
    return problems


def _resolve_files(base: Path, section: Any) -> Any:
    """Every Path field of a section made absolute, relative to the config file's folder."""
    changes = {f.name: _resolve(base, getattr(section, f.name)) for f in dataclasses.fields(section)
               if isinstance(getattr(section, f.name), Path)}
    return dataclasses.replace(section, **changes) if changes else section


def _build_section(cls: type, section: str, table: dict[str, Any], label: str,
                   problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{label}: {section}.{key}"
        if key not in fields:
            problems.append(f"{where}: unknown key{_hint(key, fields)}")
            continue
        try:
            values[key] = _convert(value, hints[key], fields[key].metadata.get("convert"))
        except ValueError as error:
            problems.append(f"{where}: {error}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # only reachable through a programming error
        problems.append(f"{label}: {section}: {error}")
        return cls()


def _convert(value: Any, hint: Any, converter: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):  # a single value where a list is expected: accept it
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_type_name(value)}")
        item_hint = typing.get_args(hint)[0]
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_convert(item, item_hint, converter))
            except ValueError as error:
                raise ValueError(f"item {index + 1}: {error}") from None
        return tuple(items)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value == "" and type(None) in typing.get_args(hint):
            return None
        return _convert(value, args[0] if len(args) == 1 else str, converter)
    if converter is not None:
        return converter(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [member.value for member in hint]
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return hint(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_type_name(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_type_name(value)}")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_type_name(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path")
        return Path(value)
    raise ValueError(f"unsupported value {value!r}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _hint(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
