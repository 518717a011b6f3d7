"""Pure parts of delivery: the retry schedule, folding an attempt into the state, the DSN,
and the new config keys (the import direction is tests/test_layout.py's)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from frontfilter.config import BackendMode, ConfigError, SpoolConfig, load_config
from frontfilter.delivery.backend import BackendReply, Outcome
from frontfilter.delivery.dsn import MAX_RETURNED_HEADER_BYTES, build_dsn, original_headers
from frontfilter.delivery.spool import DeliveryState, Envelope, RecipientState, Status
from frontfilter.delivery.worker import apply_attempt, retry_delay
from frontfilter.units import DAYS, MINUTES

SPOOL = SpoolConfig(retry_min=1 * MINUTES, retry_max=60 * MINUTES, retry_jitter=0.2,
                    max_lifetime=1 * DAYS)
ENVELOPE = Envelope(id="2Q3DWAAAAAAAAAAAAAAAA", sender="alice@example.net",
                    recipients=("a@example.org", "b@example.org", "c@example.org"),
                    arrived=1_000_000.0, size=0)


def reply(code: int, enhanced: str = "", text: str = "x") -> BackendReply:
    outcome = Outcome.OK if code < 400 else Outcome.TRANSIENT if code < 500 else Outcome.PERMANENT
    return BackendReply(outcome, code, enhanced or None, text, "10.0.0.5:25")


def test_backoff_doubles_from_retry_min_to_retry_max_within_the_jitter() -> None:
    middle = [retry_delay(n, SPOOL, 0.5) for n in range(1, 10)]
    assert middle == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert retry_delay(1, SPOOL, 0.0) == pytest.approx(48) and retry_delay(1, SPOOL, 0.999999) == pytest.approx(72)
    assert retry_delay(10_000, SPOOL, 0.5) == 3600      # no overflow after years of retries


def test_an_attempt_settles_each_recipient_by_its_own_reply() -> None:
    state = DeliveryState.initial(ENVELOPE)
    applied = apply_attempt(ENVELOPE, state, [0, 1, 2],
                            [reply(250), reply(550, "5.1.1"), reply(451, "4.2.0")],
                            now=1_000_010.0, config=SPOOL, rand=0.5)
    assert (applied.delivered, applied.failed, applied.deferred) == ([0], [1], [2])
    assert [r.status for r in state.recipients] == [Status.DELIVERED, Status.FAILED, Status.PENDING]
    assert state.pending() == [2] and state.attempts == 1
    assert state.next_attempt == 1_000_010.0 + 60
    assert state.recipients[1].detail == "10.0.0.5:25: 550 5.1.1 x"


def test_the_last_try_falls_on_the_lifetime_and_then_pending_recipients_expire() -> None:
    state = DeliveryState.initial(ENVELOPE)
    state.attempts = 20
    near_end = ENVELOPE.arrived + SPOOL.max_lifetime - 10
    apply_attempt(ENVELOPE, state, [0], [reply(451)], now=near_end, config=SPOOL, rand=0.5)
    assert state.next_attempt == ENVELOPE.arrived + SPOOL.max_lifetime
    applied = apply_attempt(ENVELOPE, state, [0], [reply(451)], now=state.next_attempt,
                            config=SPOOL, rand=0.5)
    assert applied.expired == [0] and state.recipients[0].status is Status.FAILED


def test_dsn_is_a_multipart_report_without_the_body_or_the_backend_host() -> None:
    original = (b"Received: from x by mx.test\r\nSubject: quarterly\r\n"
                + b"X-Pad: " + b"p" * 900 + b"\r\n" + b"X-Pad: " + b"p" * 900 + b"\r\n" * 1
                + b"\r\nSECRET BODY\r\n")
    failed = [RecipientState("b@example.org", Status.FAILED, 550, "5.1.1", "10.0.0.5:25: 550 5.1.1 nope"),
              RecipientState("c@example.org", Status.FAILED, 451, "4.2.0", "10.0.0.5:25: 451 4.2.0 full")]
    data, utf8 = build_dsn(dsn_id="2Q3DWDSNAAAAAAAAAAAAA", hostname="mx.example.org", envelope=ENVELOPE,
                           message=original, failed=failed, expired={"c@example.org"}, now=1_000_100.0)
    assert not utf8 and b"SECRET BODY" not in data and b"10.0.0.5" not in data and b"nope" not in data
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report["To"].addresses[0].addr_spec == "alice@example.net" and report["Auto-Submitted"] == "auto-replied"
    notice, status, headers = report.get_payload()
    blocks = status.get_payload()          # message/delivery-status: per-message, then per-recipient
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.org"
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks[1:]] == [
        ("rfc822; b@example.org", "failed", "5.1.1"), ("rfc822; c@example.org", "failed", "4.4.7")]
    assert "Subject: quarterly" in headers.get_content()


def test_dsn_for_an_internationalised_sender_uses_rfc_6533_types() -> None:
    envelope = Envelope(id="2Q3DWAAAAAAAAAAAAAAAA", sender="élise@example.net", recipients=("b@example.org",),
                        arrived=1_000_000.0, size=0, options=("SMTPUTF8",))
    data, utf8 = build_dsn(dsn_id="2Q3DWDSNAAAAAAAAAAAAA", hostname="mx.test", envelope=envelope,
                           message=b"Subject: x\r\n" * (MAX_RETURNED_HEADER_BYTES // 10) + b"\r\nbody",
                           failed=[RecipientState("b@example.org", Status.FAILED, 550, "5.1.1")],
                           expired=(), now=1_000_100.0)
    assert utf8 and b"message/global-delivery-status" in data and b"message/global-headers" in data
    assert len(data) < MAX_RETURNED_HEADER_BYTES + 4096


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "frontfilter.toml"
    path.write_text('[backend]\nservers = ["127.0.0.1:2526"]\n' + text)
    return path


def test_queue_is_the_default_mode_and_spool_keys_take_units(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[spool]\nretry_min = "100ms"\nretry_jitter = "25%"\n'
                                         'max_size = "2GiB"\nmax_lifetime = "2d"\n'))
    assert config.backend.mode is BackendMode.QUEUE
    assert (config.spool.retry_min, config.spool.retry_jitter) == (0.1, 0.25)
    assert (config.spool.max_size, config.spool.max_lifetime) == (2 * 2**30, 2 * DAYS)


@pytest.mark.parametrize("text, problem", [
    ('[spool]\nretry_min = "5m"\nretry_max = "1m"\n',
     "spool.retry_max: must not be less than spool.retry_min"),
    ('[spool]\nretry_jitter = 2\n', "spool.retry_jitter: expected a share between 0 and 1"),
    ('[spool]\nmax_mesages = 10\n', "spool.max_mesages: unknown key (did you mean 'max_messages'?)"),
    ('[backend]\nconcurrency = 0\n', "backend.concurrency: must be at least 1"),
    ('[spool]\nmin_free_space = "lots"\n', "spool.min_free_space: 'lots' is not a size"),
])
def test_bad_spool_keys_name_file_and_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "frontfilter.toml"
    body = '[backend]\nservers = ["127.0.0.1:2526"]\n'
    if text.startswith("[backend]"):
        body = '[backend]\nservers = ["127.0.0.1:2526"]\n' + text.split("\n", 1)[1]
    else:
        body += text
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert any(line.startswith(f"{path}: {problem}") for line in error.value.problems), error.value.problems




def test_the_dsn_returns_the_added_fields_with_the_header_section_and_no_body() -> None:
    added = b"Received: from a by b; now\r\n"
    message = b"Subject: kept\r\nMessage-ID: <m@test>\r\n\r\n" + b"body line\r\n" * 10_000
    assert original_headers(message, added) == added + b"Subject: kept\r\nMessage-ID: <m@test>\r\n"
    assert original_headers(added + message) == original_headers(message, added)
