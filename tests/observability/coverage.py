"""Every metric family metrics.py defines, and where a test moves it.

`E2E`: moved by a real relay handling real mail in `test_prometheus.py` (and checked there,
by scraping, to have a non-zero sample after the flow).
`UNIT`: moved only through its observe event in `test_observe.py` until the code that emits it
is exercised end to end; each says what would make it E2E.

`test_observe.test_coverage_lists_every_metric` fails when a metric is added to metrics.py but
not here, so a new metric cannot go unmoved.
"""

from __future__ import annotations

E2E = "e2e: tests/observability/test_prometheus.py"
UNIT = "unit: tests/observability/test_observe.py::test_every_metric_moves_through_observe"

COVERAGE: dict[str, str] = {
    "frontfilter_connections_total": E2E,
    "frontfilter_smtp_replies_total": E2E,
    "frontfilter_refusals_total": E2E,
    "frontfilter_processing_seconds": E2E,
    "frontfilter_messages_total": E2E,
    "frontfilter_rule_matches_total": E2E,
    "frontfilter_attachments_stripped_total": E2E,
    "frontfilter_inspection_limits_total": E2E,
    "frontfilter_type_cache_lookups_total": E2E,
    "frontfilter_message_size_bytes": E2E,
    "frontfilter_arc_seals_total": "e2e: tests/test_arc_sealing.py",     # a relay with [arc], scraped
    "frontfilter_forward_attempts_total": E2E,
    "frontfilter_forward_seconds": E2E,
    "frontfilter_backend_up": E2E,
    "frontfilter_rules_loaded": E2E,
    "frontfilter_rules_reloads_total": E2E,
    "frontfilter_rules_last_reload_successful": E2E,
    "frontfilter_rules_last_reload_success_timestamp_seconds": E2E,
    "frontfilter_build_info": E2E,
    "frontfilter_ready": E2E,
    # Supervisor (workers > 1): E2E in tests/test_workers.py (a killed worker is replaced).
    "frontfilter_worker_restarts_total": UNIT,
    # E2E in tests/frontdoor/test_frontdoor.py (the door's relay serves a certificate).
    "frontfilter_tls_certificate_expiry_timestamp_seconds": UNIT,
    "frontfilter_event_loop_lag_seconds": E2E,
    "frontfilter_http_requests_total": E2E,
    # Queue mode (delivery/spool.py) sets these on each spool scan; E2E once the e2e relay runs
    # in queue mode with a backend that defers.
    "frontfilter_spool_messages": UNIT,
    "frontfilter_spool_oldest_age_seconds": UNIT,
    "frontfilter_dead_letters_total": UNIT,
    "frontfilter_in_flow_waits_total": "e2e: tests/delivery/test_in_flow.py",      # a relay held, scraped
    "frontfilter_in_flow_wait_seconds_total": "e2e: tests/delivery/test_in_flow.py",
    "frontfilter_spool_commit_process_lost_total": UNIT,    # E2E would need the process killed mid-group
    "frontfilter_tls_sessions_total": E2E,          # the e2e relay offers STARTTLS and AUTH
    "frontfilter_auth_attempts_total": E2E,
    # Antivirus (clamd), reputation (DNS lists, SPF, greylisting, sender binding) and recipient
    # verification: each needs its service (clamd, a DNS server) or queue mode in the e2e relay.
    # ... except the antivirus pair: a real relay with a real clamd moves and scrapes them.
    "frontfilter_antivirus_scans_total": "e2e: tests/antivirus/test_antivirus_relay.py",
    "frontfilter_antivirus_scan_seconds": "e2e: tests/antivirus/test_antivirus_relay.py",
    "frontfilter_dns_queries_total": UNIT,
    "frontfilter_dnsbl_lookups_total": UNIT,
    "frontfilter_spf_results_total": UNIT,
    "frontfilter_dkim_results_total": "e2e: tests/reputation/test_dkim_dmarc.py",   # scraped from a relay
    "frontfilter_arc_results_total": "e2e: tests/reputation/test_dkim_dmarc.py",
    "frontfilter_dmarc_results_total": "e2e: tests/reputation/test_dkim_dmarc.py",
    "frontfilter_dns_check_seconds": UNIT,
    "frontfilter_greylist_checks_total": UNIT,
    "frontfilter_sender_refusals_total": UNIT,
    "frontfilter_recipient_verifications_total": UNIT,
    # Quarantine: held, released and expired mail, scraped from a real relay (two workers for
    # the release and the relay's own expiry); the e2e relay here holds nothing (its gauges at 0).
    "frontfilter_quarantine_messages": "e2e: tests/test_quarantine_tool.py",
    "frontfilter_quarantine_bytes": "e2e: tests/test_quarantine_tool.py",
    "frontfilter_quarantine_oldest_seconds": "e2e: tests/test_quarantine_tool.py",
    "frontfilter_quarantine_released_total": "e2e: tests/test_quarantine_tool.py",
    "frontfilter_quarantine_expired_total": "e2e: tests/test_quarantine_tool.py",
}
