"""What no single key can say: combinations refused (`cross_checks`, `front_door_checks`), and
settings that work but hurt (`config_warnings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frontfilter.config.sections import (
    LOG_LEVELS,
    AntivirusConfig,
    ArcConfig,
    AuthMode,
    BackendConfig,
    BackendMode,
    BackendTls,
    Config,
    DkimConfig,
    DnsblConfig,
    DnsConfig,
    GreylistConfig,
    LimitsConfig,
    ListenerConfig,
    MAX_TYPE_LABELS,
    OPEN_RELAY_CONFIRMATION,
    ProxyConfig,
    RelayConfig,
    ServerConfig,
    SpfConfig,
    SpoolConfig,
    TlsConfig,
    TlsMode,
)


# Where systemd puts a service's credentials (LoadCredential=, systemd.exec(5)).
CREDENTIALS_ROOT = Path("/run/credentials")


def credential_files_not_there_yet(config: Config) -> list[tuple[str, Path]]:
    """(key, path) of the secret files under /run/credentials that do not exist: the deploy
    guide hands the key and the users file over that way, and systemd makes them only when it
    starts the service — `frontfilter check` before the first start cannot read them."""
    files = [("tls.cert_file", config.tls.cert_file), ("tls.key_file", config.tls.key_file),
             ("auth.users_file", config.auth.users_file), ("arc.key_file", config.arc.key_file)]
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


def cross_checks(sections: dict[str, Any], label: str) -> list[str]:
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
    problems.extend(_arc_checks(sections["arc"], label))
    if len(sections["metrics"].type_labels or ()) > MAX_TYPE_LABELS:
        problems.append(f"{label}: metrics.type_labels: at most {MAX_TYPE_LABELS} types")
    if sections["log"].level not in LOG_LEVELS:
        problems.append(f"{label}: log.level: must be one of {', '.join(LOG_LEVELS)}")
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
    # The total is checked first and one address's sessions are among the total. The per-address
    # count is the whole service's (smtp/shared_counts.py), max_connections each worker's.
    workers = max(1, server.workers)
    total = limits.max_connections * workers
    if limits.max_connections and limits.max_connections_per_ip >= total:
        of = "limits.max_connections" + (" x server.workers" if workers > 1 else "")
        problems.append(f"{label}: limits.max_connections_per_ip: must be less than {of} "
                        f"({limits.max_connections_per_ip} >= {total}): "
                        f"the total limit is always reached first")
    # A message of max_message_size must fit, or the largest mail allowed could never be taken.
    if limits.max_data_in_memory and limits.max_data_in_memory < server.max_message_size:
        problems.append(f"{label}: limits.max_data_in_memory: must be at least server.max_message_size "
                        f"({limits.max_data_in_memory} < {server.max_message_size} bytes): the largest "
                        f"message allowed could never be taken")
    return problems


def memory_bound(config: Config) -> str:
    """The most DATA the relay can hold in memory, for `frontfilter check` (smtp/budget.py)."""
    workers = config.server.workers
    per_worker = config.limits.max_data_in_memory
    if not per_worker:
        worst = config.limits.max_connections * config.server.max_message_size
        return (f"DATA in memory: no bound (limits.max_data_in_memory = 0): up to {_mib(worst)} a worker "
                f"(max_connections x max_message_size)")
    many = f", {_mib(per_worker * workers)} for {workers} workers" if workers > 1 else ""
    spill = config.limits.data_spill_size
    received = (f"; a message being received holds at most {_mib(spill)} of it, the rest is in a file in "
                f"the spool directory (limits.data_spill_size)") if spill else ""
    return f"DATA in memory: at most {_mib(per_worker)} a worker{many} (limits.max_data_in_memory){received}"


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


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
    for name in ("dkim", "dmarc"):
        if sections[name].timeout <= 0:
            problems.append(f"{label}: {name}.timeout: must be more than 0s")
    dkim: DkimConfig = sections["dkim"]
    if dkim.concurrency < 1:
        problems.append(f"{label}: dkim.concurrency: must be at least 1")
    if not 1 <= dkim.max_signatures <= 50:
        problems.append(f"{label}: dkim.max_signatures: must be between 1 and 50")
    if not 512 <= dkim.min_key_bits <= 16384:
        problems.append(f"{label}: dkim.min_key_bits: must be between 512 and 16384 (RFC 8301: 1024)")
    greylist: GreylistConfig = sections["greylist"]
    if not 8 <= greylist.ipv4_prefix <= 32:
        problems.append(f"{label}: greylist.ipv4_prefix: must be between 8 and 32")
    if not 16 <= greylist.ipv6_prefix <= 128:
        problems.append(f"{label}: greylist.ipv6_prefix: must be between 16 and 128")
    if greylist.expiry < greylist.delay + greylist.retry_window:
        problems.append(f"{label}: greylist.expiry: must be at least delay + retry_window")
    return problems


# RFC 1035 §2.3.4: a whole DNS name is at most 255 octets on the wire, 253 characters written.
MAX_DNS_NAME = 253


def _arc_checks(arc: ArcConfig, label: str) -> list[str]:
    """A key needs its selector and domain; they mean nothing without one. (The key file
    itself is read where it is used: pipeline/sealing.py, at start, reload and check.)"""
    problems = []
    if arc.key_file is not None:
        for key in ("selector", "domain"):
            if not getattr(arc, key):
                problems.append(f"{label}: arc.{key}: missing (arc.key_file is set: the key is "
                                f"published at SELECTOR._domainkey.DOMAIN)")
        name = f"{arc.selector}._domainkey.{arc.domain}"
        if len(name) > MAX_DNS_NAME:
            problems.append(f"{label}: arc.selector: {name} is longer than a DNS name may be "
                            f"({MAX_DNS_NAME} characters)")
    else:
        for key in ("selector", "domain"):
            if getattr(arc, key):
                problems.append(f"{label}: arc.{key}: has no effect without arc.key_file")
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


def front_door_checks(sections: dict[str, Any], listeners: tuple[ListenerConfig, ...],
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
            mode = listener.tls.value if listener.tls is not None else "starttls"
            problems.append(f"{where}.tls: {mode!r} needs tls.cert_file and tls.key_file")
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
