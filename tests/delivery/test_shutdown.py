"""Graceful shutdown in queue mode, through a real relay process and a real client socket.

SIGTERM stops new connections and the delivery worker at once, but a session already in DATA
has `server.shutdown_grace` to finish: the message it ends must still be spooled and get its
250, not an internal error because the spool was closed under it.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.delivery.support import DRAIN_TIMEOUT, dead_port, message, message_ids, queue_config, spooled
from tests.harness import RawClient, RecordingSink, Relay, eventually, write_config


def test_a_session_ending_its_data_during_shutdown_is_spooled_and_gets_250(tmp_path: Path) -> None:
    port = dead_port()
    config = queue_config(tmp_path, [port])
    relay = Relay(config).start()
    try:
        with RawClient(relay.port) as client:
            client.read_reply()
            client.command("EHLO client.test")
            assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
            assert client.command("RCPT TO:<bob@example.org>").startswith("250")
            assert client.command("DATA").startswith("354")
            client.send(message("late"))
            relay.signal(signal.SIGTERM)
            relay.wait_event("delivery_stopped")       # the worker is done; this session is not
            answer = client.command(".")
    finally:
        assert relay.stop() == 0
    assert answer.startswith("250 2.0.0"), answer
    assert not relay.events("internal_error")
    queue_id = answer.rsplit(" ", 1)[1]
    assert spooled(tmp_path) == [queue_id]
    with RecordingSink(port=port) as sink, Relay(config):      # the next start delivers it
        assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)
        assert message_ids(sink.messages) == {"late@test": 1}


SENDERS = 5
MOST_MESSAGES = 100_000      # per sender: far more than any shutdown grace lets through


def send_until_refused(port: int, acknowledged: list[int], endings: list[str]) -> None:
    """One persistent session sending message after message until the relay says stop."""
    import smtplib
    sent = 0
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
            for _ in range(MOST_MESSAGES):
                client.sendmail("alice@example.net", ["bob@example.org"], message(f"m{sent}"))
                sent += 1
                acknowledged.append(1)
    except smtplib.SMTPResponseException as error:
        endings.append(f"{error.smtp_code} {error.smtp_error.decode(errors='replace')}")
    except (smtplib.SMTPServerDisconnected, ConnectionError) as error:
        endings.append(f"disconnected: {error}")
    else:
        endings.append("never stopped")


def test_sigterm_under_steady_load_ends_every_session_without_losing_an_acknowledged_message(
        tmp_path: Path) -> None:
    """Issue 21: 5 persistent sessions sending back to back. The old process went on taking
    their messages after SIGTERM for as long as they sent, so a restart under steady load
    waited for systemd's stop timeout and a SIGKILL. Now each is told 421 4.3.2 once its
    transaction is done; the grace is far longer than that could take."""
    import threading
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], server={"shutdown_grace": "10m"},
                              limits={"connection_rate_per_ip": 0})
        relay = Relay(config).start()
        acknowledged: list[int] = []
        endings: list[str] = []
        senders = [threading.Thread(target=send_until_refused, args=(relay.port, acknowledged, endings))
                   for _ in range(SENDERS)]
        for sender in senders:
            sender.start()
        assert eventually(lambda: len(acknowledged) >= 50, DRAIN_TIMEOUT)
        relay.signal(signal.SIGTERM)
        assert relay.proc is not None and relay.proc.wait(120) == 0    # long before the grace ends
        for sender in senders:
            sender.join(60)
        assert relay.stop() == 0
        assert len(endings) == SENDERS and all(e.startswith("421 4.3.2") for e in endings), endings
        assert eventually(lambda: len(sink.messages) >= len(acknowledged), DRAIN_TIMEOUT)
        assert len(sink.messages) == len(acknowledged)     # sync mode: each 250 is at the backend
