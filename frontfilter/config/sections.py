"""One frozen dataclass per `[section]` of frontfilter.toml, with its keys, types and defaults
(the key names are a contract with administrators), and `Config`, which holds them all."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from frontfilter.config.values import (
    conv,
    DnsListConfig,
    HostPort,
    parse_clamd_address,
    parse_dns_list,
    parse_domain,
    parse_fraction,
    parse_host_port,
    parse_listen_address,
    parse_mime_type,
    parse_network,
    parse_resolver,
    parse_selector,
    parse_workers,
)
from frontfilter.units import DAYS, HOURS, MINUTES, GiB, MiB, SECONDS, parse_duration, parse_size


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


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    # The name in the Authentication-Results field the relay adds (RFC 8601): the backend trusts
    # fields with it, so the same name in a field from outside is removed. Default: hostname.
    authserv_id: str = ""
    listen: tuple[HostPort, ...] = conv(parse_listen_address, default=(HostPort("127.0.0.1", 2525),))
    # RFC 5321 §4.5.3.1.7 asks servers to take at least 100 recipients.
    max_message_size: int = conv(parse_size, default=25 * MiB)
    max_recipients: int = 100
    # RFC 5321 §4.5.3.1.6: 998 octets of text per line; longer lines are refused, not folded,
    # because folding would change the message the recipient signed (DKIM).
    max_line_length: int = 998
    # Junk commands per session, as Postfix counts them (smtpd_junk_command_limit): NOOP, RSET,
    # VRFY, EXPN, HELP, ETRN, and recipients past max_recipients; then 421. RCPT within the
    # limit is not junk, so max_recipients can always be reached. A client looping is not mail.
    max_commands: int = 1000
    max_errors: int = 10                     # 4xx/5xx since the last message taken, then 421 and close
    command_timeout: float = conv(parse_duration, default=5 * MINUTES)   # RFC 5321 §4.5.3.2
    data_timeout: float = conv(parse_duration, default=10 * MINUTES)     # whole DATA phase
    session_timeout: float = conv(parse_duration, default=30 * MINUTES)  # whole connection
    shutdown_grace: float = conv(parse_duration, default=30 * SECONDS)
    smtputf8: bool = True
    # Processes serving SMTP on the same sockets, spool and metrics (process/supervisor.py); "auto" is
    # one per CPU. 1 is a single process, with nothing between systemd and the relay.
    workers: int = conv(parse_workers, default=1)


@dataclass(frozen=True)
class RelayConfig:
    domains: tuple[str, ...] = conv(parse_domain, default=())
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = conv(
        parse_network, default=())
    open: bool = False                 # anyone may relay anywhere: needs open_confirmation
    open_confirmation: str = ""
    # Domain-bound relaying (see policy.py): our own domains as senders (default: domains),
    # what trusted/authenticated clients may send as when relaying out, and the login map.
    sender_domains: tuple[str, ...] = conv(parse_domain, default=())
    outbound_senders: OutboundSenders = OutboundSenders.ANY
    sender_map: Path | None = None      # login: allowed senders; set, AUTH users are bound to it


# What `relay.open_confirmation` must say, word for word, before an open relay starts.
OPEN_RELAY_CONFIRMATION = "anyone may send mail anywhere through this relay"


@dataclass(frozen=True)
class ListenerConfig:
    """One `[[listener]]` table: an address and its role."""

    address: HostPort | None = conv(parse_listen_address, default=None)   # required
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
    failure_delay: float = conv(parse_duration, default=2 * SECONDS)   # before each 535
    max_failures: int = 5               # per client address within lockout_time; 0: never lock
    lockout_time: float = conv(parse_duration, default=15 * MINUTES)


@dataclass(frozen=True)
class LimitsConfig:
    """Connection limits (0: no limit); see frontfilter/smtp/limits.py for the reasons."""

    max_connections: int = 500
    max_connections_per_ip: int = 20
    # New connections per connection_rate_window. Off by default, as Postfix's
    # smtpd_client_connection_rate_limit: a large sender (a provider's outbound pool, a mailing
    # list) reconnects for every few messages and must never be deferred by a default.
    connection_rate_per_ip: int = 0
    connection_rate_window: float = conv(parse_duration, default=1 * MINUTES)
    tarpit_after: int = 3               # errors in a session answered at full speed
    tarpit_delay: float = conv(parse_duration, default=1 * SECONDS)    # before each later one
    # A command line or a message sent slower than this (bytes per second, from its first byte,
    # once min_data_rate_grace has passed) ends the session: a client dribbling a byte now and
    # then would hold its slot for command_timeout per byte, data_timeout per message. 500
    # B/s, Postfix's smtpd_min_data_rate, is slower than any link that still carries mail.
    min_data_rate: int = 500
    min_data_rate_grace: float = conv(parse_duration, default=10 * SECONDS)
    # DATA held in memory by one relay process at once (each message from its first byte to its
    # verdict); past it a message is drained and answered 452 4.3.1. 0: no bound (then
    # max_connections x server.max_message_size is the worst case). smtp/budget.py.
    max_data_in_memory: int = conv(parse_size, default=256 * MiB)
    # DATA past this size, while it is being received, goes to a file of its own in the spool's
    # directory (unnamed: it leaves nothing behind): a crowd of slow big uploads holds disk,
    # not memory. Read back for its verdict (then charged to max_data_in_memory). 0: never.
    data_spill_size: int = conv(parse_size, default=1 * MiB)


@dataclass(frozen=True)
class ProxyConfig:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = conv(
        parse_network, default=())      # load balancers allowed to send a PROXY header
    timeout: float = conv(parse_duration, default=10 * SECONDS)


@dataclass(frozen=True)
class BackendConfig:
    servers: tuple[HostPort, ...] = conv(parse_host_port, default=())
    mode: BackendMode = BackendMode.QUEUE
    connect_timeout: float = conv(parse_duration, default=10 * SECONDS)
    timeout: float = conv(parse_duration, default=2 * MINUTES)    # per SMTP command
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
    skip_failed_for: float = conv(parse_duration, default=30 * SECONDS)
    # Queue mode: while eight times `concurrency` messages wait for their first delivery, a new
    # message waits at MAIL for that line to shorten, this long at most, then goes on (Postfix's
    # in_flow_delay, 1s). 0: never wait (delivery/worker.py Worker.in_flow).
    in_flow_delay: float = conv(parse_duration, default=1 * SECONDS)
    # Queue mode: ask the backend about each recipient at RCPT (Postfix reject_unverified_recipient)
    # so unknown users are refused while the client is connected, not bounced later.
    verify_recipients: bool = False
    verify_positive_ttl: float = conv(parse_duration, default=1 * HOURS)
    verify_negative_ttl: float = conv(parse_duration, default=10 * MINUTES)
    # Tell a backend that advertises XFORWARD (Postfix: smtpd_authorized_xforward_hosts), or else
    # XCLIENT (smtpd_authorized_xclient_hosts), who the real client was: its address, port, HELO
    # and, with XCLIENT, its AUTH login (delivery/xforward.py). Never sent unasked.
    forward_client: bool = True


@dataclass(frozen=True)
class SpoolConfig:
    """Queue mode's durable spool and its retry schedule (see docs/spool.md)."""

    dir: Path = Path("var/spool")
    # Back-pressure: past any of these, new mail gets 452 4.3.1 (RFC 3463 "mail system full").
    max_messages: int = 100_000
    max_size: int = conv(parse_size, default=10 * GiB)
    min_free_space: int = conv(parse_size, default=1 * GiB)   # kept free on the spool's disk
    # Retries: exponential from retry_min, doubling up to retry_max, each delay +- retry_jitter
    # so messages deferred together do not come back together. Postfix: 300s .. 4000s.
    retry_min: float = conv(parse_duration, default=1 * MINUTES)
    retry_max: float = conv(parse_duration, default=1 * HOURS)
    retry_jitter: float = conv(parse_fraction, default=0.2)
    # Then the message is given up: dead-letter directory and a DSN to the sender (Postfix: 5d).
    max_lifetime: float = conv(parse_duration, default=5 * DAYS)
    # How often the spool directory is re-read: changes made by `frontfilter queue` (or another
    # process) are seen within this time, and the spool gauges refreshed.
    scan_interval: float = conv(parse_duration, default=2 * SECONDS)


