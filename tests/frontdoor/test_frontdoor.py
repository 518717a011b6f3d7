"""The front door over real loopback SMTP: STARTTLS, implicit TLS, AUTH (swaks), listener roles,
PROXY protocol, and TLS handshakes that go wrong.

One relay serves most tests, with four listeners:
- mx: STARTTLS offered, AUTH optional (port 25's role);
- submission: TLS and AUTH required (port 587's role);
- smtps: implicit TLS, AUTH required (port 465's role);
- proxied: behind a load balancer (PROXY header from 127.0.0.1 only).
Loopback is not a trusted network, so every client here is "the internet" unless it logs in.
"""

from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.frontdoor.helpers import (Pki, connect_from, frontdoor_config, make_pki, needs_swaks,
                                     proxy_v2, read_reply, scrape, swaks, write_users)
from tests.harness import REPO, RawClient, RecordingSink, Relay, queue_id_in

PASSWORD = "correct horse battery"

# A rule that can only match if the rules see the address from the PROXY header.
PROXY_RULE = '''
[[rule]]
name = "frontdoor-test-proxied-client"
stage = "rcpt"
client.ip = ["203.0.113.66"]
action = "reject"
reply = "554 5.7.1 Refused for the proxied client"
'''


@dataclass
class Door:
    relay: Relay
    sink: RecordingSink
    pki: Pki
    mx: int
    submission: int
    smtps: int
    proxied: int
    metrics: int
    proxied_tls: int
    users: Path


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    base = tmp_path_factory.mktemp("door")
    pki = make_pki(base / "tls")
    users = write_users(base / "users", {"alice": PASSWORD})
    rules = base / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "90-frontdoor-test.toml").write_text(PROXY_RULE)
    with RecordingSink() as sink:
        config = frontdoor_config(
            base, [sink.port],
            listeners=[
                {"name": "mx", "address": "127.0.0.1:0", "auth": "optional"},
                {"name": "submission", "address": "127.0.0.1:0", "require_tls": True, "auth": "required"},
                {"name": "smtps", "address": "127.0.0.1:0", "tls": "implicit", "auth": "required"},
                {"name": "proxied", "address": "127.0.0.1:0", "proxy_protocol": True, "tls": "none"},
                {"name": "proxied-smtps", "address": "127.0.0.1:0", "proxy_protocol": True, "tls": "implicit"},
            ],
            rules={"dir": str(rules), "watch": False},
            relay={"domains": ["example.org"], "trusted_networks": ["203.0.113.0/28"]},
            tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
            auth={"users_file": str(users), "failure_delay": "50ms", "max_failures": 1000},
            limits={"max_connections_per_ip": 100, "connection_rate_per_ip": 0},
            proxy={"networks": ["127.0.0.1/32"], "timeout": "5s"},
            metrics={"listen": "127.0.0.1:0"},
        )
        with Relay(config) as relay:
            port = relay.port_of        # each listener's, as the relay reported them
            yield Door(relay, sink, pki, port("mx"), port("submission"), port("smtps"), port("proxied"),
                       relay.http_port, port("proxied-smtps"), users=users)


@pytest.fixture(autouse=True)
def _clean(door: Door) -> None:
    door.sink.messages.clear()


def message(subject: str) -> bytes:
    return (f"From: alice@example.org\r\nTo: someone@foreign.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\nHello.\r\n").encode()


