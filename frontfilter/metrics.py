"""Every Prometheus metric frontfilter exports, and the HTTP server for /metrics and health.

Names are a contract with `grafana/frontfilter.json` and `deploy/prometheus/` (see DESIGN.md).
Label values come from small fixed sets: never an address, a file name, an IP or exception text.
Business code never touches these objects: `observe.py` moves them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6)
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

connections = Counter(
    "frontfilter_connections", "SMTP connections by how they were admitted or refused.",
    ["result"], registry=REGISTRY)
smtp_replies = Counter(
    "frontfilter_smtp_replies", "SMTP replies sent, by stage and 3-digit code.",
    ["stage", "code"], registry=REGISTRY)
messages = Counter(
    "frontfilter_messages", "Messages decided at end of DATA, by verdict.",
    ["verdict"], registry=REGISTRY)
rule_matches = Counter(
    "frontfilter_rule_matches", "Rule matches, by rule, action and mode (enforce, monitor).",
    ["rule", "action", "mode"], registry=REGISTRY)
attachments_stripped = Counter(
    "frontfilter_attachments_stripped", "Parts removed by strip rules, by detected type.",
    ["type"], registry=REGISTRY)
inspection_limits = Counter(
    "frontfilter_inspection_limits", "Messages that crossed an inspection bound, by bound.",
    ["limit"], registry=REGISTRY)
message_size = Histogram(
    "frontfilter_message_size_bytes", "Size of messages received, in bytes.",
    buckets=_SIZE_BUCKETS, registry=REGISTRY)
processing_seconds = Histogram(
    "frontfilter_processing_seconds", "Time spent deciding, by stage.",
    ["stage"], buckets=_TIME_BUCKETS, registry=REGISTRY)
forward_attempts = Counter(
    "frontfilter_forward_attempts", "Hand-overs to a backend, by backend and result.",
    ["backend", "result"], registry=REGISTRY)
forward_seconds = Histogram(
    "frontfilter_forward_seconds", "Time to hand a message to a backend.",
    ["backend"], buckets=_TIME_BUCKETS, registry=REGISTRY)
spool_messages = Gauge(
    "frontfilter_spool_messages", "Messages in the spool waiting for delivery.",
    registry=REGISTRY)
spool_oldest_age = Gauge(
    "frontfilter_spool_oldest_age_seconds", "Age of the oldest message in the spool.",
    registry=REGISTRY)
dead_letters = Counter(
    "frontfilter_dead_letters", "Messages given up on and moved to the dead-letter directory.",
    registry=REGISTRY)
tls_sessions = Counter(
    "frontfilter_tls_sessions", "TLS sessions established, by direction and protocol version.",
    ["direction", "version"], registry=REGISTRY)
auth_attempts = Counter(
    "frontfilter_auth_attempts", "SMTP AUTH attempts by result.",
    ["result"], registry=REGISTRY)
rules_loaded = Gauge(
    "frontfilter_rules_loaded", "Rules in the active rule set.", registry=REGISTRY)
rules_reloads = Counter(
    "frontfilter_rules_reloads", "Rule set loads, by result (ok, invalid).",
    ["result"], registry=REGISTRY)
rules_last_reload_successful = Gauge(
    "frontfilter_rules_last_reload_successful",
    "1 when the last rule load succeeded, 0 when it was refused.", registry=REGISTRY)
build_info = Gauge(
    "frontfilter_build_info", "Always 1; the version is in the label.",
    ["version"], registry=REGISTRY)