@dataclass(frozen=True)
class RulesConfig:
    dir: Path = Path("rules")
    soft_reject: bool = False          # turn every 5xx into 4xx while a rule set is on trial
    watch: bool = True                 # reload when a rule file changes on disk
    watch_interval: float = conv(parse_duration, default=2 * SECONDS)


@dataclass(frozen=True)
class InspectionConfig:
    """Bounds of the content walk; see frontfilter/content/limits.py for each reason."""

    timeout: float = conv(parse_duration, default=30 * SECONDS)
    max_depth: int = 20
    max_parts: int = 500
    max_header_bytes: int = conv(parse_size, default=256 * 1024)
    max_decoded_bytes: int = conv(parse_size, default=100 * MiB)
    max_archive_depth: int = 3
    max_archive_members: int = 1000
    max_expanded_size: int = conv(parse_size, default=200 * MiB)
    max_compression_ratio: int = 100
    text_bytes: int = conv(parse_size, default=1 * MiB)
    # Content types remembered by SHA-256 (content/sniff.py TypeCache): about 150 bytes each;
    # 0 runs libmagic on every part of every message.
    type_cache: int = 10_000


class QuarantineOutcome(enum.Enum):
    REJECT = "reject"   # the client is refused (the rule's reply); a copy is kept
    ACCEPT = "accept"   # the client gets 250; the copy is kept and nothing is forwarded


