"""observe.py and metrics.py: every metric moves through its event, labels stay bounded, the
start-up configuration is masked, and the closed label sets agree with the enums they mirror."""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from frontfilter import metrics, observe
from frontfilter.reply import Reply
from frontfilter.config import ConfigError, HostPort, build_config
from frontfilter.content.facts import Limit
from frontfilter.rules.model import Action, Mode
from tests.observability.coverage import COVERAGE

REPO = Path(__file__).resolve().parents[2]
BACKEND = "192.0.2.25:25"


def value(sample: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(sample, labels) or 0.0


def frontfilter_families() -> set[str]:
    """Family names as PromQL sees them (counters with _total)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("frontfilter_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


@dataclass
class Move:
    family: str
    event: Callable[[], None]
    sample: str                         # the sample that must move
    labels: dict[str, str] = field(default_factory=dict)
    expect: float | None = None         # a gauge's value after the event; None: +1 (counter, histogram count)


MOVES = [
    Move("frontfilter_build_info", lambda: observe.started("9.9-test", ["127.0.0.1:25"], {}),
         "frontfilter_build_info", {"version": "9.9-test"}, 1),
    Move("frontfilter_rules_reloads_total", lambda: observe.rules_refused(["bad"], reload=True),
         "frontfilter_rules_reloads_total", {"result": "invalid"}),
    Move("frontfilter_rules_last_reload_successful", lambda: observe.rules_refused(["bad"], reload=True),
         "frontfilter_rules_last_reload_successful", {}, 0),
    Move("frontfilter_rules_loaded", lambda: observe.rules_loaded(7, "fp", ["a.toml"], reload=True),
         "frontfilter_rules_loaded", {}, 7),
    Move("frontfilter_rules_last_reload_success_timestamp_seconds",
         lambda: observe.rules_loaded(7, "fp", ["a.toml"], reload=True),
         "frontfilter_rules_last_reload_success_timestamp_seconds", {}, None),
    Move("frontfilter_connections_total", lambda: observe.connection("accepted"),
         "frontfilter_connections_total", {"result": "accepted"}),
    Move("frontfilter_refusals_total",
         lambda: observe.command_refused("192.0.2.1:1", "rcpt", Reply(554, "5.7.1", "no"), "relay denied for x",
                                         "relay_denied"),
         "frontfilter_refusals_total", {"stage": "rcpt", "reason": "relay_denied"}),
    Move("frontfilter_smtp_replies_total", lambda: observe.reply_sent("rcpt", "550"),
         "frontfilter_smtp_replies_total", {"stage": "rcpt", "code": "550"}),
    Move("frontfilter_processing_seconds", lambda: observe.stage_decided("mail", 0.002),
         "frontfilter_processing_seconds_count", {"stage": "mail"}),
    Move("frontfilter_tls_sessions_total", lambda: observe.tls_session("inbound", "TLSv1.3"),
         "frontfilter_tls_sessions_total", {"direction": "inbound", "version": "TLSv1.3"}),
    Move("frontfilter_auth_attempts_total", lambda: observe.auth_attempt("failure", "192.0.2.1", "PLAIN"),
         "frontfilter_auth_attempts_total", {"result": "failure"}),
    Move("frontfilter_rule_matches_total", lambda: observe.rule_matched("executables", "reject", "monitor"),
         "frontfilter_rule_matches_total", {"rule": "executables", "action": "reject", "mode": "monitor"}),
    Move("frontfilter_inspection_limits_total", lambda: observe.inspection_limit("archive_members"),
         "frontfilter_inspection_limits_total", {"limit": "archive_members"}),
    Move("frontfilter_type_cache_lookups_total", lambda: observe.type_cache_lookups(hits=2, misses=0),
         "frontfilter_type_cache_lookups_total", {"result": "hit"}),
    Move("frontfilter_attachments_stripped_total", lambda: observe.attachment_stripped("application/zip"),
         "frontfilter_attachments_stripped_total", {"type": "application/zip"}),
    Move("frontfilter_messages_total",
         lambda: observe.message_decided(queue_id="Q1", verdict="quarantined", size=2048),
         "frontfilter_messages_total", {"verdict": "quarantined"}),
    Move("frontfilter_message_size_bytes",
         lambda: observe.message_decided(queue_id="Q2", verdict="accepted", size=2048),
         "frontfilter_message_size_bytes_count", {}),
    Move("frontfilter_arc_seals_total", lambda: observe.arc_sealed(False),
         "frontfilter_arc_seals_total", {"outcome": "failed"}),
    Move("frontfilter_forward_attempts_total", lambda: observe.forward_attempt(BACKEND, "transient", 0.3),
         "frontfilter_forward_attempts_total", {"backend": BACKEND, "result": "transient"}),
    Move("frontfilter_forward_seconds", lambda: observe.forward_attempt(BACKEND, "ok", 0.05),
         "frontfilter_forward_seconds_count", {"backend": BACKEND}),
    Move("frontfilter_backend_up", lambda: observe.backend_probed("192.0.2.26:25", False),
         "frontfilter_backend_up", {"backend": "192.0.2.26:25"}, 0),
    Move("frontfilter_spool_messages", lambda: observe.spool_state(17, 93.5),
         "frontfilter_spool_messages", {}, 17),
    Move("frontfilter_spool_oldest_age_seconds", lambda: observe.spool_state(17, 93.5),
         "frontfilter_spool_oldest_age_seconds", {}, 93.5),
    Move("frontfilter_dead_letters_total", lambda: observe.dead_letter("Q3", "expired", attempts=12),
         "frontfilter_dead_letters_total", {}),
    Move("frontfilter_in_flow_waits_total", lambda: observe.in_flow_waited(0.3, "moved"),
         "frontfilter_in_flow_waits_total", {"ended": "moved"}),
    Move("frontfilter_in_flow_wait_seconds_total", lambda: observe.in_flow_waited(0.3, "delay"),
         "frontfilter_in_flow_wait_seconds_total", {}),       # +0.3 s (the line above moved it too)
    Move("frontfilter_spool_commit_process_lost_total",
         lambda: observe.spool_commit_process_lost("the spool's commit process ended", 3, 1),
         "frontfilter_spool_commit_process_lost_total", {}),
    Move("frontfilter_ready", lambda: observe.ready_check("backend", False),
         "frontfilter_ready", {"check": "backend"}, 0),
    Move("frontfilter_worker_restarts_total", lambda: observe.supervisor_event("worker_restarted", workers=[1, 2]),
         "frontfilter_worker_restarts_total", {}),
    Move("frontfilter_tls_certificate_expiry_timestamp_seconds",
         lambda: observe.tls_certificate_expires(["submission"], 1900000000.0),
         "frontfilter_tls_certificate_expiry_timestamp_seconds", {"listener": "submission"}, 1900000000.0),
    Move("frontfilter_event_loop_lag_seconds", lambda: observe.loop_lag(0.004),
         "frontfilter_event_loop_lag_seconds_count", {}),
    Move("frontfilter_http_requests_total", lambda: observe.http_request("/readyz", 503),
         "frontfilter_http_requests_total", {"path": "/readyz", "code": "503"}),
    # antivirus (frontfilter/antivirus/)
    Move("frontfilter_antivirus_scans_total", lambda: observe.antivirus_scanned("timeout", 5.0, "Q4", "slow"),
         "frontfilter_antivirus_scans_total", {"result": "timeout"}),
    Move("frontfilter_antivirus_scan_seconds", lambda: observe.antivirus_scanned("clean", 0.02),
         "frontfilter_antivirus_scan_seconds_count", {}),
    # reputation (frontfilter/reputation/)
    Move("frontfilter_dns_queries_total", lambda: observe.dns_query("nxdomain"),
         "frontfilter_dns_queries_total", {"result": "nxdomain"}),
    Move("frontfilter_dnsbl_lookups_total", lambda: observe.dnsbl_lookup("zen", "listed"),
         "frontfilter_dnsbl_lookups_total", {"list": "zen", "result": "listed"}),
    Move("frontfilter_spf_results_total", lambda: observe.spf_checked("softfail", 0.03),
         "frontfilter_spf_results_total", {"result": "softfail"}),
    Move("frontfilter_dns_check_seconds", lambda: observe.spf_checked("pass", 0.03),
         "frontfilter_dns_check_seconds_count", {"check": "spf"}),
    Move("frontfilter_dkim_results_total",
         lambda: observe.dkim_verified("Q8", "fail", (), ["a.example/s: fail body hash mismatch"], "none", "", 0.01),
         "frontfilter_dkim_results_total", {"result": "fail"}),
    Move("frontfilter_arc_results_total", lambda: observe.not_signed("none"),
         "frontfilter_arc_results_total", {"result": "none"}),
    Move("frontfilter_dmarc_results_total", lambda: observe.dmarc_evaluated("fail", "reject", 0.01),
         "frontfilter_dmarc_results_total", {"result": "fail", "policy": "reject"}),
    Move("frontfilter_greylist_checks_total", lambda: observe.greylist_checked("new"),
         "frontfilter_greylist_checks_total", {"result": "new"}),
    Move("frontfilter_sender_refusals_total", lambda: observe.sender_refused("not_own_domain"),
         "frontfilter_sender_refusals_total", {"reason": "not_own_domain"}),
    Move("frontfilter_recipient_verifications_total", lambda: observe.recipient_verified("invalid", cached=True),
         "frontfilter_recipient_verifications_total", {"result": "invalid", "source": "cache"}),
    # quarantine (frontfilter/delivery/quarantine/)
    Move("frontfilter_quarantine_messages", lambda: observe.quarantine_state(3, 4096, 61.5),
         "frontfilter_quarantine_messages", {}, 3),
    Move("frontfilter_quarantine_bytes", lambda: observe.quarantine_state(3, 4096, 61.5),
         "frontfilter_quarantine_bytes", {}, 4096),
    Move("frontfilter_quarantine_oldest_seconds", lambda: observe.quarantine_state(3, 4096, 61.5),
         "frontfilter_quarantine_oldest_seconds", {}, 61.5),
    Move("frontfilter_quarantine_released_total",
         lambda: observe.quarantine_released(queue_id="Q5", rule="hold", known_rules={"hold"}),
         "frontfilter_quarantine_released_total", {"rule": "hold"}),
    Move("frontfilter_quarantine_expired_total", lambda: observe.quarantine_expired(queue_id="Q6", reason="size"),
         "frontfilter_quarantine_expired_total", {"reason": "size"}),
]


def test_every_metric_moves_through_observe() -> None:
    for move in MOVES:
        before = value(move.sample, **move.labels)
        move.event()
        after = value(move.sample, **move.labels)
        if move.expect is None:
            assert after > before, f"{move.family}: {move.sample}{move.labels} did not move"
        else:
            assert after == move.expect, f"{move.family}: {move.sample}{move.labels} = {after}"
    assert value("frontfilter_rules_last_reload_success_timestamp_seconds") > time.time() - 60
    missing = frontfilter_families() - {m.family for m in MOVES}
    assert not missing, f"metrics no test moves: {sorted(missing)}"


def test_coverage_lists_every_metric() -> None:
    """tests/observability/coverage.py names each metric of metrics.py, and nothing else."""
    assert set(COVERAGE) == frontfilter_families()


# ---- bounded labels -------------------------------------------------------------------------

def test_a_released_message_counts_under_its_rule_only_while_the_rule_set_has_it() -> None:
    """The rule comes from a file: a name the loaded rules do not have is counted as other."""
    before = value("frontfilter_quarantine_released_total", rule="other")
    observe.quarantine_released(queue_id="Q7", rule="203.0.113.9", known_rules={"hold"})
    assert value("frontfilter_quarantine_released_total", rule="other") == before + 1
    assert value("frontfilter_quarantine_released_total", rule="203.0.113.9") == 0


def test_label_values_outside_their_set_are_counted_as_other() -> None:
    before = value("frontfilter_connections_total", result="other")
    observe.connection("refused_by_a_typo")
    assert value("frontfilter_connections_total", result="other") == before + 1
    observe.reply_sent("data", "25O")
    assert value("frontfilter_smtp_replies_total", stage="data", code="other") >= 1
    observe.reply_sent("quantum", "250")
    assert value("frontfilter_smtp_replies_total", stage="other", code="250") >= 1
    observe.tls_session("inbound", "SSLv3")
    assert value("frontfilter_tls_sessions_total", direction="inbound", version="other") >= 1
    observe.http_request("/../../etc/passwd", 404)
    assert value("frontfilter_http_requests_total", path="other", code="404") >= 1


def test_no_label_value_comes_from_the_client() -> None:
    """Client-controlled text never becomes a label: only declared values, rule and backend names."""
    observe.connection("203.0.113.9")
    observe.attachment_stripped("application/x-evil; name=../../x")
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            for label, text in sample.labels.items():
                assert "203.0.113.9" not in text and "evil" not in text, (sample.name, label, text)


def test_stripped_type_labels_follow_the_config() -> None:
    try:
        observe.set_type_labels(["application/pdf"])
        before = value("frontfilter_attachments_stripped_total", type="other")
        observe.attachment_stripped("application/zip")        # in the default set, not in this one
        assert value("frontfilter_attachments_stripped_total", type="other") == before + 1
        observe.attachment_stripped("application/pdf")
        assert value("frontfilter_attachments_stripped_total", type="application/pdf") >= 1
    finally:
        observe.set_type_labels(None)
    assert "application/zip" in observe._type_labels


def test_type_labels_config_key_is_checked(tmp_path: Path) -> None:
    base = {"backend": {"servers": ["127.0.0.1:2526"]}}
    config = build_config({**base, "metrics": {"type_labels": ["Application/PDF", "image/png"]}},
                          tmp_path / "f.toml")
    assert config.metrics.type_labels == ("application/pdf", "image/png")
    assert build_config(base, tmp_path / "f.toml").metrics.type_labels is None
    with pytest.raises(ConfigError, match=r"metrics\.type_labels: item 1: 'pdf' is not a MIME type"):
        build_config({**base, "metrics": {"type_labels": ["pdf"]}}, tmp_path / "f.toml")
    too_many = [f"application/x-t{i}" for i in range(100)]
    with pytest.raises(ConfigError, match=r"metrics\.type_labels: at most 64 types"):
        build_config({**base, "metrics": {"type_labels": too_many}}, tmp_path / "f.toml")


def test_closed_label_sets_match_the_enums_they_mirror() -> None:
    assert metrics.INSPECTION_LIMITS == {limit.value for limit in Limit} | {"other"}
    assert metrics.RULE_ACTIONS == {action.value for action in Action} | {"other"}
    assert metrics.RULE_MODES == {mode.value for mode in Mode} | {"other"}
    auth = pytest.importorskip("frontfilter.smtp.auth")
    assert metrics.AUTH_RESULTS == {result.value for result in auth.Result} | {"other"}


def test_closed_counters_exist_at_zero_before_any_event() -> None:
    """rate() and the alert ratios see a series before its first event."""
    exposed = {(s.name, tuple(sorted(s.labels.items())))
               for family in metrics.REGISTRY.collect() for s in family.samples}
    for verdict in ("accepted", "rejected", "tempfailed", "discarded", "quarantined"):
        assert ("frontfilter_messages_total", (("verdict", verdict),)) in exposed
    assert ("frontfilter_connections_total", (("result", "tls_failed"),)) in exposed
    assert ("frontfilter_dead_letters_total", ()) in exposed


def test_exposition_has_no_created_series() -> None:
    from prometheus_client import generate_latest

    assert b"_created" not in generate_latest(metrics.REGISTRY)


# ---- the start-up configuration ----------------------------------------------------------------

class Colour(enum.Enum):
    BLUE = "blue"


@dataclass(frozen=True)
class FakeTls:
    key_file: Path = Path("/etc/frontfilter/key.pem")
    key: str = "inline key material"
    password: str = "hunter2"
    users_file: Path = Path("/etc/frontfilter/users")
    api_token: str = ""
    certificate: str = "-----BEGIN CERTIFICATE-----\nMIIB..."


@dataclass(frozen=True)
class FakeConfig:
    listen: tuple[HostPort, ...] = (HostPort("::1", 25), HostPort("192.0.2.1", 25))
    network: Any = ipaddress.ip_network("10.0.0.0/8")
    colour: Colour = Colour.BLUE
    tls: FakeTls = FakeTls()
    extra: dict[str, Any] = field(default_factory=lambda: {
        "client_secret": "s3cret", "size": 10, "api_key": "k1", "key_data": "k2", "min_key_bits": 2048})


def test_secrets_are_masked_and_paths_shown() -> None:
    shown = observe.masked_config(FakeConfig())
    assert shown["listen"] == ["[::1]:25", "192.0.2.1:25"]
    assert shown["network"] == "10.0.0.0/8" and shown["colour"] == "blue"
    tls = shown["tls"]
    assert tls["key_file"] == "/etc/frontfilter/key.pem"          # where the key is: fine
    assert tls["users_file"] == "/etc/frontfilter/users"
    assert tls["key"] == tls["password"] == tls["certificate"] == "***"
    assert tls["api_token"] == ""                                   # nothing set, nothing to hide
    # "key" as a name's first or last word is one; in the middle it names a measure of one.
    assert shown["extra"] == {"client_secret": "***", "size": 10, "api_key": "***", "key_data": "***",
                              "min_key_bits": 2048}
    assert "hunter2" not in repr(shown) and "s3cret" not in repr(shown)


def test_real_config_logs_plainly(tmp_path: Path) -> None:
    config = build_config({"backend": {"servers": ["127.0.0.1:2526"]},
                           "metrics": {"listen": "127.0.0.1:9425"}}, tmp_path / "f.toml")
    shown = observe.masked_config(config)
    assert shown["metrics"]["listen"] == "127.0.0.1:9425"
    assert shown["backend"]["servers"] == ["127.0.0.1:2526"]
    assert shown["spool"]["dir"] == str(tmp_path / "var" / "spool")
    assert shown["dkim"]["min_key_bits"] == 1024        # a bound on keys, not a key: shown


