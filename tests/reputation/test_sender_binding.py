"""Domain-bound relaying: the sender map, outbound senders in our own domains, anti-spoofing.

Over real SMTP with STARTTLS and AUTH (the front door's), and as pure functions.
"""

from __future__ import annotations

import signal
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from frontfilter import policy
from frontfilter.config import ConfigError, OutboundSenders, RelayConfig, load_config
from frontfilter.model import Peer, SessionFacts
from frontfilter.policy.sendermap import SenderMapError, parse_sender_map
from tests.frontdoor.helpers import Pki, connect_from, frontdoor_config, make_pki, read_reply, write_users
from tests.harness import RecordingSink, Relay, eventually, queue_id_in, write_config

PASSWORD = "correct horse battery"

SENDER_MAP = """\
# login: the senders it may use
alice: alice@example.org, *@sales.example.org
"""


# ---- the map and the policy, pure ------------------------------------------------------------

def test_sender_map_entries_and_defaults() -> None:
    senders = parse_sender_map(SENDER_MAP + "webshop: noreply@example.org  orders@example.org\n", "senders")
    assert senders.allows("alice", "alice@example.org")
    assert senders.allows("alice", "Alice@example.org")          # no case tricks around the map
    assert senders.allows("alice", "anyone@sales.example.org")
    assert not senders.allows("alice", "bob@example.org")
    assert not senders.allows("alice", "alice@example.org.evil.example")
    assert senders.allows("webshop", "orders@example.org")
    assert senders.allows("alice", "")                           # bounces are always allowed
    # Not in the map: a login that is an address may send as itself, any other login as nothing.
    assert senders.allows("bob@example.org", "bob@example.org")
    assert not senders.allows("bob@example.org", "alice@example.org")
    assert not senders.allows("carol", "carol@example.org")


def test_sender_map_errors_name_file_and_line() -> None:
    with pytest.raises(SenderMapError) as error:
        parse_sender_map("alice alice@example.org\nbob: not-an-address\nalice: x@example.org\n"
                         "alice: y@example.org\ncarol:\n", "/etc/frontfilter/senders")
    assert error.value.problems == [
        "/etc/frontfilter/senders:1: expected \"login: sender, sender ...\"",
        "/etc/frontfilter/senders:2: 'not-an-address' is not an address or *@domain",
        "/etc/frontfilter/senders:4: login 'alice' appears twice",
        "/etc/frontfilter/senders:5: login 'carol' has no sender (remove the line to use the default)",
    ]


def _config(tmp_path: Path, **relay: object) -> object:
    return load_config(write_config(tmp_path, [25], relay={"domains": ["example.org"], **relay}))


def test_outbound_senders_must_be_ours_when_configured(tmp_path: Path) -> None:
    config = _config(tmp_path, outbound_senders="own_domains", sender_domains=["example.org", "sales.example.org"])
    assert isinstance(config.relay, RelayConfig) and config.relay.outbound_senders is OutboundSenders.OWN_DOMAINS

    def verdict(sender: str, recipient: str) -> object:
        parsed_sender = policy.parse_sender(sender, False)
        parsed_recipient = policy.parse_recipient(recipient, False)
        assert isinstance(parsed_sender, policy.Address) and isinstance(parsed_recipient, policy.Address)
        return policy.may_relay_out_as(parsed_sender, parsed_recipient, config)

    assert verdict("app@example.org", "someone@foreign.example") is None
    assert verdict("app@Sales.Example.org", "someone@foreign.example") is None
    assert verdict("", "someone@foreign.example") is None                      # bounces go out
    assert verdict("someone@gmail.example", "bob@example.org") is None         # inbound: not concerned
    assert verdict("someone@gmail.example", "x@foreign.example") == policy.SENDER_NOT_OURS


