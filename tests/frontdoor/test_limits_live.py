"""Connection limits, the error tarpit and the AUTH lockout on a running relay.

Each test runs its own relay: the counters are per client address, and every client here is
127.0.0.1.
"""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.frontdoor.helpers import make_pki, needs_swaks, swaks, write_users
from tests.harness import RawClient, RecordingSink, Relay, write_config

PASSWORD = "correct horse battery"
WAIT_ROUNDS = 100          # x 50 ms: how long a freed slot may take to come back


@contextmanager
def relay(tmp_path: Path, **sections: dict[str, Any]) -> Iterator[Relay]:
    with RecordingSink() as sink:
        with Relay(write_config(tmp_path, [sink.port], **sections)) as running:
            yield running


def greeting(port: int, stack: ExitStack) -> tuple[RawClient, str]:
    client = stack.enter_context(RawClient(port))
    return client, client.read_reply()


def test_extra_connection_from_one_address_gets_421_while_the_others_are_served(tmp_path: Path) -> None:
    with relay(tmp_path, limits={"max_connections_per_ip": 2, "connection_rate_per_ip": 0}) as running:
        with ExitStack() as stack:
            first, hello1 = greeting(running.port, stack)
            second, hello2 = greeting(running.port, stack)
            assert hello1.startswith("220 ") and hello2.startswith("220 ")
            third, refused = greeting(running.port, stack)
            assert refused == "421 4.7.0 Too many connections, try again later"
            assert third.read_reply() == ""                      # and closed
            assert first.command("EHLO client.test").startswith("250")
            assert second.command("NOOP").startswith("250")
            line = running.wait_event("connection_refused", result="refused_limit")
            assert line["limit"] == "per_ip" and line["client"].startswith("127.0.0.1:")
            first.command("QUIT")
            for _ in range(WAIT_ROUNDS):        # the slot comes back once the server saw the close
                with RawClient(running.port) as again:
                    if again.read_reply().startswith("220 "):
                        break
                time.sleep(0.05)
            else:
                pytest.fail("the freed slot never came back")


def test_connection_rate_per_address(tmp_path: Path) -> None:
    with relay(tmp_path, limits={"max_connections_per_ip": 0, "connection_rate_per_ip": 3,
                                 "connection_rate_window": "10m"}) as running:
        for _ in range(3):
            with RawClient(running.port) as client:
                assert client.read_reply().startswith("220 ")
        with RawClient(running.port) as client:
            assert client.read_reply().startswith("421 4.7.0")
        assert running.wait_event("connection_refused", result="refused_limit")["limit"] == "rate"


def test_by_default_a_busy_sender_reconnecting_is_never_refused(tmp_path: Path) -> None:
    # One connection per message, faster than the 60 a minute the old default allowed.
    with relay(tmp_path) as running:
        for _ in range(80):
            with RawClient(running.port) as client:
                assert client.read_reply().startswith("220 ")
                assert client.command("QUIT").startswith("221")
        assert not running.events("connection_refused")


def test_errors_past_the_threshold_are_slowed_then_the_session_is_closed(tmp_path: Path) -> None:
    with relay(tmp_path, limits={"tarpit_after": 1, "tarpit_delay": "300ms"},
               server={"max_errors": 4}) as running:
        with RawClient(running.port) as client:
            client.read_reply()
            started = time.monotonic()
            replies = [client.command("BOGUS") for _ in range(3)]
            slowed = time.monotonic() - started
            assert [r[:3] for r in replies] == ["500", "500", "500"]
            assert slowed >= 0.6           # errors 2 and 3 waited; a lower bound, never flaky
            assert client.command("BOGUS")[:3] == "500"          # the fourth error, then:
            assert client.read_reply() == "421 4.7.0 Too many errors, closing connection"