@dataclass(frozen=True)
class QuarantineConfig:
    """Messages rules set aside (frontfilter/delivery/quarantine/), and how long the relay keeps them."""

    dir: Path = Path("var/quarantine")
    then: QuarantineOutcome = QuarantineOutcome.REJECT
    # Retention, applied by the running relay: older messages are removed, then the oldest
    # while the whole quarantine is over max_size (0: no size bound). A quarantine nobody
    # reviews must not fill the disk the spool shares.
    max_age: float = conv(parse_duration, default=30 * DAYS)
    max_size: int = conv(parse_size, default=1 * GiB)


class OnError(enum.Enum):
    """What happens to a message clamd could not scan (unreachable, timeout, error, too big)."""

    TEMPFAIL = "tempfail"   # 4xx: the client retries later; nothing passes unscanned
    ACCEPT = "accept"       # passes unscanned, counted and logged: availability before safety


@dataclass(frozen=True)
class AntivirusConfig:
    """[antivirus]: present, every message is scanned by clamd (see frontfilter/antivirus/)."""

    # Debian's LocalSocket. TCP carries the mail in clear and unauthenticated: loopback only.
    address: Path | HostPort = conv(parse_clamd_address, default=Path("/run/clamav/clamd.ctl"))
    timeout: float = conv(parse_duration, default=30 * SECONDS)   # one whole scan, queueing included
    # Most bytes sent; a larger message is not scanned and gets on_error. Unset: the server's
    # max_message_size, so every message it takes is scanned (clamd's StreamMaxLength must be
    # at least as large: Debian ships 25M).
    max_size: int | None = conv(parse_size, default=None)
    # Scans in flight at once, per worker process (server.workers): their sum should stay below
    # clamd's MaxThreads (10 by default) so that clamd never queues our scans behind each other
    # where our timeout cannot tell load from a hang.
    concurrency: int = 8
    on_error: OnError = OnError.TEMPFAIL


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None = conv(parse_listen_address, default=None)   # /metrics, /healthz, /readyz
    # Detected types counted under their own name in frontfilter_attachments_stripped_total;
    # any other type is counted as "other". Unset: the built-in list (observe.STRIPPED_TYPE_LABELS).
    type_labels: tuple[str, ...] | None = conv(parse_mime_type, default=None)