def plain_auth(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def tls_client(door: Door, port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=15)
    client.ehlo("client.test")
    client.starttls(context=door.pki.client_context())
    client.ehlo("client.test")
    return client


# ---- AUTH with swaks ------------------------------------------------------------------------

@needs_swaks
def test_swaks_with_good_credentials_relays_to_a_foreign_domain(door: Door) -> None:
    done = swaks("--server", "127.0.0.1", "--port", str(door.mx), "--tls", "--auth", "PLAIN",
                 "--auth-user", "alice", "--auth-password", PASSWORD, "--ehlo", "client.test",
                 "--from", "alice@example.org", "--to", "someone@foreign.example",
                 "--header", "Subject: swaks relay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0" in done.stdout
    [received] = door.sink.wait_for(1)
    assert received.recipients == ["someone@foreign.example"]
    assert b"with ESMTPSA" in received.data.split(b"\r\n\r\n")[0]     # RFC 3848: TLS + AUTH
    line = door.relay.wait_event("message", queue_id=queue_id_in(
        next(l for l in done.stdout.splitlines() if "queued as" in l)))
    assert line["verdict"] == "accepted" and line["auth_user"] == "alice"
    assert line["tls"] is True and line["recipients"] == ["someone@foreign.example"]
    door.relay.wait_event("auth", result="success", user="alice", mechanism="PLAIN")


@needs_swaks
def test_swaks_with_bad_credentials_gets_535_and_nothing_is_relayed(door: Door) -> None:
    done = swaks("--server", "127.0.0.1", "--port", str(door.mx), "--tls", "--auth", "PLAIN",
                 "--auth-user", "alice", "--auth-password", "not the password",
                 "--from", "alice@example.org", "--to", "someone@foreign.example")
    assert done.returncode != 0
    assert "535 5.7.8" in done.stdout
    assert door.sink.wait_for(1, timeout=0.5) == []
    door.relay.wait_event("auth", result="failure", user="alice")
    assert not any("not the password" in line for line in door.relay.raw_stderr)


@needs_swaks
def test_swaks_login_over_implicit_tls(door: Door) -> None:
    done = swaks("--server", "127.0.0.1", "--port", str(door.smtps), "--tls-on-connect",
                 "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", PASSWORD,
                 "--from", "alice@example.org", "--to", "someone@foreign.example",
                 "--header", "Subject: implicit tls")
    assert done.returncode == 0, done.stdout + done.stderr
    assert door.sink.wait_for(1)[0].recipients == ["someone@foreign.example"]
    door.relay.wait_event("auth", result="success", user="alice", mechanism="LOGIN")


def test_unknown_user_is_refused_and_not_named_in_the_log(door: Door) -> None:
    with tls_client(door, door.mx) as client:
        code, text = client.docmd("AUTH", "PLAIN " + plain_auth("s3cretTypedAsUser", "x"))
        assert (code, text.split()[0]) == (535, b"5.7.8")
    line = door.relay.wait_event("auth", result="failure", unknown_user=True)
    assert line["user"] is None
    assert not any("s3cretTypedAsUser" in raw for raw in door.relay.raw_stderr)


def test_auth_before_starttls_is_refused_and_not_offered(door: Door) -> None:
    with RawClient(door.mx) as client:
        client.read_reply()
        ehlo = client.command("EHLO client.test")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo
        assert client.command("AUTH PLAIN " + plain_auth("alice", PASSWORD)).startswith("538 5.7.11")
        assert client.command("MAIL FROM:<alice@example.org>").startswith("250")
        assert client.command("RCPT TO:<someone@foreign.example>").startswith("554 5.7.1")


def test_auth_is_offered_inside_tls_only_where_the_listener_offers_it(door: Door) -> None:
    with tls_client(door, door.mx) as client:
        assert client.has_extn("auth") and client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not client.has_extn("starttls")
    with RawClient(door.proxied) as raw:
        raw.send(proxy_v2("203.0.113.9", 4000))
        raw.read_reply()
        assert "AUTH" not in raw.command("EHLO client.test")
        assert raw.command("AUTH PLAIN " + plain_auth("alice", PASSWORD)).startswith("503 5.5.1")


def test_auth_exchanges_by_challenge_and_their_refusals(door: Door) -> None:
    with tls_client(door, door.mx) as client:
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504
        assert client.docmd("AUTH", "PLAIN")[0] == 334                  # no initial response
        assert client.docmd("*")[:2] == (501, b"5.7.0 Auth aborted")
        assert client.docmd("AUTH", "PLAIN not-base64!")[0] == 501
        # Acting for another user (authzid) is not offered: a failure, never a success.
        other = base64.b64encode(f"bob\0alice\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", "PLAIN " + other)[0] == 535
        assert client.docmd("AUTH", "LOGIN")[1] == base64.b64encode(b"Username:")
        assert client.docmd(base64.b64encode(b"alice").decode())[1] == base64.b64encode(b"Password:")
        assert client.docmd(base64.b64encode(PASSWORD.encode()).decode()) == (
            235, b"2.7.0 Authentication successful")
        assert client.docmd("AUTH", "PLAIN " + plain_auth("alice", PASSWORD))[0] == 503
    with tls_client(door, door.mx) as client:
        client.mail("alice@example.org")
        assert client.docmd("AUTH", "PLAIN " + plain_auth("alice", PASSWORD)) == (
            503, b"5.5.1 AUTH not permitted during a mail transaction")


# ---- the submission listener ------------------------------------------------------------------

def test_submission_refuses_mail_without_tls(door: Door) -> None:
    with RawClient(door.submission) as client:
        client.read_reply()
        client.command("EHLO client.test")
        assert client.command("MAIL FROM:<alice@example.org>").startswith("530 5.7.0 Must issue a STARTTLS")
    door.relay.wait_event("refused", stage="mail", reason="listener submission requires TLS before MAIL")


def test_submission_refuses_mail_without_auth_then_relays_once_logged_in(door: Door) -> None:
    with tls_client(door, door.submission) as client:
        code, text = client.mail("alice@example.org")
        assert (code, text) == (530, b"5.7.0 Authentication required")
        client.login("alice", PASSWORD)
        client.sendmail("alice@example.org", ["someone@foreign.example"], message("submission"))
    assert door.sink.wait_for(1)[0].recipients == ["someone@foreign.example"]


def test_implicit_tls_verifies_with_the_configured_certificate(door: Door) -> None:
    with socket.create_connection(("127.0.0.1", door.smtps), timeout=10) as raw:
        with door.pki.client_context().wrap_socket(raw, server_hostname="mx.test") as tls:
            assert read_reply(tls).startswith("220 mx.test")
            assert tls.version() in ("TLSv1.2", "TLSv1.3")



def test_a_client_ending_tls_ends_the_session(door: Door) -> None:
    # close_notify is the client's last word: the relay answers with its own and closes,
    # rather than waiting on a dead session until command_timeout.
    with socket.create_connection(("127.0.0.1", door.smtps), timeout=10) as raw:
        with door.pki.client_context().wrap_socket(raw, server_hostname="mx.test") as tls:
            assert read_reply(tls).startswith("220 mx.test")
            plain = tls.unwrap()        # sends close_notify, waits for the relay's
            assert plain.recv(1024) == b""

# ---- PROXY protocol -------------------------------------------------------------------------

def test_proxy_v2_from_the_load_balancer_gives_policy_and_log_the_real_client(door: Door) -> None:
    with RawClient(door.proxied) as client:
        client.send(proxy_v2("203.0.113.7", 40000))
        assert client.read_reply().startswith("220 ")
        client.command("EHLO client.test")
        assert client.command("MAIL FROM:<alice@example.org>").startswith("250")
        # 203.0.113.0/28 is a trusted network: only the header's address may relay out.
        assert client.command("RCPT TO:<someone@foreign.example>").startswith("250")
        assert client.command("DATA").startswith("354")
        answer = client.command(message("proxied").replace(b"\r\n.", b"\r\n..") + b".")
        assert answer.startswith("250")
    assert door.sink.wait_for(1)[0].recipients == ["someone@foreign.example"]
    line = door.relay.wait_event("message", queue_id=queue_id_in(answer))
    assert (line["verdict"], line["client"]) == ("accepted", "203.0.113.7:40000")
    assert line["recipients"] == ["someone@foreign.example"]


def test_rules_see_the_address_from_the_proxy_header(door: Door) -> None:
    with RawClient(door.proxied) as client:
        client.send(proxy_v2("203.0.113.66", 40001))
        client.read_reply()
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@example.org>")
        assert client.command("RCPT TO:<bob@example.org>") == "554 5.7.1 Refused for the proxied client"
    line = door.relay.wait_event("refused", client="203.0.113.66:40001")
    assert line["rules"] == ["frontdoor-test-proxied-client"]


def test_proxy_header_from_anywhere_else_is_refused(door: Door) -> None:
    # From 127.0.0.2, which is not in proxy.networks: closed before any greeting.
    with connect_from("127.0.0.2", door.proxied) as sock:
        sock.sendall(proxy_v2("203.0.113.7", 40002))
        assert read_reply(sock) == ""
    door.relay.wait_event("connection_refused", result="refused_proxy", reason="not from proxy.networks")
    # On a listener that expects no header, a PROXY line is an unknown command, not believed.
    with RawClient(door.mx) as client:
        client.read_reply()
        assert client.command("PROXY TCP4 203.0.113.7 127.0.0.1 40003 25")[:3] == "500"
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@example.org>")
        assert client.command("RCPT TO:<someone@foreign.example>").startswith("554 5.7.1")


def test_proxy_listener_without_a_valid_header_closes(door: Door) -> None:
    with RawClient(door.proxied) as client:
        client.send(b"EHLO client.test\r\n")
        assert client.read_reply() == ""
    door.relay.wait_event("connection_refused", result="refused_proxy", reason="no PROXY header")


class BioClient:
    """TLS over a socket by hand, so the PROXY header and the ClientHello share one packet."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, header: bytes):
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="mx.test")
        self._step(self.tls.do_handshake, first=header)

    def _step(self, call, first: bytes = b""):  # type: ignore[no-untyped-def]
        while True:
            try:
                result = call()
            except ssl.SSLWantReadError:
                result = None
            else:
                self.sock.sendall(first + self.outgoing.read())
                return result
            self.sock.sendall(first + self.outgoing.read())
            first = b""
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.incoming.write(chunk)

    def reply(self) -> str:
        data = b""
        while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] != b" ":
            data += self._step(lambda: self.tls.read(65536))
        return data.decode()

    def command(self, line: str) -> str:
        self.tls.write(line.encode() + b"\r\n")
        self.sock.sendall(self.outgoing.read())
        return self.reply()


def test_proxy_header_then_implicit_tls_in_one_packet(door: Door) -> None:
    with socket.create_connection(("127.0.0.1", door.proxied_tls), timeout=10) as sock:
        client = BioClient(sock, door.pki.client_context(), proxy_v2("203.0.113.8", 40010))
        assert client.reply().startswith("220 mx.test")
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@example.org>")
        assert client.command("RCPT TO:<someone@foreign.example>").startswith("250")   # trusted /28
        client.command("QUIT")


# ---- TLS handshakes that go wrong -----------------------------------------------------------

CLIENT_HELLO_START = bytes.fromhex("16030100c8010000c40303") + b"\x11" * 20   # cut short


def _dropped(door: Door, sock: socket.socket) -> str:
    client = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    door.relay.wait_event("connection_refused", result="tls_failed", client=client)
    return client


def test_client_dropping_mid_handshake_costs_one_log_line(door: Door) -> None:
    clients = []
    with RawClient(door.mx) as starttls:            # STARTTLS, then half a ClientHello
        starttls.read_reply()
        starttls.command("EHLO client.test")
        assert starttls.command("STARTTLS").startswith("220 2.0.0")
        starttls.send(CLIENT_HELLO_START)
        clients.append(_dropped(door, starttls.sock))
    implicit = socket.create_connection(("127.0.0.1", door.smtps), timeout=10)
    implicit.sendall(CLIENT_HELLO_START)
    clients.append(_dropped(door, implicit))
    plaintext = socket.create_connection(("127.0.0.1", door.smtps), timeout=10)
    plaintext.sendall(b"EHLO client.test\r\n")      # SMTP where TLS was expected
    clients.append(_dropped(door, plaintext))

    # The server keeps serving ...
    with tls_client(door, door.mx) as client:
        client.login("alice", PASSWORD)
        client.sendmail("alice@example.org", ["someone@foreign.example"], message("after drops"))
    assert len(door.sink.wait_for(1)) == 1
    # ... and each dropped client left exactly one line, no traceback, no internal error.
    for client in clients:
        assert [line["event"] for line in door.relay.lines if client in str(line)] == ["connection_refused"]
    assert not any("Traceback" in line for line in door.relay.raw_stderr)
    assert door.relay.events("internal_error") == []
    reasons = {line["reason"] for line in door.relay.events("connection_refused")
               if line.get("result") == "tls_failed"}
    assert any(reason.startswith("tls error:") for reason in reasons)


def test_commands_pipelined_after_starttls_are_discarded(door: Door) -> None:
    with RawClient(door.mx) as client:
        client.read_reply()
        client.command("EHLO client.test")
        client.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
        assert client.read_reply().startswith("220 2.0.0")
        context = door.pki.client_context()
        with context.wrap_socket(client.sock, server_hostname="mx.test") as tls:
            tls.sendall(b"RCPT TO:<bob@example.org>\r\n")
            assert read_reply(tls).startswith("503")   # the injected MAIL never happened
            tls.sendall(b"QUIT\r\n")
            read_reply(tls)
    door.relay.wait_event("protocol_violation", what="commands pipelined after STARTTLS discarded")


# ---- metrics --------------------------------------------------------------------------------

def test_front_door_metrics_move(door: Door) -> None:
    with tls_client(door, door.mx) as client:
        client.login("alice", PASSWORD)
    with connect_from("127.0.0.3", door.proxied) as sock:
        client = f"127.0.0.3:{sock.getsockname()[1]}"
        assert read_reply(sock) == ""
    door.relay.wait_event("connection_refused", result="refused_proxy", client=client)
    samples = scrape(door.metrics)
    expiry = x509.load_pem_x509_certificate(door.pki.cert_file.read_bytes()).not_valid_after_utc.timestamp()
    for listener in ("mx", "submission", "smtps", "proxied-smtps"):     # every listener serving TLS
        assert samples[f'frontfilter_tls_certificate_expiry_timestamp_seconds{{listener="{listener}"}}'] == expiry
    assert 'frontfilter_tls_certificate_expiry_timestamp_seconds{listener="proxied"}' not in samples
    assert samples['frontfilter_auth_attempts_total{result="success"}'] >= 1
    assert samples['frontfilter_connections_total{result="refused_proxy"}'] >= 1
    assert samples['frontfilter_tls_sessions_total{direction="inbound",version="TLSv1.3"}'] >= 1
