"""Typed events: each writes one structured log line and moves the matching metrics.

This is the one chokepoint between what frontfilter does and what an administrator sees, so the
log and the dashboard never disagree (STYLE habit 4). Log lines are JSON by default, one object
per line, always with an `event` key; message decisions carry the queue id that the client also
saw in its reply, which joins a complaint to the log line.

Guarantees: label values pass through `metrics.bounded` (or are the administrator's own rule and
backend names), so nothing a client sends can create a time series; the configuration logged at
start-up has its secrets masked (`masked_config`). Per-event cost is a dict and a counter
increment; events that fire per request or per tick (`reply_sent`, `http_request`, `loop_lag`,
`spool_state`) move metrics only and never log at INFO.

Adding an event: one function here, in the section of its subsystem, that moves its metrics
(declared in `metrics.py`) and, if an administrator should read about it, calls `_emit`. This
module is long on purpose: it is the catalogue of everything frontfilter reports, one small
function per event; splitting it would scatter the chokepoint.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from frontfilter import metrics
from frontfilter.reply import Reply

log = logging.getLogger("frontfilter")

# Label values for stripped types: a fixed set, everything else is "other" (cardinality bound).
# The default of `[metrics] type_labels`; `set_type_labels` replaces it at start-up.
STRIPPED_TYPE_LABELS = frozenset({
    "application/vnd.microsoft.portable-executable", "application/x-dosexec",
    "application/x-executable", "application/x-sharedlib", "application/x-msi",
    "application/zip", "application/x-7z-compressed", "application/x-rar", "application/gzip",
    "application/pdf", "application/msword", "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint", "application/x-ole-storage",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "text/html", "text/plain", "application/javascript", "text/x-shellscript",
    "application/octet-stream", "image/jpeg", "image/png",
})
_type_labels: frozenset[str] = STRIPPED_TYPE_LABELS


# Children of labelled metrics, by metric and label values. `labels()` validates and takes a
# lock on every call (2-8 µs: 4 % of the event loop's time in the bench profile, a dozen calls
# per message); the child for a given set of values never changes, so it is looked up once.
# The values are the bounded ones (or rule and backend names), so this holds no more entries
# than the metrics themselves hold series.
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _series(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, positional in the order of the metric's label names."""
    child = _children.get((metric, values))
    if child is None:
        child = _children[metric, values] = metric.labels(*values)
    return child


def set_type_labels(types: Iterable[str] | None) -> None:
    """The detected types counted under their own name; None restores the built-in set. Their
    counters (and `other`) are created at zero, so a first strip shows in increase()."""
    global _type_labels
    _type_labels = STRIPPED_TYPE_LABELS if types is None else frozenset(types)
    for label in sorted(_type_labels | {metrics.OTHER}):
        metrics.attachments_stripped.labels(type=label)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        else:
            entry["event"] = "log"
            entry["logger"] = record.name
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _escape_unprintable(json.dumps(entry, ensure_ascii=False, default=str))