def test_may_send_as_checks_only_authenticated_sessions() -> None:
    import ipaddress

    senders = parse_sender_map(SENDER_MAP, "senders")
    peer = Peer(ipaddress.ip_address("192.0.2.1"), 1)
    bob = policy.parse_sender("bob@example.org", False)
    assert isinstance(bob, policy.Address)
    assert policy.may_send_as(bob, SessionFacts(peer, auth_user="alice"), senders) == policy.SENDER_NOT_OWNED
    assert policy.may_send_as(bob, SessionFacts(peer), senders) is None          # not authenticated
    # No map: a login owns only itself — an address login that address, a plain login that
    # name in our own domains.
    own = frozenset({"example.org"})
    alice = policy.parse_sender("alice@example.org", False)
    assert isinstance(alice, policy.Address)
    assert policy.may_send_as(bob, SessionFacts(peer, auth_user="alice"), None, own) == policy.SENDER_NOT_OWNED
    assert policy.may_send_as(alice, SessionFacts(peer, auth_user="alice"), None, own) is None
    assert policy.may_send_as(alice, SessionFacts(peer, auth_user="alice@example.org"), None, own) is None
    assert policy.may_send_as(bob, SessionFacts(peer, auth_user="alice@example.org"), None, own) == \
        policy.SENDER_NOT_OWNED
    assert policy.may_send_as(alice, SessionFacts(peer, auth_user="alice"), None, frozenset()) == \
        policy.SENDER_NOT_OWNED                                                   # not our domain


def test_config_refuses_bad_reputation_settings(tmp_path: Path) -> None:
    path = write_config(tmp_path, [25], relay={"outbound_senders": "ours"},
                        dnsbl={"threshold": 2, "lists": ["zen.spamhaus.org*0", "bl.example=127.0.0.300"]},
                        dns={"resolvers": ["resolver.example"]})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    text = "\n".join(error.value.problems)
    assert "relay.outbound_senders: 'ours' is not one of 'any', 'own_domains'" in text
    assert "dnsbl.lists: item 1: weight: must be a whole number other than 0" in text
    assert "dns.resolvers: item 1: 'resolver.example' is not an IP address" in text


def test_a_relay_whose_sender_map_does_not_load_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "senders").write_text("alice: nobody\n")
    config = write_config(tmp_path, [25], relay={"sender_map": str(tmp_path / "senders")})
    relay = Relay(config)
    with pytest.raises(RuntimeError, match=r"relay.sender_map: .*senders:1: 'nobody' is not an address"):
        relay.start()
    relay.stop()


# ---- over SMTP, with STARTTLS and AUTH -----------------------------------------------------------

@dataclass
class Bound:
    relay: Relay
    sink: RecordingSink
    pki: Pki
    senders: Path


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bound]:
    base = tmp_path_factory.mktemp("binding")
    pki = make_pki(base / "tls")
    users = write_users(base / "users", {"alice": PASSWORD, "bob@example.org": PASSWORD})
    senders = base / "senders"
    senders.write_text(SENDER_MAP)
    with RecordingSink() as sink:
        config = frontdoor_config(
            base, [sink.port],
            listeners=[{"name": "mx", "address": "127.0.0.1:0", "auth": "optional"}],
            relay={"domains": ["example.org"], "trusted_networks": ["127.0.0.7/32"],
                   "sender_domains": ["example.org", "sales.example.org"],
                   "outbound_senders": "own_domains", "sender_map": str(senders)},
            tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
            auth={"users_file": str(users), "failure_delay": "50ms"},
            limits={"max_connections_per_ip": 100, "connection_rate_per_ip": 0},
        )
        with Relay(config) as relay:
            yield Bound(relay, sink, pki, senders)


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "bound" in request.fixturenames:
        request.getfixturevalue("bound").sink.messages.clear()


