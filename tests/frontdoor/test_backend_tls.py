"""TLS to the backend: required STARTTLS with a test CA and verified names; opportunistic."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.frontdoor.helpers import Pki, TlsRecordingSink, make_pki, scrape
from tests.harness import Answer, RecordingSink, Relay, send, write_config

MESSAGE = b"From: a@example.net\r\nTo: bob@example.org\r\nSubject: to the backend\r\n\r\nHi.\r\n"


@pytest.fixture(scope="module")
def backend_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # The backend is addressed as 127.0.0.1 but its certificate names backend.test (and the IP).
    return make_pki(tmp_path_factory.mktemp("backend-pki"), "backend.test", "127.0.0.1", prefix="backend")


@contextmanager
def relay_to(tmp_path: Path, sink: RecordingSink, **backend: Any) -> Iterator[tuple[Relay, int]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_path, [sink.port], backend={"servers": [f"127.0.0.1:{sink.port}"], **backend},
                          metrics={"listen": "127.0.0.1:0"})
    with Relay(config) as relay:
        yield relay, relay.http_port


def send_one(port: int) -> Answer:
    return send(port, MESSAGE, sender="a@example.net", timeout=15)


def test_backend_requiring_starttls_with_a_test_ca_and_verification(tmp_path: Path, backend_pki: Pki) -> None:
    with TlsRecordingSink(backend_pki) as sink, relay_to(
            tmp_path, sink, tls="required", tls_ca_file=str(backend_pki.ca_file),
            tls_verify_name="backend.test") as (relay, metrics):
        assert send_one(relay.port).code == 250
        [received] = sink.wait_for(1)
        assert received.recipients == ["bob@example.org"] and sink.tls_flags == [True]
        relay.wait_event("message", verdict="accepted")
        assert scrape(metrics)['frontfilter_tls_sessions_total{direction="outbound",version="TLSv1.3"}'] >= 1


def test_verification_by_ip_address_when_no_name_is_set(tmp_path: Path, backend_pki: Pki) -> None:
    with TlsRecordingSink(backend_pki) as sink, relay_to(
            tmp_path, sink, tls="required", tls_ca_file=str(backend_pki.ca_file)) as (relay, _):
        assert send_one(relay.port).code == 250
        assert sink.tls_flags == [True]


@pytest.mark.parametrize("case, expected", [
    ("other CA", "certificate not verified"),
    ("wrong name", "certificate not verified"),
])
def test_unverifiable_backend_gets_nothing(tmp_path: Path, backend_pki: Pki, case: str, expected: str) -> None:
    ca_file = make_pki(tmp_path / "other", prefix="other").ca_file if case == "other CA" else backend_pki.ca_file
    name = "mail.elsewhere.test" if case == "wrong name" else "backend.test"
    with TlsRecordingSink(backend_pki) as sink, relay_to(
            tmp_path, sink, tls="required", tls_ca_file=str(ca_file), tls_verify_name=name) as (relay, _):
        answer = send_one(relay.port)
        assert (answer.stage, answer.code, answer.text.split()[0]) == ("rcpt", 451, "4.4.1")   # the client retries
        assert "unavailable" in answer.text and "rejected" not in answer.text   # nothing was refused
        assert sink.wait_for(1, timeout=0.5) == []
        line = relay.wait_event("forward_failed")
        assert expected in line["detail"]


class NoSharedCipherSink(TlsRecordingSink):
    """A backend that offers STARTTLS but cannot finish a handshake with us: TLS 1.2 with PSK
    ciphers only, like an old or misconfigured backend. Plain SMTP is welcome."""

    def smtp_options(self) -> dict[str, Any]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert_file, self.pki.key_file)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("PSK")
        return {"tls_context": context}


@pytest.mark.parametrize("mode", ["queue", "sync"])
def test_opportunistic_tls_whose_handshake_fails_delivers_in_plain_text(tmp_path: Path, backend_pki: Pki,
                                                                         mode: str) -> None:
    """As Postfix's `may` level: a failed handshake is followed at once by the same backend in
    plain text, not by TLS tried again until the message bounces. (The default is opportunistic.)"""
    with NoSharedCipherSink(backend_pki) as sink, relay_to(tmp_path, sink, mode=mode) as (relay, _):
        assert send_one(relay.port).code == 250
        assert sink.wait_for(1) and sink.tls_flags == [False]
        assert "handshake" in relay.wait_event("backend_tls_plaintext")["reason"]


def test_required_tls_whose_handshake_fails_delivers_nothing(tmp_path: Path, backend_pki: Pki) -> None:
    with NoSharedCipherSink(backend_pki) as sink, relay_to(
            tmp_path, sink, tls="required", tls_ca_file=str(backend_pki.ca_file), tls_verify_name="backend.test") as (relay, _):
        assert send_one(relay.port).code == 451
        assert sink.wait_for(1, timeout=0.5) == []
        assert "handshake" in relay.wait_event("forward_failed")["detail"]
        assert relay.events("backend_tls_plaintext") == []


def test_required_tls_to_a_backend_without_starttls_delivers_nothing(tmp_path: Path) -> None:
    with RecordingSink() as sink, relay_to(tmp_path, sink, tls="required") as (relay, _):
        assert send_one(relay.port).code == 451
        assert sink.wait_for(1, timeout=0.5) == []
        assert "does not offer STARTTLS" in relay.wait_event("forward_failed")["detail"]


def test_opportunistic_uses_tls_when_offered_and_plain_otherwise(tmp_path: Path, backend_pki: Pki) -> None:
    with TlsRecordingSink(backend_pki) as sink, relay_to(tmp_path / "a", sink, tls="opportunistic") as (relay, _):
        assert send_one(relay.port).code == 250
        assert sink.wait_for(1) and sink.tls_flags == [True]
    with RecordingSink() as plain, relay_to(tmp_path / "b", plain, tls="opportunistic") as (relay, _):
        assert send_one(relay.port).code == 250
        assert len(plain.wait_for(1)) == 1


@pytest.mark.parametrize("mode", ["queue", "sync"])
def test_by_default_starttls_is_used_when_the_backend_offers_it(tmp_path: Path, backend_pki: Pki, mode: str) -> None:
    """Issue 4: outbound STARTTLS when the backend offers it, with no backend.tls written."""
    with TlsRecordingSink(backend_pki) as sink, relay_to(tmp_path, sink, mode=mode) as (relay, _):
        assert send_one(relay.port).code == 250
        assert sink.wait_for(1) and sink.tls_flags == [True]