def _escape_unprintable(text: str) -> str:
    """`text` with every character that is not printable written as its JSON escape.

    Fields carry what clients sent (HELO names, addresses, header values). json.dumps escapes
    only C0 controls; U+0085, U+2028 and U+2029 end a line for many readers (Python's
    splitlines, JavaScript, some log shippers), DEL and the other C1 controls drive terminals,
    bidi controls reorder what an administrator reads, and a lone surrogate (an undecodable
    byte) cannot be written as UTF-8 at all. Escaped, one record stays one line that reads as
    what was sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        if fields:
            body = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        else:
            body = f"{record.name}: {record.getMessage()}"
        line = f"{stamp} {record.levelname.lower()} {_escape_unprintable(body)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    """A bare word when it is one (printable, no blank, not starting with a quote), else JSON."""
    if isinstance(value, str) and value and value.isprintable() and " " not in value and value[0] != '"':
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


# The syslog priority (RFC 5424) of each logging level. systemd-journald reads a "<N>" at the
# start of a line a service writes to stderr as that entry's priority (SyslogLevelPrefix=, on
# by default) and stores the line without it: `journalctl -p err` then finds the errors, and
# `journalctl -o cat` still shows the JSON alone.
_SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
                    logging.DEBUG: 7}


class _JournalPriority(logging.Formatter):
    """Another formatter's lines, each with the record's "<N>" priority prefix."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def writes_to_the_journal(stream: Any) -> bool:
    """Whether `stream` is the journal's: systemd names the stream it connected stdout/stderr
    to in JOURNAL_STREAM as "device:inode" (systemd.exec(5)); anywhere else — a terminal, a
    pipe, a file, the same variable inherited by a child with other stderr — no prefix."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def setup_logging(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter = _JsonFormatter() if fmt == "json" else _TextFormatter()
    handler.setFormatter(_JournalPriority(formatter) if writes_to_the_journal(stream) else formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # aiosmtpd (`frontfilter sink`) logs every command at INFO, with addresses: debug only.
    logging.getLogger("mail.log").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
    # Neither formatter shows the thread or process of a record: the logging HOWTO's
    # "Optimization" switches spare gathering them for every line. The caller (file, line) is
    # still looked up: its switch is private (logging._srcfile) and it costs 0.4 µs of a 9 µs line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


# Fields every line of this process carries: with several workers, which one wrote it.
_PROCESS_FIELDS: dict[str, Any] = {}


def _emit(level: int, event: str, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": {"event": event, **_PROCESS_FIELDS, **fields}})


def first_worker() -> bool:
    """This process is the service's only one, or its worker 0. Events of the whole service
    (a rule load, made by each worker) are counted here only, and service-wide tasks (the
    quarantine's retention) run here only."""
    return metrics.worker_slot() in (None, "0")


def set_worker(pid: int) -> None:
    """In a worker of several (process/supervisor.py): every line names it, `"worker": pid`, and its
    process metrics are exported under its slot (metrics.ProcessTree)."""
    _PROCESS_FIELDS["worker"] = pid
    metrics.announce_worker()


# ---- process -----------------------------------------------------------------------------

def started(version: str, listen: Sequence[str], config: Any) -> None:
    """Start-up: the version, and the effective configuration with its secrets masked."""
    metrics.build_info.labels(version=version).set(1)
    _emit(logging.INFO, "started", version=version, listen=list(listen), config=masked_config(config))


def listening(address: str, listener: str | None = None) -> None:
    """An SMTP listener is open: the address with the port it got (a config may say port 0)."""
    _emit(logging.INFO, "listening", address=address, listener=listener)


def http_listening(address: str) -> None:
    """The metrics and health endpoint is up (a separate event: `listening` is SMTP's)."""
    _emit(logging.INFO, "http_listening", address=address,
          paths=["/metrics", "/healthz", "/readyz"])


def stopping(reason: str) -> None:
    _emit(logging.INFO, "stopping", reason=reason)


def stopped(sessions_cut: int) -> None:
    _emit(logging.INFO, "stopped", sessions_cut=sessions_cut)


def warning(event: str, **fields: Any) -> None:
    _emit(logging.WARNING, event, **fields)


def internal_error(where: str, queue_id: str | None = None, **fields: Any) -> None:
    """An unexpected exception: the detail (with traceback) goes here, never to the client."""
    log.error(where, exc_info=True,
              extra={"fields": {"event": "internal_error", "where": where, "queue_id": queue_id, **fields}})


# Key names whose values are secrets: shown as "***" unless the value is a path (a key file's
# location is fine to log, its contents are not). PEM blocks are masked under any name.
# "key" only as the whole name, its first word or its last (`key`, `api_key`, `key_data`): in
# the middle it names a measure of one (`dkim.min_key_bits`), which an administrator must see.
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)|(^|_)pass($|_)|secret|token|credential|private|psk"
                         r"|^keys?(_|$)|_keys?$", re.IGNORECASE)
MASK = "***"