def message(sender: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: someone@foreign.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\nHello.\r\n").encode()


def logged_in(bound: Bound, user: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", bound.relay.port, timeout=20)
    client.ehlo("client.test")
    client.starttls(context=bound.pki.client_context())
    client.ehlo("client.test")
    client.login(user, PASSWORD)
    return client


def test_authenticated_user_sending_as_someone_else_is_refused(bound: Bound) -> None:
    with logged_in(bound, "alice") as client:
        assert client.mail("bob@example.org") == (553, b"5.7.1 Sender address rejected: not owned by user")
    line = bound.relay.wait_event("refused", stage="mail")
    assert "not in relay.sender_map for login 'alice'" in line["reason"]
    assert bound.sink.wait_for(1, timeout=0.3) == []


def test_authenticated_user_sending_as_themselves_is_relayed(bound: Bound) -> None:
    with logged_in(bound, "alice") as client:
        client.sendmail("alice@example.org", ["someone@foreign.example"], message("alice@example.org", "own"))
        client.sendmail("sales@sales.example.org", ["someone@foreign.example"],
                        message("sales@sales.example.org", "wildcard"))
    assert [m.sender for m in bound.sink.wait_for(2)] == ["alice@example.org", "sales@sales.example.org"]


def test_a_login_outside_the_map_may_send_as_its_own_address_only(bound: Bound) -> None:
    with logged_in(bound, "bob@example.org") as client:
        assert client.mail("alice@example.org")[0] == 553
        client.rset()
        client.sendmail("bob@example.org", ["someone@foreign.example"], message("bob@example.org", "bob"))
    assert bound.sink.wait_for(1)[0].sender == "bob@example.org"


def test_trusted_network_relays_out_only_as_our_domains(bound: Bound) -> None:
    with connect_from("127.0.0.7", bound.relay.port, timeout=20) as sock:
        def command(line: str) -> str:
            sock.sendall(line.encode() + b"\r\n")
            return read_reply(sock).strip()

        read_reply(sock)
        command("EHLO app.example.org")
        assert command("MAIL FROM:<newsletter@elsewhere.example>").startswith("250")
        assert command("RCPT TO:<someone@foreign.example>") == \
            "553 5.7.1 Sender address rejected: not in a domain of ours"
        assert command("RCPT TO:<bob@example.org>").startswith("250")     # inbound is not concerned
        command("RSET")
        assert command("MAIL FROM:<app@example.org>").startswith("250")
        assert command("RCPT TO:<someone@foreign.example>").startswith("250")
        command("QUIT")
    bound.relay.wait_event("refused", stage="rcpt",
                           reason="relaying to 'someone@foreign.example' as 'newsletter@elsewhere.example': "
                                  "not in relay.sender_domains")


def test_spoofing_our_domain_from_outside_is_only_logged_in_monitor_mode(bound: Bound) -> None:
    with smtplib.SMTP("127.0.0.1", bound.relay.port, timeout=20) as client:
        client.ehlo("client.test")
        data = message("ceo@example.org", "spoof").replace(b"To: someone@foreign.example", b"To: bob@example.org")
        client.mail("ceo@example.org")
        client.rcpt("bob@example.org")
        code, text = client.data(data)
    assert code == 250 and len(bound.sink.wait_for(1)) == 1
    queue_id = queue_id_in(text)
    early = bound.relay.wait_event("monitor", stage="mail", queue_id=queue_id)
    assert early["rules"] == ["spoofed-envelope-sender"]
    line = bound.relay.wait_event("message", queue_id=queue_id)
    assert line["verdict"] == "accepted"
    assert "spoofed-from-header" in line["monitor"]


def reload_senders(bound: Bound, text: str, outcome: str) -> dict[str, Any]:
    """Write the sender map, SIGHUP, and wait for this reload's `outcome` line (the relay's
    log keeps every earlier one: the test after must not start before this reload is over)."""
    before = len(bound.relay.events(outcome))
    bound.senders.write_text(text)
    bound.relay.signal(signal.SIGHUP)
    line: dict[str, Any] = eventually(lambda: (bound.relay.events(outcome)[before:] or [None])[0])
    return line


def test_sender_map_is_reloaded_on_sighup(bound: Bound) -> None:
    loaded = reload_senders(bound, SENDER_MAP.replace("alice@example.org,", "alice@example.org, bob@example.org,"),
                            "sender_map_loaded")
    assert loaded["reload"] is True and loaded["logins"] == 1
    try:
        with logged_in(bound, "alice") as client:
            client.sendmail("bob@example.org", ["someone@foreign.example"], message("bob@example.org", "reloaded"))
        assert bound.sink.wait_for(1)[0].sender == "bob@example.org"
    finally:
        reload_senders(bound, SENDER_MAP, "sender_map_loaded")


def test_a_sender_map_broken_on_sighup_is_refused_and_the_old_one_stays(bound: Bound) -> None:
    try:
        # Line 2 would let alice send as bob: taken in part, the map would show it.
        broken = SENDER_MAP.replace("alice@example.org,", "alice@example.org, bob@example.org,")
        refused = reload_senders(bound, broken + "bob: not-an-address\n", "sender_map_refused")
        assert refused["reload"] is True and refused["kept_previous"] is True
        assert refused["problems"] == [f"{bound.senders}:3: 'not-an-address' is not an address or *@domain"], refused
        with logged_in(bound, "alice") as client:       # the old map: alice, not bob
            assert client.mail("bob@example.org")[0] == 553
            client.rset()
            client.sendmail("alice@example.org", ["someone@foreign.example"], message("alice@example.org", "kept"))
        assert bound.sink.wait_for(1)[0].sender == "alice@example.org"
    finally:
        reload_senders(bound, SENDER_MAP, "sender_map_loaded")


def test_check_reports_a_bad_sender_map(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.harness import REPO

    (tmp_path / "senders").write_text("alice: alice@example.org\nbob bob@example.org\n")
    config = write_config(tmp_path, [25], relay={"sender_map": "senders"})
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"relay.sender_map: {tmp_path / 'senders'}:2: "
                                        "expected \"login: sender, sender ...\"")


def test_without_a_sender_map_a_login_sends_only_as_itself(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "tls")
    users = write_users(tmp_path / "users", {"alice": PASSWORD, "carol@example.org": PASSWORD})
    with RecordingSink() as sink:
        config = frontdoor_config(
            tmp_path, [sink.port],
            listeners=[{"name": "mx", "address": "127.0.0.1:0", "auth": "optional"}],
            relay={"domains": ["example.org"], "trusted_networks": []},
            tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
            auth={"users_file": str(users), "failure_delay": "50ms"})
        with Relay(config) as relay:
            state = Bound(relay, sink, pki, tmp_path / "none")
            with logged_in(state, "alice") as client:
                assert client.mail("bob@example.org")[0] == 553
                client.rset()
                client.sendmail("alice@example.org", ["someone@foreign.example"], message("alice@example.org", "a"))
            with logged_in(state, "carol@example.org") as client:
                assert client.mail("ceo@example.org")[0] == 553
                client.rset()
                client.sendmail("carol@example.org", ["someone@foreign.example"], message("carol@example.org", "c"))
            assert [m.sender for m in sink.wait_for(2)] == ["alice@example.org", "carol@example.org"]
            line = relay.wait_event("refused", stage="mail")
            assert "no relay.sender_map" in line["reason"]


def test_a_huge_from_domain_is_read_but_not_kept_in_memory() -> None:
    """Domains are normalised through a cache of the most recent; a From: field can carry a
    250 KB "domain", and 4,096 of those kept would be a gigabyte a client could pin."""
    from frontfilter.reputation import facts

    facts.normalise_domain.cache_clear()
    huge = "a" * 9000 + ".example"
    assert facts.normalise_domain(huge.upper()) == huge
    assert facts.normalise_domain.cache_info().currsize == 0
    assert facts.normalise_domain("Example.ORG.") == "example.org"
    assert facts.normalise_domain.cache_info().currsize == 1
