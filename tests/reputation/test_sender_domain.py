"""The sender's domain in DNS (Postfix's reject_unknown_sender_domain), on a running relay with
the shipped rules and a real DNS server on loopback (tests/reputation/dnsserver.py).

With `[dns] check_sender_domain = true` the shipped rule unknown-sender-domain defers (450
4.1.8) a sender whose domain does not exist, has no MX, A or AAAA record, or only the null MX;
a domain with an MX, or with an address only (the implicit MX), passes; a lookup that fails
decides nothing. Off (the default), no lookup is made at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO, RawClient, RecordingSink, Relay, write_config
from tests.reputation.dnsserver import DnsServer

DEFERRED = "450 4.1.8 Sender address rejected: Domain not found"


def zone() -> DnsServer:
    server = DnsServer()
    server.add("has-mx.example", "MX", "10 mx.has-mx.example.")
    server.add("has-address.example", "A", "192.0.2.10")
    server.add("null-mx.example", "MX", "0 .")
    server.txt("no-mail.example", "v=spf1 -all")           # the name exists, with no MX, A or AAAA
    server.servfail.add("broken.example")
    return server


def mail_from(port: int, sender: str) -> str:
    with RawClient(port) as client:
        assert client.read_reply().startswith("220 ")
        assert client.command("EHLO client.example").startswith("250")
        return client.command(f"MAIL FROM:<{sender}>")


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with zone() as server:
        yield server


@pytest.fixture(scope="module")
def relay(dns: DnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    base = tmp_path_factory.mktemp("sender-domain")
    with RecordingSink() as sink:
        config = write_config(base, [sink.port], rules_dir=REPO / "rules",
                              dns={"resolvers": [dns.address], "timeout": "2s", "check_sender_domain": True})
        with Relay(config) as running:
            yield running


@pytest.mark.parametrize(("sender", "answer"), [
    ("alice@has-mx.example", "250 2.1.0 Sender OK"),
    ("alice@has-address.example", "250 2.1.0 Sender OK"),        # no MX: the implicit MX
    ("alice@nowhere.example", DEFERRED),                          # NXDOMAIN
    ("alice@no-mail.example", DEFERRED),                          # no MX, A or AAAA
    ("alice@null-mx.example", DEFERRED),                          # RFC 7505: takes no mail
    ("alice@broken.example", "250 2.1.0 Sender OK"),              # SERVFAIL: decides nothing
    ("", "250 2.1.0 Sender OK"),                               # bounces are never looked up
])
def test_the_shipped_rule_defers_senders_whose_domain_takes_no_mail(relay: Relay, sender: str, answer: str) -> None:
    assert mail_from(relay.port, sender).split(" [")[0] == answer


def test_a_failed_lookup_is_logged_and_the_null_sender_is_never_looked_up(relay: Relay, dns: DnsServer) -> None:
    mail_from(relay.port, "bob@broken.example")
    assert relay.wait_event("sender_domain_unknown", domain="broken.example")["detail"].startswith("MX: ")
    mail_from(relay.port, "")
    assert all(name for name, _ in dns.asked())     # no query for an empty domain


def test_without_the_switch_no_lookup_is_made(dns: DnsServer, tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], rules_dir=REPO / "rules",
                              dns={"resolvers": [dns.address], "timeout": "2s"})
        with Relay(config) as running:
            assert mail_from(running.port, "carol@quiet-nowhere.example").startswith("250")
    assert dns.asked("quiet-nowhere.example") == []