def _secret(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def masked_config(config: Any) -> Any:
    """`config` (the frozen dataclasses, or plain mappings) as JSON-ready values, secrets masked.

    Paths, host:port values, networks and enums become strings; a value under a secret-looking
    key (password, secret, token, key, ...) becomes "***" unless it is a path; any string holding
    a PEM block becomes "***" whatever its key.
    """
    return _masked(config, secret=False)


def _masked(value: Any, secret: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value).__str__ is not object.__str__:     # a value type (HostPort): its text
            return MASK if secret else str(value)
        return {f.name: _masked(getattr(value, f.name), _secret(f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _masked(v, _secret(str(k))) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v, secret) for v in value]
    if isinstance(value, PurePath):
        return str(value)                 # a path is never the secret itself
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str) and "-----BEGIN" in value:
        return MASK
    if secret:
        return MASK if value not in ("", 0) else value
    return value if isinstance(value, int | float | str) else str(value)


# ---- rules ------------------------------------------------------------------------------

def rules_loaded(count: int, fingerprint: str, files: Sequence[str], reload: bool,
                 rules: Iterable[tuple[str, str, str]] = ()) -> None:
    """A rule set is in force. `rules`: (name, action, mode) of each, whose match counters are
    created at zero now, so the first match of a new rule shows in rate() and increase()."""
    for name, action, mode in rules:
        metrics.rule_matches.labels(rule=name, action=metrics.bounded(action, metrics.RULE_ACTIONS),
                                    mode=metrics.bounded(mode, metrics.RULE_MODES))
    metrics.rules_loaded.set(count)
    if first_worker():
        metrics.rules_reloads.labels(result="ok").inc()
    metrics.rules_last_reload_successful.set(1)
    metrics.rules_last_reload_success_timestamp.set(time.time())
    _emit(logging.INFO, "rules_loaded", rules=count, fingerprint=fingerprint,
          files=list(files), reload=reload)


def rules_refused(errors: Sequence[str], reload: bool) -> None:
    if first_worker():
        metrics.rules_reloads.labels(result="invalid").inc()
    metrics.rules_last_reload_successful.set(0)
    _emit(logging.ERROR, "rules_refused", errors=list(errors), reload=reload,
          kept_previous=reload)


# ---- SMTP -------------------------------------------------------------------------------

_SMTP_CODE = re.compile(r"[2-5][0-5][0-9]")


def connection(result: str, client: str | None = None, **fields: Any) -> None:
    """One connection admitted or refused; `result` from metrics.CONNECTION_RESULTS.

    `fields` add detail to the log line (which limit, why TLS or PROXY failed)."""
    _series(metrics.connections, metrics.bounded(result, metrics.CONNECTION_RESULTS)).inc()
    if result != "accepted":
        _emit(logging.INFO, "connection_refused", result=result, client=client, **fields)


def reply_sent(stage: str, code: str) -> None:
    """Every line the server writes, counted by stage and 3-digit code (354 and 334 included)."""
    _series(metrics.smtp_replies, metrics.bounded(stage, metrics.REPLY_STAGES),
            code if _SMTP_CODE.fullmatch(code) else metrics.OTHER).inc()


def stage_decided(stage: str, seconds: float) -> None:
    _series(metrics.processing_seconds, metrics.bounded(stage, metrics.PROCESSING_STAGES)).observe(seconds)


def rules_monitored(client: str, stage: str, rules: Sequence[str], queue_id: str | None = None) -> None:
    """Monitor-mode rules matched before end of DATA (at DATA they are on the `message` line)."""
    _emit(logging.INFO, "monitor", queue_id=queue_id, client=client, stage=stage, rules=list(rules))


def command_refused(client: str, stage: str, reply: Reply, reason: str, kind: str,
                    queue_id: str | None = None, rules: Iterable[str] = ()) -> None:
    """A refusal before end of DATA (relay denied, bad address, a rule at RCPT). `kind` is the
    bounded why of metrics.REFUSAL_REASONS, `reason` the detail for the log line."""
    _refusal_counted(stage, kind)
    _emit(logging.INFO, "refused", queue_id=queue_id, client=client, stage=stage,
          reply=reply.wire, reason=reason, rules=list(rules))


def _refusal_counted(stage: str, kind: str) -> None:
    _series(metrics.refusals, metrics.bounded(stage, metrics.REPLY_STAGES),
            metrics.bounded(kind, metrics.REFUSAL_REASONS)).inc()


def protocol_violation(client: str, what: str) -> None:
    _emit(logging.INFO, "protocol_violation", client=client, what=what)


def credentials_loaded(what: str, reload: bool, **fields: Any) -> None:
    """A credential was (re)loaded: `what` is tls_certificate, users, backend_tls, sender_map
    or arc_key (the event is `<what>_loaded`)."""
    _emit(logging.INFO, f"{what}_loaded", reload=reload, **fields)


def tls_certificate_expires(listeners: Iterable[str], not_after: float) -> None:
    """The certificate the TLS listeners serve, (re)loaded: when it expires."""
    for listener in listeners:
        metrics.tls_certificate_expiry.labels(listener=listener).set(not_after)


def credentials_refused(what: str, problems: Sequence[str], reload: bool) -> None:
    """A credential (as `credentials_loaded` lists them) did not load: at a reload the old one
    stays."""
    _emit(logging.ERROR, f"{what}_refused", problems=list(problems), reload=reload,
          kept_previous=reload)


def tls_session(direction: str, version: str) -> None:
    """A TLS handshake completed; `version` as ssl reports it ("TLSv1.3")."""
    metrics.tls_sessions.labels(direction=metrics.bounded(direction, metrics.TLS_DIRECTIONS),
                                version=metrics.bounded(version, metrics.TLS_VERSIONS)).inc()


def auth_attempt(result: str, client: str | None = None, mechanism: str | None = None, *,
                 user: str | None = None, **fields: Any) -> None:
    """One SMTP AUTH exchange; `result` from metrics.AUTH_RESULTS. Never pass the password.

    Logged each time (client, mechanism, user when known: what fail2ban and an audit need)."""
    metrics.auth_attempts.labels(result=metrics.bounded(result, metrics.AUTH_RESULTS)).inc()
    _emit(logging.INFO, "auth", result=result, client=client, mechanism=mechanism, user=user,
          **fields)


# ---- messages ---------------------------------------------------------------------------

def rule_matched(rule: str, action: str, mode: str) -> None:
    """`rule` is a name from the administrator's rule files: bounded by the rule set."""
    _series(metrics.rule_matches, rule, metrics.bounded(action, metrics.RULE_ACTIONS),
            metrics.bounded(mode, metrics.RULE_MODES)).inc()


def inspection_limit(limit: str) -> None:
    metrics.inspection_limits.labels(limit=metrics.bounded(limit, metrics.INSPECTION_LIMITS)).inc()


def type_cache_lookups(hits: int, misses: int) -> None:
    """Parts typed from `sniff.TypeCache` (hits) and by libmagic (misses) since the last call."""
    if hits:
        _series(metrics.type_cache_lookups, "hit").inc(hits)
    if misses:
        _series(metrics.type_cache_lookups, "miss").inc(misses)


def attachment_stripped(detected_type: str) -> None:
    metrics.attachments_stripped.labels(type=metrics.bounded(detected_type, _type_labels)).inc()


def arc_sealed(sealed: bool) -> None:
    """[arc] sealed a forwarded message, or could not (then it went unsealed); the `message`
    line carries the outcome and why (`arc_seal`)."""
    _series(metrics.arc_seals, "sealed" if sealed else "failed").inc()


def message_decided(*, queue_id: str, verdict: str, size: int, **fields: Any) -> None:
    """The one line per message: client, envelope, size, verdict, rules, delivery, durations."""
    _series(metrics.messages, metrics.bounded(verdict, metrics.VERDICTS)).inc()
    metrics.message_size.observe(size)
    _emit(logging.INFO, "message", queue_id=queue_id, verdict=verdict, size=size, **fields)


# ---- antivirus --------------------------------------------------------------------------

def antivirus_scanned(result: str, seconds: float, queue_id: str | None = None, detail: str = "") -> None:
    """One message scanned by clamd. A scan that failed (error, timeout, too_big) also logs why,
    for the operator; the signature names of an infected one are on the `message` line."""
    metrics.antivirus_scans.labels(result=metrics.bounded(result, metrics.SCAN_RESULTS)).inc()
    metrics.antivirus_scan_seconds.observe(seconds)
    if result not in ("clean", "infected"):
        _emit(logging.WARNING, "antivirus_failed", queue_id=queue_id, result=result, detail=detail)


# ---- reputation -------------------------------------------------------------------------

def dns_query(result: str) -> None:
    """One lookup of the reputation resolver (per query: metrics only, never a log line)."""
    metrics.dns_queries.labels(result=metrics.bounded(result, metrics.DNS_RESULTS)).inc()


def dnsbl_lookup(list_name: str, result: str) -> None:
    """`list_name` is a name from [dnsbl] lists: bounded by the config."""
    metrics.dnsbl_lookups.labels(list=list_name, result=metrics.bounded(result, metrics.DNSBL_RESULTS)).inc()


def client_listing(client: str, score: int, listed_on: Sequence[str],
                   answers: Sequence[tuple[str, str, Sequence[str], str]], seconds: float) -> None:
    """The DNS lists of one client: logged when it is listed somewhere, or a list failed or
    refused to answer (an administrator wants to see both); quiet for the common clean case."""
    metrics.dns_check_seconds.labels(check="dnsbl").observe(seconds)
    if score or listed_on or any(result in ("refused", "error") for _n, result, _c, _d in answers):
        _emit(logging.INFO, "dnsbl", client=client, score=score, listed_on=list(listed_on),
              lists={name: " ".join(part for part in (result, *codes, detail) if part)
                     for name, result, codes, detail in answers},
              ms=round(seconds * 1000, 1))


def spf_checked(result: str, seconds: float) -> None:
    metrics.spf_results.labels(result=metrics.bounded(result, metrics.SPF_RESULTS)).inc()
    metrics.dns_check_seconds.labels(check="spf").observe(seconds)


def dkim_verified(queue_id: str, result: str, domains: tuple[str, ...], problems: list[str],
                  arc: str | None, arc_detail: str, seconds: float) -> None:
    """A signed message's DKIM signatures (and ARC chain) were checked (reputation.dkimcheck).
    Its results are in the `message` line too; this line says why a signature did not pass."""
    metrics.dkim_results.labels(result=metrics.bounded(result, metrics.DKIM_RESULTS)).inc()
    if arc is not None:
        metrics.arc_results.labels(result=metrics.bounded(arc, metrics.ARC_RESULTS)).inc()
    metrics.dns_check_seconds.labels(check="dkim").observe(seconds)
    _emit(logging.INFO, "dkim", queue_id=queue_id, result=result, domains=list(domains),
          problems=problems, arc=arc, arc_detail=arc_detail or None, ms=round(seconds * 1000, 2))


def not_signed(arc: str | None) -> None:
    """A message without DKIM signature or ARC set: counted, nothing looked up."""
    metrics.dkim_results.labels(result="none").inc()
    if arc is not None:
        metrics.arc_results.labels(result=metrics.bounded(arc, metrics.ARC_RESULTS)).inc()


def dmarc_evaluated(result: str, policy: str | None, seconds: float) -> None:
    metrics.dmarc_results.labels(result=metrics.bounded(result, metrics.DMARC_RESULTS),
                                 policy=metrics.bounded(policy or "none", metrics.DMARC_POLICIES)).inc()
    metrics.dns_check_seconds.labels(check="dmarc").observe(seconds)


def greylist_checked(result: str) -> None:
    metrics.greylist_checks.labels(result=metrics.bounded(result, metrics.GREYLIST_RESULTS)).inc()


def sender_domain_checked(domain: str, exists: bool | None, detail: str, seconds: float) -> None:
    """The envelope sender's domain was looked up (reputation.senderdomain)."""
    metrics.dns_check_seconds.labels(check="sender_domain").observe(seconds)
    if exists is None:
        _emit(logging.WARNING, "sender_domain_unknown", domain=domain, detail=detail)


def sender_refused(reason: str) -> None:
    """Domain-bound relaying refused a sender; the `refused` log line says who and why."""
    metrics.sender_refusals.labels(reason=metrics.bounded(reason, metrics.SENDER_REFUSAL_REASONS)).inc()


# ---- delivery ---------------------------------------------------------------------------

# When each backend last answered a delivery (monotonic seconds): the health monitor's passive
# reachability signal, so a backend carrying mail is never probed as well.
_answered_at: dict[str, float] = {}


def forward_attempt(backend: str, result: str, seconds: float, queue_id: str | None = None,
                    detail: str | None = None) -> None:
    """One hand-over (or connection attempt) to `backend` (host:port from the config)."""
    _series(metrics.forward_attempts, backend, metrics.bounded(result, metrics.FORWARD_RESULTS)).inc()
    _series(metrics.forward_seconds, backend).observe(seconds)
    if result in ("ok", "permanent"):      # it answered: reachable, whatever it thought
        _answered_at[backend] = time.monotonic()
        _series(metrics.backend_up, backend).set(1)
    if result != "ok":
        _emit(logging.WARNING, "forward_failed", backend=backend, result=result,
              queue_id=queue_id, detail=detail)


def backend_answered_at(backend: str) -> float | None:
    """time.monotonic() of the last delivery `backend` answered, or None."""
    return _answered_at.get(backend)


def backends_configured(backends: Iterable[str]) -> None:
    """Create each backend's series at zero, so failure ratios exist before the first failure."""
    for backend in backends:
        for result in ("ok", "transient", "permanent"):
            metrics.forward_attempts.labels(backend=backend, result=result)
        metrics.forward_seconds.labels(backend=backend)


def backend_tls_plaintext(backend: str, reason: str) -> None:
    """Opportunistic TLS to a backend failed in the handshake; this delivery goes in plain text."""
    _emit(logging.WARNING, "backend_tls_plaintext", backend=backend, reason=reason)


def backend_probed(backend: str, up: bool) -> None:
    """The health monitor's idle-time probe (SMTP greeting, then QUIT) of one backend."""
    metrics.backend_up.labels(backend=backend).set(1 if up else 0)


def backend_changed(backend: str, up: bool, detail: str | None = None) -> None:
    """A backend went from reachable to not, or back: one line per change, not per probe."""
    _emit(logging.INFO if up else logging.WARNING, "backend_up" if up else "backend_down",
          backend=backend, detail=detail)


def spool_scan_failed(problem: str) -> None:
    """The periodic spool scan cannot read the spool (logged once per distinct problem)."""
    _emit(logging.ERROR, "spool_scan_failed", problem=problem)


def spool_scan_recovered(problem: str) -> None:
    _emit(logging.INFO, "spool_scan_recovered", was=problem)


def spool_state(messages: int, oldest_age_seconds: float) -> None:
    """The spool's depth and the age of its oldest message (0 when empty); call on each scan."""
    metrics.spool_messages.set(messages)
    metrics.spool_oldest_age.set(oldest_age_seconds)


def dead_letter(queue_id: str, reason: str, **fields: Any) -> None:
    """A message given up on (moved to the dead-letter directory): counted and logged."""
    metrics.dead_letters.inc()
    _emit(logging.WARNING, "dead_letter", queue_id=queue_id, reason=reason, **fields)


def delivery(*, queue_id: str, status: str, **fields: Any) -> None:
    """One delivery attempt of a spooled message: `status` delivered, deferred or failed, with
    the recipients each attempt settled (forward_attempt counts the hand-overs themselves)."""
    _emit(logging.INFO, "delivery", queue_id=queue_id, status=status, **fields)


def dsn_queued(queue_id: str, dsn_id: str, recipients: Sequence[str]) -> None:
    """A delivery status notification for `queue_id` was spooled as `dsn_id`."""
    _emit(logging.INFO, "dsn_queued", queue_id=queue_id, dsn_id=dsn_id, recipients=list(recipients))


def spool_recovered(messages: int, temps_discarded: int, orphan_states: int) -> None:
    """Start-up scan of the spool: what will be delivered, and what was never acknowledged."""
    _emit(logging.INFO, "spool_recovered", messages=messages, temps_discarded=temps_discarded,
          orphan_states=orphan_states)


def spool_commit_process_lost(problem: str, refused: int, exit_code: int | None) -> None:
    """The spool's commit process (delivery/committer.py) ended or failed: the messages it had
    not confirmed were refused (4xx) and removed; the next message starts another."""
    metrics.spool_commit_process_lost.inc()
    _emit(logging.ERROR, "spool_commit_process_lost", problem=problem, refused=refused, exit_code=exit_code)


def in_flow_waited(seconds: float, ended: str) -> None:
    """A client held at MAIL by in-flow control (delivery.worker.Worker.in_flow)."""
    metrics.in_flow_waits.labels(ended=metrics.bounded(ended, metrics.IN_FLOW_ENDINGS)).inc()
    metrics.in_flow_wait_seconds.inc(seconds)


def spool_removed_elsewhere(queue_id: str) -> None:
    """A spooled message vanished without this process (`frontfilter queue delete`, another worker)."""
    _emit(logging.INFO, "spool_removed", queue_id=queue_id)


def delivery_stopped(cut: int) -> None:
    """Shutdown: attempts still in flight at the deadline were cut; their mail stays spooled."""
    _emit(logging.INFO, "delivery_stopped", attempts_cut=cut)


def recipient_verified(result: str, cached: bool) -> None:
    """A recipient checked against the backend at RCPT (queue mode, backend.verify_recipients)."""
    metrics.recipient_verifications.labels(
        result=metrics.bounded(result, metrics.VERIFY_RESULTS),
        source="cache" if cached else "probe").inc()


# ---- quarantine (frontfilter/delivery/quarantine/) -------------------------------------------------

def quarantine_released(*, queue_id: str, rule: str, known_rules: Iterable[str], **fields: Any) -> None:
    """A held message was released (by `frontfilter quarantine release`, reported through its
    ledger record). Counted under its rule when the loaded rule set has it, else `other`: the
    rule was read from a file, and a label must stay within the administrator's rules."""
    label = rule if rule in known_rules else metrics.OTHER
    _series(metrics.quarantine_released, label).inc()
    _emit(logging.INFO, "quarantine_released", queue_id=queue_id, rule=rule, **fields)


def quarantine_expired(*, queue_id: str, reason: str, **fields: Any) -> None:
    """A held message removed by the retention (`reason` age or size), by the relay or the tool."""
    _series(metrics.quarantine_expired, metrics.bounded(reason, metrics.EXPIRY_REASONS)).inc()
    _emit(logging.INFO, "quarantine_expired", queue_id=queue_id, reason=reason, **fields)


def quarantine_state(messages: int, size: int, oldest_age_seconds: float) -> None:
    """What the quarantine holds, after each retention pass."""
    metrics.quarantine_messages.set(messages)
    metrics.quarantine_bytes.set(size)
    metrics.quarantine_oldest.set(oldest_age_seconds)


def quarantine_record_unreadable(path: str, problem: str) -> None:
    """A ledger record the tool left could not be read; it is removed."""
    _emit(logging.WARNING, "quarantine_record_unreadable", path=path, problem=problem)


def quarantine_retention_failed(problem: str) -> None:
    """The retention cannot read or change the quarantine (logged once per distinct problem)."""
    _emit(logging.ERROR, "quarantine_retention_failed", problem=problem)


def quarantine_retention_recovered(problem: str) -> None:
    _emit(logging.INFO, "quarantine_retention_recovered", was=problem)


# ---- health and the HTTP endpoint -----------------------------------------------------------

def ready_check(check: str, ok: bool) -> None:
    """The current result of one readiness check (metrics.READY_CHECKS), set on every probe."""
    metrics.ready.labels(check=metrics.bounded(check, metrics.READY_CHECKS)).set(1 if ok else 0)


def readiness_changed(check: str, ok: bool, detail: str) -> None:
    """A readiness check flipped: one log line per change, with the reason."""
    _emit(logging.INFO if ok else logging.WARNING, "readiness_changed", check=check, ok=ok,
          detail=detail)


def loop_lag(seconds: float) -> None:
    metrics.event_loop_lag.observe(max(0.0, seconds))


def http_request(path: str, code: int, client: str | None = None) -> None:
    """One request to the metrics/health endpoint. Logged at debug only: scrapes are not news."""
    label = metrics.bounded(path, metrics.HTTP_PATHS)
    metrics.http_requests.labels(path=label, code=metrics.bounded(str(code), metrics.HTTP_CODES)).inc()
    _emit(logging.DEBUG, "http_request", path=label, code=code, client=client)


# ---- several workers (process/supervisor.py) -------------------------------------------------------

def process_gone(pid: int) -> None:
    """A worker (or, before forking, the supervisor itself) no longer holds live gauges."""
    metrics.forget_process(pid)


def supervisor_event(event: str, level: str = "info", **fields: Any) -> None:
    """The supervisor's own lines: workers started, ready, reloading, stopping, died, restarted."""
    if event == "worker_restarted":
        metrics.worker_restarts.inc()
    _emit(logging.ERROR if level == "error" else logging.INFO, event, supervisor=os.getpid(), **fields)


def session_closed(client: str, stage: str, reply: Reply, reason: str, by_limit: bool,
                   queue_id: str | None = None, **fields: Any) -> None:
    """The relay closed a session: a limit, a timeout, shutdown, a refusal that closes. One
    line per such session, with the transaction it cut short (its queue id), if any; the
    limits and timeouts (`by_limit`) also count as refusals (reason `limit`)."""
    if by_limit:
        _refusal_counted(stage, "limit")
    _emit(logging.INFO, "session_closed", queue_id=queue_id, client=client, stage=stage,
          reply=reply.wire, reason=reason, **fields)
