"""The relay end to end over real loopback SMTP: relay access, limits, smuggling, integrity."""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO, RawClient, RecordingSink, Relay, send, write_config

Message = bytes


@pytest.fixture(scope="module")
def relay(module_sink: RecordingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """Relay domain example.org, no trusted network: every loopback client is 'the internet'."""
    config = write_config(tmp_path_factory.mktemp("relay"), [module_sink.port])
    with Relay(config) as running:
        yield running


def simple(subject: str = "hello", body: str = "Hello there.\r\n") -> bytes:
    return (f"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.net>\r\n\r\n{body}").encode()



def strip_received(data: bytes) -> bytes:
    """The message as the client sent it: the trace fields the relay puts on top (its
    Authentication-Results, then its Received, each possibly folded) removed."""
    for name in (b"Authentication-Results: ", b"Received: "):
        assert data.startswith(name), (name, data[:80])
        end = 0
        while True:
            end = data.index(b"\r\n", end) + 2
            if data[end:end + 1] not in (b" ", b"\t"):
                data = data[end:]
                break
    return data


# ---- relay access ----------------------------------------------------------------------------

def test_relay_domain_from_untrusted_client_is_delivered(relay: Relay, sink: RecordingSink) -> None:
    answer = send(relay.port, simple())
    assert answer.ok
    [message] = sink.wait_for(1)
    assert message.recipients == ["bob@example.org"]
    assert strip_received(message.data) == simple()
    line = relay.wait_event("message", queue_id=answer.queue_id)       # the id the client was told
    assert line["verdict"] == "accepted" and line["recipients"] == ["bob@example.org"]


def test_foreign_domain_from_untrusted_client_is_refused_at_rcpt(relay: Relay, sink: RecordingSink) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("alice@example.net")
        code, text = client.rcpt("victim@evil.example.com")
        assert (code, text.split()[0]) == (554, b"5.7.1")
        assert client.rcpt("bob@example.org")[0] == 250   # the session goes on
        client.rset()
    assert sink.wait_for(1, timeout=0.5) == []


@pytest.mark.parametrize("address", [
    "user%evil.example.com@example.org",        # percent hack
    "evil.example.com!user@example.org",        # bang path
    "\"user@evil.example.com\"@example.org",    # quoted local part holding an @
    "@example.org:user@evil.example.com",       # source route
    "user@[192.0.2.1]",                  # IP literal
    "user@evil.example.com.",                   # trailing dot on a foreign domain
    "user@EVIL.test",                    # mixed case, foreign
])
def test_address_tricks_never_reach_a_foreign_domain(relay: Relay, sink: RecordingSink, address: str) -> None:
    with RawClient(relay.port) as client:
        client.read_reply()
        client.command("EHLO client.test")
        assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
        answer = client.command(f"RCPT TO:<{address}>")
        assert answer[0] == "5", answer
        assert client.command("DATA")[0] == "5"       # no recipient: no DATA
        client.command("QUIT")
    assert sink.wait_for(1, timeout=0.3) == []


def test_mixed_case_of_our_domain_is_normalised(relay: Relay, sink: RecordingSink) -> None:
    refused = send(relay.port, simple("case"), recipients=["Bob@Example.ORG", "carol@example.org."]).refused
    assert list(refused) == ["carol@example.org."]      # a trailing dot is refused, not guessed at
    [message] = sink.wait_for(1)
    assert message.recipients == ["Bob@example.org"]


def test_foreign_domain_from_trusted_network_is_delivered(sink: RecordingSink, tmp_path: Path) -> None:
    config = write_config(tmp_path, [sink.port], relay={"trusted_networks": ["127.0.0.0/8"]})
    with Relay(config) as trusted:
        assert send(trusted.port, simple("out"), sender="app@example.org", recipients=["someone@elsewhere.example.net"]).ok
    [message] = sink.wait_for(1)
    assert message.recipients == ["someone@elsewhere.example.net"]


def test_null_sender_is_accepted_for_bounces(relay: Relay, sink: RecordingSink) -> None:
    assert send(relay.port, simple("bounce"), sender="", recipients=["bob@example.org"]).ok
    [message] = sink.wait_for(1)
    assert message.sender == "<>"          # as the backend's aiosmtpd records "MAIL FROM:<>"


def test_a_sender_from_outside_without_a_fully_qualified_domain_is_refused(relay: Relay, sink: RecordingSink) -> None:
    # Shipped rule non-fqdn-sender (Postfix's reject_non_fqdn_sender): nothing could bounce to it.
    for sender, code in (("root@vm", "504"), ("a@example.net", "250"), ("u@[192.0.2.1]", "250"),
                         ("u@[IPv6:2001:db8::1]", "250")):
        with RawClient(relay.port) as client:
            client.read_reply()
            client.command("EHLO client.test")
            answer = client.command(f"MAIL FROM:<{sender}>")
        assert answer[:3] == code, (sender, answer)
    refused = relay.wait_event("refused", stage="mail", reason="rule non-fqdn-sender")
    assert refused["rules"] == ["non-fqdn-sender"]


def test_a_trusted_host_may_send_as_root_at_its_short_name(sink: RecordingSink, tmp_path: Path) -> None:
    config = write_config(tmp_path, [sink.port], relay={"trusted_networks": ["127.0.0.0/8"]})
    with Relay(config) as trusted:
        assert send(trusted.port, simple("cron"), sender="root@vm", recipients=["bob@example.org"]).ok
    assert sink.wait_for(1)[0].sender == "root@vm"


# ---- limits ------------------------------------------------------------------------------------

def test_oversize_message_gets_552_and_nothing_is_delivered(relay: Relay, sink: RecordingSink) -> None:
    big = simple("big", ("x" * 900 + "\r\n") * 1300)
    with RawClient(relay.port) as client:     # no SIZE= declared: the limit holds at DATA
        client.read_reply()
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@example.net>")
        client.command("RCPT TO:<bob@example.org>")
        assert client.command("DATA").startswith("354")
        client.send(big + b".\r\n")
        assert client.read_reply().startswith("552 5.3.4")
        assert client.command("NOOP").startswith("250")   # drained, and the session goes on
    assert sink.wait_for(1, timeout=0.3) == []


def test_declared_size_over_the_limit_is_refused_at_mail(relay: Relay) -> None:
    with RawClient(relay.port) as client:
        client.read_reply()
        assert "SIZE 1048576" in client.command("EHLO client.test")
        assert client.command("MAIL FROM:<alice@example.net> SIZE=2000000").startswith("552 5.3.4")


def test_recipients_past_the_limit_get_452(relay: Relay, sink: RecordingSink) -> None:
    recipients = [f"user{i}@example.org" for i in range(7)]
    refused = send(relay.port, simple("many"), recipients=recipients).refused
    assert sorted(refused) == ["user5@example.org", "user6@example.org"]
    assert all(code == 452 for code, _ in refused.values())
    [message] = sink.wait_for(1)
    assert message.recipients == recipients[:5]


def test_overlong_line_in_data_is_refused(relay: Relay, sink: RecordingSink) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.net", ["bob@example.org"], simple("long", "y" * 1200 + "\r\n"))
        assert refused.value.smtp_code == 500
    assert sink.wait_for(1, timeout=0.3) == []


# ---- SMTP smuggling ----------------------------------------------------------------------------

SMUGGLED = (b"From: alice@example.net\r\nSubject: outer\r\n\r\nouter body\r\n"
            b"\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")


def answer_to_data(client: RawClient, wire: bytes) -> str:
    """Greeting, EHLO, MAIL, RCPT and DATA, then `wire` sent as it is: the relay's reply to it."""
    client.read_reply()
    client.command("EHLO client.test")
    client.command("MAIL FROM:<alice@example.net>")
    client.command("RCPT TO:<bob@example.org>")
    assert client.command("DATA").startswith("354")
    client.send(wire)
    return client.read_reply()


@pytest.mark.parametrize("ending", [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n", b"\r\n.\r"])
def test_bare_newline_in_data_is_refused_and_nothing_is_smuggled(
        relay: Relay, sink: RecordingSink, ending: bytes) -> None:
    data = SMUGGLED.replace(b"\n.\r\n", ending, 1)
    with RawClient(relay.port) as client:
        answer = answer_to_data(client, data)
        assert answer.startswith("550 5.6.0"), answer
        assert client.command("NOOP").startswith("250")
    assert sink.wait_for(1, timeout=0.5) == []


@pytest.mark.parametrize("fault", [b"", b"\n", b"\r", b"\n.\r\nMAIL FROM:<c@example.org>"])
def test_a_long_base64_body_is_checked_to_the_last_line(relay: Relay, sink: RecordingSink, fault: bytes) -> None:
    """Runs of equal lines (a base64 body) are checked by their line ends, not line by line
    (smtp.data): a stray CR or LF in the middle of 200 KB of them is still refused, and the
    clean body arrives as sent. The fault overwrites bytes of a line, so every line end stays
    where the run puts it: only the check between them can see it."""
    encoded = base64.encodebytes(bytes(range(256)) * 600).replace(b"\n", b"\r\n")
    middle = len(encoded) // 2 + 5
    body = encoded[:middle] + fault + encoded[middle + len(fault):]
    assert len(body) == len(encoded)
    data = _base64_message(body)
    with RawClient(relay.port) as client:
        answer = answer_to_data(client, data + b".\r\n")
    if fault:
        assert answer.startswith("550 5.6.0"), answer
        assert sink.wait_for(1, timeout=0.5) == []
    else:
        assert answer.startswith("250"), answer
        assert sink.wait_for(1)[0].data.endswith(body)


def _base64_message(body: bytes) -> bytes:
    """A message whose whole body is one base64 attachment."""
    return (b"From: alice@example.net\r\nSubject: attachment\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body)


@pytest.fixture(params=["queue", "sync"])
def big_either_mode(request: pytest.FixtureRequest, sink: RecordingSink,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """The relay in each backend mode, taking messages of a few MB."""
    config = write_config(tmp_path_factory.mktemp(f"big-{request.param}"), [sink.port],
                          server={"max_message_size": "4MiB"},
                          backend={"servers": [f"127.0.0.1:{sink.port}"], "mode": request.param})
    with Relay(config) as running:
        yield running


@pytest.mark.parametrize("fault", [b"", b"\0"], ids=["clean", "nul"])
def test_nul_in_data_is_refused_even_deep_in_a_base64_run(
        big_either_mode: Relay, sink: RecordingSink, fault: bytes) -> None:
    """RFC 6152: 8BITMIME data holds no NUL (BINARYMIME is not offered), and a reader that
    stops at NUL sees another message than the one inspected. A NUL written over a base64 byte
    1.5 MB into the body keeps every line end where the run of equal lines puts them, so only
    DATA's per-block check can see it: refused like a bare newline, and the session goes on."""
    relay = big_either_mode
    encoded = base64.encodebytes(bytes(range(256)) * 8000).replace(b"\n", b"\r\n")
    at = 1_500_000
    body = encoded[:at] + fault + encoded[at + len(fault):]
    assert len(body) == len(encoded) and encoded[at:at + 1] not in (b"\r", b"\n")
    data = _base64_message(body)
    with RawClient(relay.port) as client:
        answer = answer_to_data(client, data + b".\r\n")
        if fault:
            assert answer.startswith("550 5.6.0"), answer
            assert client.command("NOOP").startswith("250")
        else:
            assert answer.startswith("250"), answer
    if fault:
        relay.wait_event("protocol_violation", what="NUL in DATA")
        assert sink.wait_for(1, timeout=0.5) == []
    else:
        assert sink.wait_for(1)[0].data.endswith(body)


def test_nul_in_a_text_line_is_refused(relay: Relay, sink: RecordingSink) -> None:
    """`run.js\\0.txt`: a C-string reader of the message sees a line (a name) cut short."""
    with RawClient(relay.port) as client:
        answer = answer_to_data(client, simple("nul", "see run.js\0.txt\r\n") + b".\r\n")
        assert answer.startswith("550 5.6.0"), answer
        assert client.command("NOOP").startswith("250")
    assert sink.wait_for(1, timeout=0.5) == []


def test_bare_lf_in_a_command_line_is_refused(relay: Relay, sink: RecordingSink) -> None:
    with RawClient(relay.port) as client:
        client.read_reply()
        client.send(b"EHLO client.test\nMAIL FROM:<alice@example.net>\r\n")
        assert client.read_reply().startswith("500 5.5.2")
        assert client.read_reply() == ""          # and the connection is closed


def test_pipelined_commands_after_the_terminator_are_read_as_commands(relay: Relay, sink: RecordingSink) -> None:
    with RawClient(relay.port) as client:
        client.read_reply()
        assert "PIPELINING" in client.command("EHLO client.test")
        client.send(b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        assert [client.read_reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        client.send(simple("first") + b".\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<carol@example.org>\r\n"
                    b"DATA\r\n")
        assert client.read_reply().startswith("250 2.0.0")
        assert [client.read_reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        client.send(simple("second") + b".\r\nQUIT\r\n")
        assert client.read_reply().startswith("250 2.0.0")
        assert client.read_reply().startswith("221")
    messages = sink.wait_for(2)
    assert [m.recipients for m in messages] == [["bob@example.org"], ["carol@example.org"]]


# ---- integrity --------------------------------------------------------------------------------

@pytest.fixture(params=["sync", "queue"])
def either_mode(request: pytest.FixtureRequest, sink: RecordingSink,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """The relay in each backend mode: the two forward through different code."""
    config = write_config(tmp_path_factory.mktemp(request.param), [sink.port],
                          backend={"servers": [f"127.0.0.1:{sink.port}"], "mode": request.param})
    with Relay(config) as running:
        yield running


def test_clean_messages_arrive_byte_identical_apart_from_received(either_mode: Relay, sink: RecordingSink) -> None:
    relay = either_mode
    long_header = "X-Long: " + " ".join(f"word{i}" for i in range(300))
    folded = "\r\n\t".join(long_header[i:i + 900] for i in range(0, len(long_header), 900))
    body = (
        "Ünïcödé body, 8-bit: \u00e9\u00e8\u00ea \u4e2d\u6587\r\n"
        + "." * 1 + "leading dot\r\n"
        + ".\r\n"                                       # a line that is only a dot
        + "..two dots\r\n"
        + "z" * 998 + "\r\n"                            # the longest line allowed
        + "\r\n" * 3
    ).encode("utf-8")
    binary_looking = bytes(range(32, 127)) * 8
    message = (
        b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: integrity\r\n"
        + folded.encode() + b"\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + body + b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=\"data.bin\"\r\n\r\n" + binary_looking + b"\r\n--b1--\r\n"
    )
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("alice@example.net", ["bob@example.org"], message, mail_options=["BODY=8BITMIME"])
    [received] = sink.wait_for(1)
    assert strip_received(received.data) == message


# ---- the backend ---------------------------------------------------------------------------------

def test_backend_refusing_one_recipient_is_told_to_the_client_at_rcpt(relay: Relay, sink: RecordingSink) -> None:
    refused = send(relay.port, simple("partial"), recipients=["bob@example.org", "rejectme@example.org"]).refused
    assert list(refused) == ["rejectme@example.org"] and refused["rejectme@example.org"][0] == 550
    [message] = sink.wait_for(1)
    assert message.recipients == ["bob@example.org"]


def test_backend_down_gives_4xx_and_the_same_message_succeeds_later(tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.start()
    port = sink.port
    sink.stop()                                              # the backend is down
    config = write_config(tmp_path, [port])
    with Relay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("alice@example.net")
            code, text = client.rcpt("bob@example.org")
            assert code == 451 and text.startswith(b"4.4.1")
        with RecordingSink(port=port) as back:               # the backend is back
            assert send(relay.port, simple("retry")).ok
            assert len(back.wait_for(1)) == 1


BACKEND_DATA_REPLIES = {
    # a refusal is passed on as one, in our words: never the backend's text or host
    "refused": ("554 5.6.0 internal-host.corp says no", 554, "rejected"),
    # a 503 says the backend's session is not ours: passed on as 5xx, the client would bounce
    "out-of-step": ("503 5.5.1 internal-host.corp: need RCPT command", 451, "tempfailed"),
}


@pytest.mark.parametrize("case", sorted(BACKEND_DATA_REPLIES))
def test_backend_reply_to_data_is_passed_on_by_class_without_its_text(tmp_path: Path, case: str) -> None:
    from tests.harness import SinkBehaviour

    backend_reply, code, verdict = BACKEND_DATA_REPLIES[case]
    with RecordingSink(behaviour=SinkBehaviour(data_reply=backend_reply)) as sink:
        with Relay(write_config(tmp_path, [sink.port])) as relay:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail("alice@example.net", ["bob@example.org"], simple(case))
            assert refused.value.smtp_code == code, refused.value
            assert b"internal-host" not in refused.value.smtp_error
            assert relay.wait_event("message", verdict=verdict)["delivery"].count("internal-host") == 1


def test_second_backend_is_used_when_the_first_is_down(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        dead = RecordingSink().start()
        dead_port = dead.port
        dead.stop()
        with Relay(write_config(tmp_path, [dead_port, sink.port])) as relay:
            assert send(relay.port, simple("failover")).ok
        assert len(sink.wait_for(1)) == 1


# ---- the process ------------------------------------------------------------------------------

def test_sigterm_stops_gracefully(sink: RecordingSink, tmp_path: Path) -> None:
    """Issue 21: listeners close at once; a session between transactions is told 421 4.3.2 and
    closed; one inside a transaction finishes it first. The old process went on serving open
    sessions for as long as their clients kept sending."""
    relay = Relay(write_config(tmp_path, [sink.port])).start()
    with RawClient(relay.port) as idle, RawClient(relay.port) as busy:
        idle.read_reply()
        busy.read_reply()
        idle.command("EHLO client.test")
        busy.command("EHLO client.test")
        assert busy.command("MAIL FROM:<alice@example.net>").startswith("250")
        assert busy.command("RCPT TO:<bob@example.org>").startswith("250")
        relay.signal(15)
        relay.wait_event("stopping")
        assert idle.read_reply().startswith("421 4.3.2")
        assert idle.read_reply() == ""                          # and closed
        assert busy.command("DATA").startswith("354")           # the transaction goes on
        assert busy.command("Subject: last one\r\n\r\nbody\r\n.").startswith("250")
        assert busy.read_reply().startswith("421 4.3.2")       # then it is told, and closed
        assert busy.read_reply() == ""
    assert relay.proc is not None and relay.proc.wait(15) == 0
    assert relay.stop() == 0
    assert relay.events("stopped")
    assert [m for m in sink.messages if b"last one" in m.data]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_check_names_file_and_key_of_a_misspelt_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nhostname = "mx.test"\nmax_mesage_size = "10MiB"\n'
                      '[backend]\nservers = ["127.0.0.1:2526"]\n[rules]\ndir = "%s"\n' % (REPO / "rules"))
    result = run_cli("check", "--config", str(config))
    assert result.returncode != 0
    assert f"{config}: server.max_mesage_size: unknown key (did you mean 'max_message_size'?)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_with_a_bad_config_exits_with_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nlisten = ["nowhere"]\n[backend]\nservers = []\nmode = "fast"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"frontfilter: {config}: ") for line in lines)
    assert "Traceback" not in result.stderr


def test_check_accepts_the_shipped_configs() -> None:
    for config in ("dev/frontfilter.toml", "deploy/frontfilter.example.toml"):
        result = run_cli("check", "--config", config, "--rules", "rules")
        assert result.returncode == 0, result.stderr


# ---- replies carry enhanced status codes ---------------------------------------------------------

def test_every_reply_but_the_greeting_and_ehlo_carries_an_enhanced_code(relay: Relay) -> None:
    """EHLO advertises ENHANCEDSTATUSCODES (RFC 2034): aiosmtpd's own replies must keep that
    promise too, and a command line too long is answered, not taken for smuggling."""
    with RawClient(relay.port) as client:
        assert client.read_reply().startswith("220 ")
        replies = [client.command(line) for line in (
            "NOOP", "MAIL FROM:<a@b.example>", "EHLO client.test", "RCPT TO:<b@example.org>",
            "MAIL FROM:<a@b.example> FOO=BAR", "EHLO", "X" * 1500, "NOOP", "RSET", "QUIT")]
    ehlo = replies.pop(2)
    assert "ENHANCEDSTATUSCODES" in ehlo
    for answer in replies:
        assert re.match(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} ", answer), answer
    assert replies[5] == "500 5.5.6 Line too long"        # and the session goes on:
    assert replies[6:] == ["250 2.0.0 OK", "250 2.0.0 OK", "221 2.0.0 Bye"]