def test_a_message_taken_forgives_the_errors_before_it(tmp_path: Path) -> None:
    message = b"Subject: fine\r\n\r\nhello\r\n.\r\n"
    out_of_order = "RCPT TO:<bob@example.org>"                  # before MAIL: 503, an error
    with relay(tmp_path, limits={"tarpit_delay": "0s"}, server={"max_errors": 3}) as running:
        with RawClient(running.port) as client:
            client.read_reply()
            client.command("EHLO client.test")
            for _ in range(3):              # two errors, then a message taken; three times over
                assert [client.command(out_of_order)[:3] for _ in range(2)] == ["503", "503"]
                assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
                assert client.command("RCPT TO:<bob@example.org>").startswith("250")
                assert client.command("DATA").startswith("354")
                client.send(message)
                assert client.read_reply().startswith("250 2.0.0 Ok: queued as")
            assert client.command("NOOP").startswith("250")     # six errors in all, still served
            assert [client.command(out_of_order)[:3] for _ in range(3)] == ["503", "503", "503"]
            assert client.read_reply() == "421 4.7.0 Too many errors, closing connection"


@needs_swaks
def test_repeated_auth_failures_lock_the_address_out(tmp_path: Path) -> None:
    with RecordingSink() as sink, _auth_listener_relay(tmp_path, sink, failure_delay="10ms",
                                                       max_failures=3, lockout_time="10m") as running:
        port = running.port
        for attempt in range(3):
            done = swaks("--server", "127.0.0.1", "--port", str(port), "--tls", "--auth", "PLAIN",
                         "--auth-user", "alice", "--auth-password", f"guess {attempt}", "--quit-after", "AUTH")
            assert "535 5.7.8" in done.stdout, done.stdout
        line = running.wait_event("auth", result="failure", locked_out=True)
        assert line["client"].startswith("127.0.0.1:")
        # Locked out: even the right password is not looked at.
        assert _login(port, PASSWORD) == (454, b"4.7.0 Temporary authentication failure, try again later")
        done = swaks("--server", "127.0.0.1", "--port", str(port), "--tls", "--auth", "PLAIN",
                     "--auth-user", "alice", "--auth-password", PASSWORD, "--quit-after", "AUTH")
        assert "454 4.7.0" in done.stdout and done.returncode != 0
        running.wait_event("auth", result="locked_out")


def _auth_listener_relay(tmp_path: Path, sink: RecordingSink, **auth: Any) -> Relay:
    from tests.frontdoor.helpers import frontdoor_config
    pki = make_pki(tmp_path / "tls")
    users = write_users(tmp_path / "users", {"alice": PASSWORD})
    config = frontdoor_config(
        tmp_path, [sink.port], listeners=[{"address": "127.0.0.1:0", "auth": "optional"}],
        tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        auth={"users_file": str(users), **auth})
    return Relay(config)


def _login(port: int, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.starttls()
        client.ehlo("client.test")
        return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice\0{password}".encode()).decode())


def test_an_auth_exchange_under_way_when_the_address_gets_locked_learns_nothing(tmp_path: Path) -> None:
    """Parallel sessions from one address: one starts AUTH LOGIN (the lock is not set yet),
    two others fail and lock the address, then the first sends the right password. It must
    get the lockout answer, not 235: else an attacker keeps guessing past max_failures in
    sessions opened before the lock."""
    with RecordingSink() as sink, _auth_listener_relay(tmp_path, sink, failure_delay="10ms",
                                                       max_failures=2, lockout_time="10m") as running:
        with ExitStack() as stack:
            sessions = []
            for _ in range(3):
                client = stack.enter_context(smtplib.SMTP("127.0.0.1", running.port, timeout=15))
                client.starttls()
                client.ehlo("client.test")
                sessions.append(client)
            patient, *guessers = sessions
            assert patient.docmd("AUTH", "LOGIN")[0] == 334
            assert patient.docmd(base64.b64encode(b"alice").decode())[0] == 334   # Password:
            for number, guesser in enumerate(guessers):
                answer = guesser.docmd("AUTH", "PLAIN " + base64.b64encode(
                    f"\0alice\0guess {number}".encode()).decode())
                assert answer[0] == 535, answer
            running.wait_event("auth", result="failure", locked_out=True)
            answer = patient.docmd(base64.b64encode(PASSWORD.encode()).decode())
            assert answer == (454, b"4.7.0 Temporary authentication failure, try again later")
        assert running.wait_event("auth", result="locked_out")["user"] is None
