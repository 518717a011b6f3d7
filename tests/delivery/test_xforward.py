"""XFORWARD and XCLIENT: a backend that trusts the relay learns the real client — tried against
a real Postfix with `smtpd_authorized_xforward_hosts` (or `smtpd_authorized_xclient_hosts`), as
deploy/README.md tells the administrator."""

from __future__ import annotations

import importlib.util
import re
import shutil
import smtplib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontfilter.delivery.xforward import ClientFacts, commands, xclient_commands, xtext
from tests.harness import REPO, Answer, RecordingSink, Relay, eventually, write_config
from tests.requires import installed

POSTFIX = shutil.which("postfix")
_spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
assert _spec is not None and _spec.loader is not None
BENCH = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = BENCH                # dataclasses look their module up there
_spec.loader.exec_module(BENCH)
CLIENT_ADDRESS = "127.0.0.2"          # the test's client: the relay itself reaches Postfix from 127.0.0.1


def test_xforward_says_only_what_the_backend_asks_for_in_xtext() -> None:
    client = ClientFacts("2001:db8::7", 40001, "mail+out=1.example", "ESMTP")
    assert commands(client, ["ADDR", "HELO", "SOURCE"]) == [
        "XFORWARD ADDR=IPV6:2001:db8::7 HELO=mail+2Bout+3D1.example SOURCE=REMOTE"]   # as Postfix reads v6
    assert commands(client, []) == []                           # not advertised: nothing sent
    assert xtext("a b\u00e9") == "a+20b+C3+A9"
    assert xtext("h\udcff\udcfe.x") == "h+FF+FE.x"   # a HELO name that was not UTF-8: its own bytes
    long_helo = ClientFacts("192.0.2.1", 25, "h" * 300)
    lines = commands(long_helo, ["ADDR", "PORT", "NAME", "HELO", "PROTO", "SOURCE"])
    assert all(len(line) <= 500 for line in lines) and "".join(lines).count("HELO=") == 1
    # Cut to 255 characters, never inside an escape (Postfix answers 501 to "+2" at the end).
    for helo in ("x" * 254 + "+", "x" * 253 + "+"):
        [line] = commands(ClientFacts("192.0.2.1", None, helo), ["HELO"])
        assert line == "XFORWARD HELO=" + helo[:-1], line


def test_xclient_resets_what_it_does_not_know_for_the_next_message_on_the_connection() -> None:
    offered = ["NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR"]
    with_login = ClientFacts("192.0.2.7", 4242, "laptop.example", login="alice@example.org")
    assert xclient_commands(with_login, offered) == [
        "XCLIENT ADDR=192.0.2.7 PORT=4242 NAME=[UNAVAILABLE] HELO=laptop.example PROTO=ESMTP LOGIN=alice@example.org"]
    # The next message's client did not log in, nor say HELO: the attributes would otherwise
    # carry over to it on the same connection.
    assert xclient_commands(ClientFacts("198.51.100.1"), offered) == [
        "XCLIENT ADDR=198.51.100.1 PORT=[UNAVAILABLE] NAME=[UNAVAILABLE] HELO=[UNAVAILABLE] PROTO=ESMTP "
        "LOGIN=[UNAVAILABLE]"]
    assert xclient_commands(with_login, []) == []


def running_postfix(extra: str) -> Iterator[tuple[int, Path, RecordingSink]]:
    """The benchmark's throw-away Postfix (bench/run.py), relaying to a recording sink, with
    `extra` main.cf lines."""
    # Postfix's own processes (user postfix) must reach its directories: not under pytest's
    # private temporary root.
    home = Path(tempfile.mkdtemp(prefix="frontfilter-postfix-"))
    try:
        with RecordingSink() as sink, BENCH.postfix(sink, home, extra) as running:
            yield running.port, home / "postfix" / "maillog", sink
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def postfix() -> Iterator[tuple[int, Path, RecordingSink]]:
    """Trusting XFORWARD from loopback, as deploy/README.md says."""
    yield from running_postfix("smtpd_authorized_xforward_hosts = 127.0.0.0/8\n")


@pytest.fixture
def postfix_xclient() -> Iterator[tuple[int, Path, RecordingSink]]:
    """Trusting XCLIENT (and not XFORWARD) from the relay's address only, as deploy/README.md
    says: the clients it speaks for (127.0.0.2, .3) are not trusted with it themselves."""
    yield from running_postfix("smtpd_authorized_xclient_hosts = 127.0.0.1/32\n")


def clients_postfix_logged(maillog: Path) -> list[str]:
    """Postfix's `client=` lines: the connection's client, and with XFORWARD the one it was
    told of (`orig_client=`)."""
    return re.findall(r"smtpd\[\d+\]: \w+: (client=.*)$", maillog.read_text(), re.M)


