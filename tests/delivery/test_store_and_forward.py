"""Queue mode end to end: real relay processes, a real backend, real spool files.

Each test is one acceptance line of issue 4: mail is accepted while the backend is down and
arrives exactly once when it is back; 4xx is retried; a 5xx recipient gets a DSN while the
others are delivered; failover needs no retry; a full spool answers 452; shutdown leaves the
spool for the next start.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from pathlib import Path
from typing import Any

from tests.delivery.support import (
    DRAIN_TIMEOUT, dead_port, message, message_ids, queue_config, send_one, spooled)
from tests.harness import RawClient, RecordingSink, Relay, SinkBehaviour, eventually


def test_backend_down_fifty_messages_are_spooled_and_arrive_exactly_once_when_it_is_back(
        tmp_path: Path) -> None:
    port = dead_port()
    with Relay(queue_config(tmp_path, [port])) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            ids = [send_one(client, "alice@example.net", ["bob@example.org"], message(f"down-{n}"))
                   for n in range(50)]
        assert spooled(tmp_path) == sorted(ids)            # on disk, each under the id the client saw
        relay.wait_event("delivery", status="deferred")     # tried, and kept
        with RecordingSink(port=port) as sink:              # the backend is back
            assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT), spooled(tmp_path)
            counts = message_ids(sink.messages)
        assert counts == {f"down-{n}@test": 1 for n in range(50)}
        delivered = {e["queue_id"] for e in relay.events("delivery") if e["status"] == "delivered"}
        assert delivered == set(ids)


def test_backend_4xx_then_2xx_is_retried_and_delivered_once(tmp_path: Path) -> None:
    behaviour = SinkBehaviour(data_reply="451 4.3.0 Busy, try later")
    with RecordingSink(behaviour=behaviour) as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            queue_id = send_one(client, "alice@example.net", ["bob@example.org"], message("busy"))
        deferred = relay.wait_event("delivery", queue_id=queue_id, status="deferred")
        assert deferred["deferred"] == ["bob@example.org"]
        behaviour.data_reply = None                          # the backend recovers
        done = relay.wait_event("delivery", queue_id=queue_id, status="delivered")
        assert done["attempts"] >= 2
        assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)
        assert message_ids(sink.messages) == {"busy@test": 1}
        assert relay.events("forward_failed")[0]["result"] == "transient"


def test_5xx_for_one_of_two_recipients_delivers_the_other_and_sends_a_dsn(tmp_path: Path) -> None:
    with RecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            queue_id = send_one(client, "alice@example.net", ["bob@example.org", "rejectme@example.org"],
                                message("partial"))
        assert len(sink.wait_for(2)) == 2
        original, dsn = sorted(sink.messages, key=lambda m: m.sender == "<>")
        assert (original.sender, original.recipients) == ("alice@example.net", ["bob@example.org"])
        assert (dsn.sender, dsn.recipients) == ("<>", ["alice@example.net"])
        report = email.message_from_bytes(dsn.data, policy=email.policy.default)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        assert report["Auto-Submitted"] == "auto-replied"
        text, status, headers = report.get_payload()
        assert status.get_content_type() == "message/delivery-status"
        fields = status.as_string()
        assert "Final-Recipient: rfc822; rejectme@example.org" in fields
        assert "Action: failed" in fields and "Status: 5.1.1" in fields
        assert "bob@example.org" not in fields               # only the one that failed
        assert str(sink.port) not in dsn.data.decode()       # no backend host in a bounce
        assert headers.get_content_type() == "text/rfc822-headers"
        assert b"Message-ID: <partial@test>" in dsn.data and b"Hello." not in dsn.data
        dead = relay.wait_event("dead_letter", queue_id=queue_id)
        assert dead["failed"] == ["rejectme@example.org"]
        assert (tmp_path / "spool" / "deadletter" / f"{queue_id}.msg").exists()
        assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)


def test_a_bounce_to_an_outside_sender_returns_only_what_identifies_the_message(tmp_path: Path) -> None:
    # The sender may be forged (backscatter): the attacker's headers do not ride on our bounce.
    with RecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        crafted = (b"From: x@test\r\nX-Payload: buy now" + b"\r\n buy now" * 200 + b"\r\nSubject: the subject\r\n"
                   b"Message-ID: <crafted@test>\r\n\r\nHello.\r\n")
        for sender in ("someone@elsewhere.example", "postmaster@example.org"):
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
                send_one(client, sender, ["rejectme@example.org"], crafted)
        bounces = {m.recipients[0]: m.data for m in sink.wait_for(2)}
    outside, inside = bounces["someone@elsewhere.example"], bounces["postmaster@example.org"]
    assert b"Subject: the subject\r\n" in outside and b"Message-ID: <crafted@test>\r\n" in outside
    assert b"buy now" not in outside and b"Received:" not in outside
    assert b"X-Payload: buy now" in inside and b"Received:" in inside     # our own users get it all
    assert len(outside) < len(inside) - 1000


def test_null_sender_gets_no_dsn(tmp_path: Path) -> None:
    with RecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            queue_id = send_one(client, "<>", ["rejectme@example.org"], message("bounce"))
        relay.wait_event("dead_letter", queue_id=queue_id)
        assert sink.wait_for(1, timeout=1.0) == []
        assert not relay.events("dsn_queued")


def test_first_backend_down_goes_to_the_second_without_waiting_for_a_retry(tmp_path: Path) -> None:
    down = dead_port()
    with RecordingSink() as sink:
        config = queue_config(tmp_path, [down, sink.port], backend={"skip_failed_for": "1h"},
                              spool={"retry_min": "1h", "retry_max": "1h"})
        with Relay(config) as relay:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
                first = send_one(client, "alice@example.net", ["bob@example.org"], message("failover-1"))
                second = send_one(client, "alice@example.net", ["bob@example.org"], message("failover-2"))
            for queue_id in (first, second):
                line = relay.wait_event("delivery", queue_id=queue_id, status="delivered")
                assert line["attempts"] == 1 and line["backend"] == f"127.0.0.1:{sink.port}"
            # The dead one was tried once, then skipped (backend.skip_failed_for).
            assert [e["backend"] for e in relay.events("forward_failed")] == [f"127.0.0.1:{down}"]
        assert message_ids(sink.messages) == {"failover-1@test": 1, "failover-2@test": 1}


def test_full_spool_answers_452_and_the_client_keeps_the_message(tmp_path: Path) -> None:
    port = dead_port()
    config = queue_config(tmp_path, [port], spool={"max_messages": 2, "max_size": "3KiB"})
    with Relay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            send_one(client, "alice@example.net", ["bob@example.org"], message("full-1"))
            # Too big for the room left (3 KiB in all): refused at end of DATA.
            client.mail("alice@example.net")
            client.rcpt("bob@example.org")
            code, text = client.data(message("full-big", body="x" * 70 + "\r\n") * 40)
            assert (code, text.split()[0]) == (452, b"4.3.1")
            send_one(client, "alice@example.net", ["bob@example.org"], message("full-2"))
            # The count limit: said at MAIL, before the client sends the body.
            code, text = client.mail("alice@example.net")
            assert (code, text.split()[0]) == (452, b"4.3.1")
            client.rset()
        assert relay.wait_event("message", verdict="tempfailed")["reply"].startswith("452 4.3.1")
        with RecordingSink(port=port) as sink:               # the backend drains the spool
            assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:   # the client retries
                send_one(client, "alice@example.net", ["bob@example.org"], message("full-3"))
            assert eventually(lambda: len(sink.messages) == 3, DRAIN_TIMEOUT)
            assert message_ids(sink.messages) == {"full-1@test": 1, "full-2@test": 1, "full-3@test": 1}


def test_sigterm_leaves_undelivered_mail_spooled_and_the_next_start_delivers_it(tmp_path: Path) -> None:
    port = dead_port()
    config = queue_config(tmp_path, [port])
    relay = Relay(config).start()
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            ids = [send_one(client, "alice@example.net", ["bob@example.org"], message(f"term-{n}"))
                   for n in range(3)]
    finally:
        assert relay.stop() == 0
    assert relay.events("delivery_stopped") and spooled(tmp_path) == sorted(ids)
    with RecordingSink(port=port) as sink, Relay(config) as second:
        assert second.wait_event("spool_recovered")["messages"] == 3
        assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)
        assert message_ids(sink.messages) == {f"term-{n}@test": 1 for n in range(3)}


def test_unacknowledged_temp_files_are_dropped_and_damaged_files_set_aside_at_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for sub in ("tmp", "queue", "deadletter"):
        (spool / sub).mkdir(parents=True)
    (spool / "tmp" / "2Q3AAAAAAAAAAAAAAAAAA.msg.x1.tmp").write_bytes(b"half a mess")   # crash mid-write
    (spool / "queue" / "2Q3BBBBBBBBBBBBBBBBBB.state").write_text("{}")            # crash mid-remove
    (spool / "queue" / "2Q3CCCCCCCCCCCCCCCCCC.msg").write_bytes(b"edited by hand\n")
    with RecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        recovered = relay.wait_event("spool_recovered")
        assert (recovered["temps_discarded"], recovered["orphan_states"]) == (1, 1)
        assert "unreadable" in relay.wait_event("dead_letter", queue_id="2Q3CCCCCCCCCCCCCCCCCC")["reason"]
        assert sorted(p.name for p in (spool / "deadletter").iterdir()) == ["2Q3CCCCCCCCCCCCCCCCCC.msg"]
        assert list((spool / "tmp").iterdir()) == [] and spooled(tmp_path) == []


def test_recipient_verification_refuses_unknown_users_at_rcpt_and_caches(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = queue_config(tmp_path, [sink.port], backend={"verify_recipients": True})
        with Relay(config) as relay:
            for attempt in range(2):
                with RawClient(relay.port) as client:
                    client.read_reply()
                    client.command("EHLO client.test")
                    assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
                    assert client.command("RCPT TO:<rejectme@example.org>").startswith("550 5.1.1")
                    assert client.command("RCPT TO:<bob@example.org>").startswith("250")
                    client.command("QUIT")
            refusals = [e["reason"] for e in relay.events("refused")]
            assert len(refusals) == 2 and "(cached)" not in refusals[0] and "(cached)" in refusals[1]
        assert sink.messages == []


def test_recipient_verification_with_the_backend_down_answers_4xx(tmp_path: Path) -> None:
    config = queue_config(tmp_path, [dead_port()], backend={"verify_recipients": True})
    with Relay(config) as relay, RawClient(relay.port) as client:
        client.read_reply()
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@example.net>")
        assert client.command("RCPT TO:<bob@example.org>").startswith("451 4.4.1")
        client.command("QUIT")


def test_a_spool_directory_gone_at_run_time_is_logged_once_and_its_return_too(tmp_path: Path) -> None:
    """Not a traceback every scan_interval: one line when the scans start failing, one when
    they work again, and mail flows again."""
    with RecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port], spool={"scan_interval": "100ms"})) as relay:
        queue = tmp_path / "spool" / "queue"
        aside = tmp_path / "queue-aside"
        queue.rename(aside)
        queue.write_text("not a directory")
        relay.wait_event("spool_scan_failed")
        scans_seen = len(relay.events("spool_scan_failed"))
        time.sleep(1.0)         # not a synchronisation: ten scans go by, none of them may log again
        assert len(relay.events("spool_scan_failed")) == scans_seen == 1
        assert not [e for e in relay.events("internal_error") if e.get("where") == "spool scan"]
        queue.unlink()
        aside.rename(queue)
        relay.wait_event("spool_scan_recovered")
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            send_one(client, "alice@example.net", ["bob@example.org"], message("back"))
        assert message_ids(sink.wait_for(1)) == {"back@test": 1}


def test_a_message_past_the_inspection_deadline_gets_451_and_is_never_delivered(tmp_path: Path) -> None:
    """Inspection and the spool write share one thread (frontfilter/pipeline/endofdata.py): whichever
    answer the client gets at the deadline, the spool agrees with it — 451 is never delivered,
    250 always is, once."""
    parts = "".join(
        f"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
        f"filename=\"part{n}.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + ("QUJD" * 19 + "\r\n") * 100 for n in range(40))
    body = "--b\r\nContent-Type: text/plain\r\n\r\nHello.\r\n" + parts + "--b--\r\n"
    answers: dict[str, int] = {}
    with RecordingSink() as sink, Relay(queue_config(
            tmp_path, [sink.port], inspection={"timeout": "1ms"})) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            for n in range(5):
                data = message(f"slow-{n}").replace(b"\r\n\r\n", b"\r\nMIME-Version: 1.0\r\n"
                                                    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n", 1)
                client.mail("alice@example.net")
                client.rcpt("bob@example.org")
                code, text = client.data(data[: data.index(b"\r\n\r\n") + 4] + body.encode())
                answers[f"slow-{n}@test"] = code
                assert code == 250 or text.startswith(b"4.3.0"), (code, text)
        assert 451 in answers.values()
        # Every 250 was durably spooled before it was sent: the spool empties once each is delivered.
        assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)
        assert message_ids(sink.messages) == {i: 1 for i, code in answers.items() if code == 250}
        timeouts = [e for e in relay.events("message") if e["verdict"] == "tempfailed"]
        assert len(timeouts) == list(answers.values()).count(451)


class SizeRecordingSink(RecordingSink):
    """A backend that offers SIZE (RFC 1870) and notes what each MAIL FROM declared."""

    def __init__(self) -> None:
        super().__init__()
        self.declared: list[int] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-SIZE 52428800", responses[-1]]

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.declared += [int(o.split("=", 1)[1]) for o in options if o.upper().startswith("SIZE=")]
        envelope.mail_from, envelope.mail_options = address, list(options)
        return "250 2.1.0 OK"


def test_the_size_declared_to_the_backend_is_the_size_of_what_it_receives(tmp_path: Path) -> None:
    """SIZE counts the fields frontfilter adds on top (Authentication-Results, Received), which travel apart from the
    client's message until they are sent."""
    with SizeRecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            send_one(client, "alice@example.net", ["bob@example.org"], message("sized"))
        [received] = sink.wait_for(1)
    assert received.data.startswith(b"Authentication-Results: mx.test; none\r\nReceived:")   # the relay's, on top
    assert sink.declared == [len(received.data)]