# Each type label is one more time series; past this the label is no longer "a small set".
MAX_TYPE_LABELS = 64


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LogConfig:
    format: LogFormat = LogFormat.JSON
    level: str = "info"


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: the resolvers the reputation checks ask, and how long they wait."""

    resolvers: tuple[HostPort, ...] = conv(parse_resolver, default=())  # empty: /etc/resolv.conf
    timeout: float = conv(parse_duration, default=5 * SECONDS)   # all DNSBL lookups of a client
    cache_size: int = 10_000                                      # answers kept (LRU)
    max_ttl: float = conv(parse_duration, default=1 * HOURS)     # cap on what a zone asks for
    negative_ttl: float = conv(parse_duration, default=5 * MINUTES)   # "not listed", no SOA given
    # Look up the envelope sender's domain at MAIL (MX, else A/AAAA) when a rule reads
    # sender.domain_exists (the shipped unknown-sender-domain rule does): Postfix's
    # reject_unknown_sender_domain. Off by default: it needs a resolver that answers.
    check_sender_domain: bool = False


@dataclass(frozen=True)
class DnsblConfig:
    """[dnsbl]: weighted block and allow lists of the client address (postscreen_dnsbl_sites)."""

    threshold: int = 1                  # score at which client.dnsbl holds (postscreen_dnsbl_threshold)
    lists: tuple[DnsListConfig, ...] = conv(parse_dns_list, default=())


@dataclass(frozen=True)
class SpfConfig:
    """[spf]: evaluate SPF (RFC 7208) for the envelope sender (or the HELO name for bounces)."""

    enabled: bool = False
    # RFC 7208 §4.6.4: at least 20 seconds for a whole evaluation before temperror.
    timeout: float = conv(parse_duration, default=20 * SECONDS)
    header: bool = True                 # add Received-SPF (RFC 7208 §9.1) to the message
    concurrency: int = 16               # evaluations at once (each holds a worker thread)


@dataclass(frozen=True)
class DkimConfig:
    """[dkim]: verify the DKIM signatures and ARC chain of received mail (RFC 6376, 8617)."""

    enabled: bool = False
    timeout: float = conv(parse_duration, default=5 * SECONDS)    # a message's key lookups and checks
    max_signatures: int = 5             # verified per message, top down (RFC 6376 §6.1)
    min_key_bits: int = 1024            # shorter keys: permerror (RFC 8301 §3.2)
    concurrency: int = 2                # verifications at once (each holds a worker thread)


@dataclass(frozen=True)
class DmarcConfig:
    """[dmarc]: evaluate the From: domain's DMARC policy and alignment (RFC 7489)."""

    enabled: bool = False
    timeout: float = conv(parse_duration, default=5 * SECONDS)    # the record lookups of a message


@dataclass(frozen=True)
class GreylistConfig:
    """[greylist]: tempfail the first try of an unknown (client net, sender, recipient)."""

    enabled: bool = False
    database: Path = Path("var/greylist.sqlite")
    delay: float = conv(parse_duration, default=5 * MINUTES)          # postgrey --delay
    retry_window: float = conv(parse_duration, default=2 * DAYS)      # postgrey --retry-window
    expiry: float = conv(parse_duration, default=35 * DAYS)           # postgrey --max-age
    ipv4_prefix: int = 24               # a sending farm retries from another address of its /24
    ipv6_prefix: int = 64
    whitelist_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = conv(
        parse_network, default=())
    whitelist_domains: tuple[str, ...] = conv(parse_domain, default=())   # sender domains (and subdomains)


class ArcSeal(enum.Enum):
    """Which forwarded messages `[arc]` seals."""

    # Those the relay changed where a DKIM signature may cover it: a part stripped, a field a
    # rule added (tags too), a forged Authentication-Results removed. Not its own trace fields
    # on top (Received, Authentication-Results, Received-SPF): signers do not sign those.
    CHANGED = "changed"
    ALWAYS = "always"      # every forwarded message


@dataclass(frozen=True)
class ArcConfig:
    """[arc]: seal forwarded mail (RFC 8617) so the backend can trust the relay's
    Authentication-Results after a change broke the sender's DKIM signature (pipeline/sealing.py)."""

    key_file: Path | None = None        # PEM RSA private key; unset (or no [arc]): no sealing
    selector: str = conv(parse_selector, default="")   # s=: the key is at SELECTOR._domainkey.DOMAIN
    domain: str = conv(parse_domain, default="")       # d=: the signing domain
    seal: ArcSeal = ArcSeal.CHANGED


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
    dkim: DkimConfig = DkimConfig()
    dmarc: DmarcConfig = DmarcConfig()
    greylist: GreylistConfig = GreylistConfig()
    arc: ArcConfig = ArcConfig()