@installed(POSTFIX is not None, "Postfix is installed by `make test` (Debian package postfix)")
@pytest.mark.parametrize("mode", ["sync", "queue"])
def test_postfix_logs_the_real_client_of_mail_through_frontfilter(tmp_path: Path, postfix: tuple[int, Path, RecordingSink],
                                                                mode: str) -> None:
    port, maillog, sink = postfix
    config = write_config(tmp_path, [port], backend={"mode": mode})
    with Relay(config) as relay:
        answer = send_from(relay.port, CLIENT_ADDRESS)
        assert answer.ok, answer
        sink.wait_for(1, timeout=30)
    logged = eventually(lambda: clients_postfix_logged(maillog), timeout=30)
    # Postfix logs the connection's client and, told by XFORWARD, the real one.
    assert logged == [f"client=unknown[127.0.0.1], orig_client=unknown[{CLIENT_ADDRESS}]"], logged


@installed(POSTFIX is not None, "Postfix is installed by `make test` (Debian package postfix)")
def test_a_helo_name_that_is_not_utf8_is_spooled_and_forwarded_not_refused_or_bounced(
        tmp_path: Path, postfix: tuple[int, Path, RecordingSink]) -> None:
    """The relay reads such a name with surrogateescape; the spool's envelope line and XFORWARD
    once encoded it strictly: every such message was a 451 for ever, and once spooled, a bounce
    ("non-ASCII sender")."""
    port, maillog, sink = postfix
    config = write_config(tmp_path, [port], backend={"mode": "queue"})
    with Relay(config) as relay:
        answer = send_from(relay.port, CLIENT_ADDRESS, helo=b"h\xff\xfe.example")
        assert answer.ok, answer
        [received] = sink.wait_for(1, timeout=30)
        assert b"Subject: through" in received.data
        assert not relay.events("dead_letter") and not relay.events("dsn_queued")
    logged = eventually(lambda: clients_postfix_logged(maillog), timeout=30)
    assert logged == [f"client=unknown[127.0.0.1], orig_client=unknown[{CLIENT_ADDRESS}]"], logged


@installed(POSTFIX is not None, "Postfix is installed by `make test` (Debian package postfix)")
def test_with_forward_client_off_postfix_sees_the_relay(tmp_path: Path, postfix: tuple[int, Path, RecordingSink]) -> None:
    port, maillog, sink = postfix
    config = write_config(tmp_path, [port], backend={"mode": "sync", "forward_client": False})
    with Relay(config) as relay:
        assert send_from(relay.port, CLIENT_ADDRESS).ok
        sink.wait_for(1, timeout=30)
    logged = eventually(lambda: clients_postfix_logged(maillog), timeout=30)
    assert logged == ["client=unknown[127.0.0.1]"], logged


@installed(POSTFIX is not None, "Postfix is installed by `make test` (Debian package postfix)")
@pytest.mark.parametrize("mode", ["sync", "queue"])
def test_a_backend_that_takes_only_xclient_sees_each_real_client(
        tmp_path: Path, postfix_xclient: tuple[int, Path, RecordingSink], mode: str) -> None:
    port, maillog, sink = postfix_xclient
    # Queue mode: a connection that carried XCLIENT speaks as that client for good, so it is
    # never pooled for the next message or for a recipient probe (which would go out as it).
    # The second message's client is outside smtpd_authorized_xclient_hosts on purpose: on a
    # reused connection Postfix would no longer offer XCLIENT to it.
    config = write_config(tmp_path, [port], backend={"mode": mode, "verify_recipients": mode == "queue"})
    with Relay(config) as relay:
        assert send_from(relay.port, CLIENT_ADDRESS).ok
        sink.wait_for(1, timeout=30)
        assert send_from(relay.port, "127.0.0.3").ok
        sink.wait_for(2, timeout=30)
    relay_itself = "client=unknown[127.0.0.1]"         # the recipient probes (MAIL FROM:<>)

    def messages() -> list[str]:
        return [line for line in clients_postfix_logged(maillog) if line != relay_itself]

    logged = eventually(lambda: len(messages()) == 2 and messages(), timeout=30)
    # Postfix decided and logged as if each real client had connected to it; the probes went
    # as the relay itself, never as the last message's client.
    assert logged == [f"client=unknown[{CLIENT_ADDRESS}]", "client=unknown[127.0.0.3]"], clients_postfix_logged(maillog)


def send_from(port: int, source: str, helo: bytes = b"client.example.net") -> Answer:
    """One message to the relay from `source` (a loopback address of its own)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.send(b"EHLO " + helo + b"\r\n")         # bytes: smtplib's ehlo() takes ASCII only
        code, _ = client.getreply()
        assert code == 250
        client.mail("alice@example.net")
        code, text = client.rcpt("bob@example.org")
        if code != 250:
            return Answer(code, text.decode(), "rcpt")
        code, text = client.data(b"Subject: through\r\n\r\nhello\r\n")
        return Answer(code, text.decode(), "data")
