"""Every Prometheus metric frontfilter exports, with its help text and its label value sets.

Names are a contract with `grafana/frontfilter.json` and `deploy/prometheus/` (see DESIGN.md);
`tests/observability/` checks both against a real Prometheus scraping a running relay.
Business code never touches these objects: `observe.py` moves them, `endpoint/httpd.py` serves them.

Cardinality is bounded by construction. A label takes its values from one of three kinds:
- a closed set declared below with `closed(...)` — observe maps anything else to `other`;
- a value set by the administrator's own config or rule files (backend host:port, rule name):
  as many series as configured backends or rules, no more;
- a 3-digit SMTP code (at most a few dozen distinct in practice).
Never an address, a file name, an IP or exception text.

Series whose labels are all closed are created at zero at start-up, so `rate()`, ratios and
alert rules see them before the first event (a counter born at 1 would hide that first event).

To add a metric: define it below, declare its closed label sets with `closed(...)`, add an
event in `observe.py` that moves it, add a `Move` for it in tests/observability/test_observe.py
and list it in tests/observability/coverage.py (a test fails until you do).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram,
                               ProcessCollector, disable_created_metrics, multiprocess)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

# The 0.0.4 text format would carry one `<name>_created` gauge per counter and histogram
# series: twice the series for nothing a dashboard uses. This process only ever exports here.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
# process_start_time_seconds ... (read from /proc on each scrape: microseconds).
ProcessCollector(registry=REGISTRY)
# python_gc_collections_total, python_gc_objects_collected_total{generation}: the cycle
# collector stops the event loop while it runs; a closed session should leave it nothing.
GCCollector(registry=REGISTRY)

# Several workers (server.workers > 1, process/supervisor.py): each writes its values to files in
# $PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker sums them. A gauge says how: the spool
# and backend gauges are the same fact seen by every worker ("max"); a rule or readiness gauge
# is only as good as the worst worker ("min"). process_* are exported for the supervisor and
# every live worker, with a `worker` label ("supervisor", or the worker's slot 0..N-1, which a
# replacement inherits): summed, they are the service's CPU and memory (python_gc_* still
# describe the worker that answered).
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _fixed(pid: int) -> Callable[[], int]:
    """The process id a ProcessCollector reads, bound now (not the loop variable's last value)."""
    return lambda: pid


def worker_slot() -> str | None:
    """This worker's slot ("0" ...), None outside a supervisor. Read when asked: the module is
    imported by the supervisor before it forks, and the slot is set in the child."""
    return os.environ.get("FRONTFILTER_WORKER_SLOT")     # supervisor.WORKER_SLOT_ENV


def forget_process(pid: int) -> None:
    """A worker is gone: its "live" gauges stop counting (its counters stay in the sums)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)


def exposition_registry() -> CollectorRegistry:
    """What /metrics exports: this process's registry, or every worker's values summed."""
    if not MULTIPROCESS:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    merged.register(ProcessTree())
    GCCollector(registry=merged)
    return merged


def announce_worker() -> None:
    """In a worker: say which process fills this slot, for ProcessTree (an atomic rename)."""
    slot = worker_slot()
    if MULTIPROCESS and slot is not None:
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        temp = directory / f".worker-{slot}.{os.getpid()}"
        temp.write_text(str(os.getpid()))
        os.replace(temp, directory / f"worker-{slot}.pid")


class ProcessTree:
    """process_* of the supervisor and of each live worker, labelled `worker`.

    The workers are found by the files `announce_worker` leaves; a file whose process is gone,
    or is no child of our supervisor (a recycled pid), is skipped. Each process is read from
    /proc by prometheus_client's own ProcessCollector."""

    def collect(self) -> Iterator[Metric]:
        supervisor = os.getppid()
        members = [("supervisor", supervisor), *self._workers(supervisor)]
        families: dict[str, Metric] = {}
        for label, pid in members:
            for family in ProcessCollector(pid=_fixed(pid), registry=None).collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": label}, sample.value)
        yield from families.values()

    @staticmethod
    def _workers(supervisor: int) -> list[tuple[str, int]]:
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        found = []
        for path in sorted(directory.glob("worker-*.pid")):
            try:
                pid = int(path.read_text())
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == supervisor:
                found.append((path.name[len("worker-"):-len(".pid")], pid))
        return found


def shared_exposition(generate: Callable[[], bytes], max_age: float) -> bytes:
    """One cached exposition for all workers, made by one worker at a time (flock).

    Each worker caching its own would let successive scrapes, answered by different workers,
    see a counter go back (one cache a second older than the other's). Made in turn, each
    reads every worker's files later than the one before: counters never decrease. Blocking:
    call it from a thread."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    cached = directory / "exposition.cache"
    with open(directory / "exposition.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            age = time.time() - cached.stat().st_mtime
            if 0 <= age < max_age:      # a clock stepped back must not freeze the metrics
                return cached.read_bytes()
        except FileNotFoundError:
            pass
        body = generate()
        temp = directory / f".exposition.{os.getpid()}"
        temp.write_bytes(body)
        os.replace(temp, cached)
        return body

OTHER = "other"

# Family name as PromQL sees it (counters with `_total`) -> label -> the values it may take.
LABEL_VALUES: dict[str, dict[str, frozenset[str]]] = {}

_SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6)
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def closed(metric: MetricWrapperBase, zero: bool = True,
           **labels: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Declare the values each named label of `metric` may take (`other` is always allowed).

    With `zero`, each combination of the listed values is created at zero now (counters and
    gauges; a histogram's buckets would be a dozen series each): every label of the metric must
    then be listed, else prometheus-client refuses the combination at import. A metric with an
    open label (a rule name, a backend) passes `zero=False`. Returns the sets, for
    `observe.bounded()`.
    """
    sets = {name: frozenset(values) | {OTHER} for name, values in labels.items()}
    family = next(iter(metric.describe())).name + ("_total" if isinstance(metric, Counter) else "")
    LABEL_VALUES.setdefault(family, {}).update(sets)
    if zero and not isinstance(metric, Histogram):
        combos: list[dict[str, str]] = [{}]
        for name, values in labels.items():
            combos = [dict(c, **{name: v}) for c in combos for v in values]
        for combo in combos:
            metric.labels(**combo)
    return sets


def bounded(value: str, allowed: frozenset[str]) -> str:
    """`value` if it belongs to the declared set, else `other`."""
    return value if value in allowed else OTHER


# ---- SMTP -------------------------------------------------------------------------------------

connections = Counter(
    "frontfilter_connections", "SMTP connections by how they were admitted or refused.",
    ["result"], registry=REGISTRY)
CONNECTION_RESULTS = closed(connections, result=(
    "accepted",            # greeted with 220
    "refused_rule",        # a connect-stage rule refused the client
    "refused_limit",       # connection limits (total, per IP, rate)
    "refused_not_ready",   # no valid rule set loaded: 421 to everyone
    "refused_shutdown",    # stopping
    "tls_failed",          # TLS handshake failed (implicit TLS or STARTTLS)
    "refused_proxy",       # PROXY listener: not from proxy.networks, or no valid header
))["result"]

SMTP_STAGES = ("connect", "helo", "mail", "rcpt", "data", "starttls", "auth")
smtp_replies = Counter(
    "frontfilter_smtp_replies", "SMTP replies sent, by stage and 3-digit code.",
    ["stage", "code"], registry=REGISTRY)
# The command a reply answers: the stages, and QUIT (221). NOOP, VRFY, HELP, unknown commands and
# bare newlines count as `other`; RSET as `mail` (it ends or replaces a transaction).
REPLY_STAGES = closed(smtp_replies, zero=False, stage=(*SMTP_STAGES, "quit"))["stage"]   # code: any 3-digit SMTP code

refusals = Counter(
    "frontfilter_refusals",
    "Commands refused before end of DATA (and sessions closed by a limit), by stage and why: "
    "what the reply code alone does not say.",
    ["stage", "reason"], registry=REGISTRY)
REFUSAL_REASONS = closed(refusals, zero=False, stage=(*SMTP_STAGES, "quit"), reason=(
    "relay_denied",        # a recipient outside relay.domains from a client that may not relay
    "sender_binding",      # domain-bound relaying: a sender our rules do not let this client use
    "address",             # a malformed or unacceptable sender or recipient address
    "size",                # a declared SIZE over max_message_size
    "recipient_limit",     # past max_recipients
    "spool",               # the spool is full or failing
    "rule",                # a rule refused (its name is on the log line)
    "check_failed",        # a reputation check could not be completed
    "unknown_recipient",   # the backend refused the recipient (live, or recipient verification)
    "backend",             # the backend could not be asked
    "tls_required",        # the listener wants STARTTLS first
    "auth_required",       # the listener wants AUTH first
    "protocol",            # syntax, sequence, bare CR/LF (smuggling), NUL, line length
    "limit",               # a session limit or timeout closed the session
    "internal",            # our own failure (an internal_error line has the detail)
))["reason"]

processing_seconds = Histogram(
    "frontfilter_processing_seconds",
    "Time spent deciding, by stage (rules at each stage; inspection + rules + rewrite at data).",
    ["stage"], buckets=_TIME_BUCKETS, registry=REGISTRY)
PROCESSING_STAGES = closed(processing_seconds, stage=SMTP_STAGES)["stage"]

tls_sessions = Counter(
    "frontfilter_tls_sessions", "TLS sessions established, by direction and protocol version.",
    ["direction", "version"], registry=REGISTRY)
_tls = closed(tls_sessions, direction=("inbound", "outbound"),
              version=("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"))
TLS_DIRECTIONS, TLS_VERSIONS = _tls["direction"], _tls["version"]

auth_attempts = Counter(
    "frontfilter_auth_attempts", "SMTP AUTH attempts by result.",
    ["result"], registry=REGISTRY)
AUTH_RESULTS = closed(auth_attempts, result=(   # smtp.auth.Result, checked by a test
    "success",             # credentials accepted
    "failure",             # wrong user or password (535)
    "locked_out",          # refused without a check: too many failures from that address
    "malformed",           # bad base64, wrong PLAIN layout, aborted with "*"
))["result"]

# ---- messages ---------------------------------------------------------------------------------

messages = Counter(
    "frontfilter_messages", "Messages decided at end of DATA, by verdict.",
    ["verdict"], registry=REGISTRY)
VERDICTS = closed(messages, verdict=(
    "accepted", "rejected", "tempfailed", "discarded", "quarantined"))["verdict"]

rule_matches = Counter(
    "frontfilter_rule_matches", "Rule matches, by rule, action and mode (enforce, monitor).",
    ["rule", "action", "mode"], registry=REGISTRY)
_rules = closed(rule_matches, zero=False,
                action=("accept", "reject", "tempfail", "discard", "quarantine", "strip",
                        "add_header", "tag"),
                mode=("enforce", "monitor"))      # rule: the names in the administrator's rules
RULE_ACTIONS, RULE_MODES = _rules["action"], _rules["mode"]

attachments_stripped = Counter(
    "frontfilter_attachments_stripped",
    "Parts removed by strip rules, by detected type (the configured metrics.type_labels, else other).",
    ["type"], registry=REGISTRY)     # the set is configurable: observe.set_type_labels()

inspection_limits = Counter(
    "frontfilter_inspection_limits", "Messages that crossed an inspection bound, by bound.",
    ["limit"], registry=REGISTRY)
INSPECTION_LIMITS = closed(inspection_limits, limit=(   # content.view.Limit, checked by a test
    "depth", "parts", "header_bytes", "decoded_bytes", "archive_depth", "archive_members",
    "expanded_size", "compression_ratio", "time"))["limit"]
type_cache_lookups = Counter(
    "frontfilter_type_cache_lookups",
    "Parts whose content type was looked up among the types libmagic gave for the same bytes "
    "before (hit) or asked of libmagic (miss).",
    ["result"], registry=REGISTRY)
closed(type_cache_lookups, result=("hit", "miss"))     # observe names the two: nothing to bound

message_size = Histogram(
    "frontfilter_message_size_bytes", "Size of messages received, in bytes.",
    buckets=_SIZE_BUCKETS, registry=REGISTRY)

arc_seals = Counter(
    "frontfilter_arc_seals",
    "Forwarded messages [arc] was to seal (RFC 8617), by outcome (failed: forwarded unsealed; "
    "the message's log line says why in arc_seal).",
    ["outcome"], registry=REGISTRY)
ARC_SEAL_OUTCOMES = closed(arc_seals, outcome=("sealed", "failed"))["outcome"]

# ---- antivirus --------------------------------------------------------------------------------

antivirus_scans = Counter(
    "frontfilter_antivirus_scans",
    "Messages scanned by clamd, by result; error, timeout and too_big were not scanned "
    "([antivirus] on_error decided what became of them).",
    ["result"], registry=REGISTRY)
SCAN_RESULTS = closed(antivirus_scans, result=(   # antivirus.result.ScanStatus, checked by a test
    "clean", "infected", "error", "timeout", "too_big"))["result"]

antivirus_scan_seconds = Histogram(
    "frontfilter_antivirus_scan_seconds",
    "Time to scan one message with clamd: waiting for a free slot, connecting, sending, the answer.",
    buckets=_TIME_BUCKETS, registry=REGISTRY)

# ---- reputation: DNS lists, SPF, greylisting, sender binding (frontfilter/reputation/) -------

dns_queries = Counter(
    "frontfilter_dns_queries",
    "DNS lookups of the reputation checks, by outcome (cached: answered from the cache).",
    ["result"], registry=REGISTRY)
DNS_RESULTS = closed(dns_queries, result=(   # reputation.resolver.Outcome, + cached
    "answer", "nxdomain", "nodata", "timeout", "error", "cached"))["result"]

dnsbl_lookups = Counter(
    "frontfilter_dnsbl_lookups",
    "Client lookups on each DNS block/allow list, by result (refused: the list answered with an "
    "error code such as 127.255.255.254, or outside its codes; error: no answer in time).",
    ["list", "result"], registry=REGISTRY)     # list: the names in [dnsbl] lists
DNSBL_RESULTS = closed(dnsbl_lookups, zero=False, result=("listed", "not_listed", "refused", "error"))["result"]

spf_results = Counter(
    "frontfilter_spf_results", "SPF evaluations of the envelope sender, by result (RFC 7208 §2.6).",
    ["result"], registry=REGISTRY)
SPF_RESULTS = closed(spf_results, result=(   # reputation.facts.SpfResult, checked by a test
    "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"))["result"]

dkim_results = Counter(
    "frontfilter_dkim_results",
    "DKIM verifications of received messages, by the message's result (RFC 8601: pass when a "
    "signature verified; none: not signed).",
    ["result"], registry=REGISTRY)
DKIM_RESULTS = closed(dkim_results, result=(   # reputation.facts.DkimResult, checked by a test
    "pass", "fail", "none", "temperror", "permerror"))["result"]

arc_results = Counter(
    "frontfilter_arc_results",
    "ARC chains of received messages, by chain validation status (RFC 8617; none: no chain).",
    ["result"], registry=REGISTRY)
ARC_RESULTS = closed(arc_results, result=("pass", "fail", "none"))["result"]   # reputation.facts.ArcResult

dmarc_results = Counter(
    "frontfilter_dmarc_results",
    "DMARC evaluations of the From: domain, by result and by the policy the domain publishes "
    "(none: no record).",
    ["result", "policy"], registry=REGISTRY)
_DMARC_CLOSED = closed(dmarc_results,    # reputation.facts.DmarcResult and DmarcPolicy, checked by a test
                       result=("pass", "fail", "none", "temperror", "permerror"),
                       policy=("none", "quarantine", "reject"))
DMARC_RESULTS, DMARC_POLICIES = _DMARC_CLOSED["result"], _DMARC_CLOSED["policy"]

dns_check_seconds = Histogram(
    "frontfilter_dns_check_seconds",
    "Time for one reputation check: all DNS lists of a client, one SPF evaluation, the "
    "lookup of a sender's domain, the DKIM and ARC verification of a message (its key lookups "
    "included), one DMARC evaluation.",
    ["check"], buckets=_TIME_BUCKETS, registry=REGISTRY)
DNS_CHECKS = closed(dns_check_seconds, check=("dnsbl", "spf", "sender_domain", "dkim", "dmarc"))["check"]

greylist_checks = Counter(
    "frontfilter_greylist_checks",
    "Greylisting decisions at RCPT, by result (new and early are greylisted).",
    ["result"], registry=REGISTRY)
GREYLIST_RESULTS = closed(greylist_checks, result=(   # reputation.greylist.Verdict
    "new", "early", "passed", "known", "whitelisted"))["result"]

sender_refusals = Counter(
    "frontfilter_sender_refusals",
    "Envelope senders refused by domain-bound relaying, by reason.",
    ["reason"], registry=REGISTRY)
SENDER_REFUSAL_REASONS = closed(sender_refusals, reason=(
    "login_mismatch",      # an authenticated user sending as an address it does not own
    "not_own_domain",      # relaying out with a sender outside relay.sender_domains
))["reason"]

# ---- delivery ---------------------------------------------------------------------------------

forward_attempts = Counter(
    "frontfilter_forward_attempts", "Hand-overs to a backend, by backend (host:port) and result.",
    ["backend", "result"], registry=REGISTRY)
FORWARD_RESULTS = closed(forward_attempts, zero=False, result=("ok", "transient", "permanent"))["result"]

forward_seconds = Histogram(
    "frontfilter_forward_seconds", "Time to hand a message to a backend.",
    ["backend"], buckets=_TIME_BUCKETS, registry=REGISTRY)

backend_up = Gauge(
    "frontfilter_backend_up",
    "1 when the backend last answered (a delivery, or an idle-time SMTP greeting probe), else 0.",
    ["backend"], registry=REGISTRY, multiprocess_mode="livemax")

spool_messages = Gauge(
    "frontfilter_spool_messages", "Messages in the spool waiting for delivery.",
    registry=REGISTRY, multiprocess_mode="livemax")
spool_oldest_age = Gauge(
    "frontfilter_spool_oldest_age_seconds", "Age of the oldest message in the spool.",
    registry=REGISTRY, multiprocess_mode="livemax")
dead_letters = Counter(
    "frontfilter_dead_letters", "Messages given up on and moved to the dead-letter directory.",
    registry=REGISTRY)
in_flow_waits = Counter(
    "frontfilter_in_flow_waits",
    "Clients held at MAIL (backend.in_flow_delay) while too many messages waited for their first "
    "delivery attempt, by how the wait ended (moved: the line shortened; delay: "
    "backend.in_flow_delay ran out, the client went on).",
    ["ended"], registry=REGISTRY)
IN_FLOW_ENDINGS = closed(in_flow_waits, ended=("moved", "delay"))["ended"]
in_flow_wait_seconds = Counter(
    "frontfilter_in_flow_wait_seconds", "Time clients were held at MAIL by backend.in_flow_delay.",
    registry=REGISTRY)
spool_commit_process_lost = Counter(
    "frontfilter_spool_commit_process_lost",
    "Times a worker's spool commit process ended or failed; the messages it had not confirmed "
    "were refused with a 4xx (log: spool_commit_process_lost).",
    registry=REGISTRY)
recipient_verifications = Counter(
    "frontfilter_recipient_verifications",
    "Recipients checked against the backend at RCPT (queue mode), by result and by whether "
    "the cache or a probe answered.",
    ["result", "source"], registry=REGISTRY)
VERIFY_RESULTS = closed(recipient_verifications, result=("valid", "invalid", "unavailable"),
                        source=("cache", "probe"))["result"]

# ---- quarantine (frontfilter/delivery/quarantine/) -----------------------------------------------------

# The gauges are set by the one worker that runs the retention (delivery/quarantine/expiry.py: slot 0, or
# the only process); every other worker holds 0, so "livemax" reads that worker's value.
quarantine_messages = Gauge(
    "frontfilter_quarantine_messages", "Messages held in the quarantine (as of the last retention pass).",
    registry=REGISTRY, multiprocess_mode="livemax")
quarantine_bytes = Gauge(
    "frontfilter_quarantine_bytes", "Bytes the quarantine's files take (quarantine.max_size bounds it).",
    registry=REGISTRY, multiprocess_mode="livemax")
quarantine_oldest = Gauge(
    "frontfilter_quarantine_oldest_seconds",
    "Age of the oldest held message, 0 when none (quarantine.max_age bounds it).",
    registry=REGISTRY, multiprocess_mode="livemax")
quarantine_released = Counter(
    "frontfilter_quarantine_released",
    "Held messages released by an administrator (frontfilter quarantine release), by the rule "
    "that had held them.",
    ["rule"], registry=REGISTRY)     # rule: a name of the loaded rule set, else other
quarantine_expired = Counter(
    "frontfilter_quarantine_expired",
    "Held messages removed by the retention, by reason (age: quarantine.max_age; size: "
    "quarantine.max_size).",
    ["reason"], registry=REGISTRY)
EXPIRY_REASONS = closed(quarantine_expired, reason=("age", "size"))["reason"]

# ---- rules ------------------------------------------------------------------------------------

rules_loaded = Gauge(
    "frontfilter_rules_loaded", "Rules in the active rule set.", registry=REGISTRY, multiprocess_mode="livemin")
rules_reloads = Counter(
    "frontfilter_rules_reloads", "Rule set loads, by result (ok, invalid).",
    ["result"], registry=REGISTRY)
RELOAD_RESULTS = closed(rules_reloads, result=("ok", "invalid"))["result"]
rules_last_reload_successful = Gauge(
    "frontfilter_rules_last_reload_successful",
    "1 when the last rule load succeeded, 0 when it was refused.", registry=REGISTRY, multiprocess_mode="livemin")
rules_last_reload_success_timestamp = Gauge(
    "frontfilter_rules_last_reload_success_timestamp_seconds",
    "Unix time of the last rule load that succeeded.", registry=REGISTRY, multiprocess_mode="livemin")

# ---- process and health -----------------------------------------------------------------------

worker_restarts = Counter(
    "frontfilter_worker_restarts",
    "Workers the supervisor replaced after they died (server.workers > 1).", registry=REGISTRY)

tls_certificate_expiry = Gauge(
    "frontfilter_tls_certificate_expiry_timestamp_seconds",
    "Unix time at which the inbound TLS certificate a listener serves expires.",
    ["listener"], registry=REGISTRY, multiprocess_mode="livemin")

build_info = Gauge(
    "frontfilter_build_info", "Always 1; the version is in the label.",
    ["version"], registry=REGISTRY, multiprocess_mode="livemax")

ready = Gauge(
    "frontfilter_ready",
    "1 when the readiness check passes (as /readyz reports it), by check.",
    ["check"], registry=REGISTRY, multiprocess_mode="livemin")
# Not created at zero: a check exists only where it decides readiness (backend in sync mode,
# antivirus where a clamd failure refuses mail), and a series stuck at 0 would fire
# FrontfilterNotReady for a check this relay does not make.
READY_CHECKS = closed(ready, zero=False, check=(
    "rules",       # a valid rule set is loaded
    "spool",       # a file can be written and fsynced in the spool, with room for a message
    "backend",     # sync mode: a backend answered recently
    "antivirus",   # [antivirus] that refuses on error: clamd answered a PING recently
    "accepting",   # not shutting down
))["check"]

event_loop_lag = Histogram(
    "frontfilter_event_loop_lag_seconds",
    "How late the event loop ran a timer: time when no SMTP session could be served.",
    buckets=_LAG_BUCKETS, registry=REGISTRY)

http_requests = Counter(
    "frontfilter_http_requests", "Requests to the metrics and health endpoint, by path and status.",
    ["path", "code"], registry=REGISTRY)
_http = closed(http_requests, zero=False, path=("/metrics", "/healthz", "/readyz", "/"),
               code=("200", "400", "404", "405", "408", "431", "503"))
HTTP_PATHS, HTTP_CODES = _http["path"], _http["code"]
