"""DNS lists, SPF and DNS failures over real loopback SMTP, against a real DNS server on loopback.

The relay runs as a process with `[dns] resolvers` pointing at `DnsServer` (tests/reputation/
dnsserver.py). Clients connect from several 127/8 addresses (Linux routes all of 127.0.0.0/8 to
loopback), so the DNS lists see several clients: 127.0.0.2 is queried as 2.0.0.127.<zone>.

The zone:
- bl.test (weight 2): 127.0.0.2 listed; 127.0.0.3 listed; 127.0.0.4 answered 127.255.255.254
  (Spamhaus's "query refused": not a listing);
- bl2.test (weight 1): 127.0.0.5 listed (score 1: below the threshold of 2);
- wl.test (weight -2, codes 127.0.[0..255].[1..3], dnswl.org style): 127.0.0.3 listed;
- SPF: spf-pass.example, spf-fail.example (-all), spf-softfail.example (~all), spf-temperror.example (SERVFAIL).
"""

from __future__ import annotations

import shutil
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.frontdoor.helpers import connect_from, frontdoor_config, make_pki, read_reply, write_users
from tests.harness import REPO, RecordingSink, Relay, write_config
from tests.reputation.dnsserver import DnsServer, dead_resolver

SITE_RULES = '''
# The test site's policy: SPF temperror defers (the shipped rule only monitors it).
disable = ["spf-temperror"]

[[rule]]
name = "site-spf-temperror"
stage = "mail"
spf.result = "temperror"
action = "tempfail"
reply = "451 4.7.24 SPF validation error, try again later"
'''

DNS_FAILURE_RULE = '''
[[rule]]
name = "site-dns-failure"
description = "A DNS check failed: defer rather than decide blind"
stage = "mail"
dns.error = true
action = "tempfail"
reply = "451 4.4.3 Temporary DNS failure, try again later"
'''


def zone() -> DnsServer:
    server = DnsServer()
    server.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    server.add("3.0.0.127.bl.test", "A", "127.0.0.2")
    server.add("4.0.0.127.bl.test", "A", "127.255.255.254")
    server.add("5.0.0.127.bl2.test", "A", "127.0.0.2")
    server.add("3.0.0.127.wl.test", "A", "127.0.15.2")
    server.txt("spf-pass.example", "v=spf1 ip4:127.0.0.0/8 -all")
    server.txt("spf-fail.example", "v=spf1 -all")
    server.txt("spf-softfail.example", "v=spf1 ~all")
    server.servfail.add("spf-temperror.example")
    return server


def rules_dir(base: Path, *site: str) -> Path:
    directory = base / "rules"
    shutil.copytree(REPO / "rules", directory)
    for index, text in enumerate(site):
        (directory / f"9{index}-site.toml").write_text(text)
    return directory


def reputation_sections(server: DnsServer, rules: Path, **overrides: dict) -> dict[str, dict]:
    sections: dict[str, dict] = {
        "dns": {"resolvers": [server.address], "timeout": "2s"},
        "dnsbl": {"threshold": 2, "lists": [
            "bl.test*2", "bl2.test*1", "wl.test=127.0.[0..255].[1..3]*-2"]},   # postscreen's syntax
        "spf": {"enabled": True, "timeout": "3s"},
        "rules": {"dir": str(rules), "watch": False},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return sections


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with zone() as server:
        yield server


@pytest.fixture(scope="module")
def relay(dns: DnsServer, module_sink: RecordingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    base = tmp_path_factory.mktemp("reputation")
    config = write_config(base, [module_sink.port], **reputation_sections(dns, rules_dir(base, SITE_RULES)))
    with Relay(config) as running:
        yield running


def message(subject: str, sender: str = "alice@spf-pass.example") -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n\r\nHello.\r\n").encode()


def dialogue(port: int, source: str, sender: str, recipient: str = "bob@example.org",
             data: bytes | None = None) -> list[str]:
    """Greeting, EHLO, MAIL, RCPT (and DATA) from `source`; the replies, stopping at a refusal."""
    replies = []
    with connect_from(source, port, timeout=20) as sock:
        def command(line: str | bytes) -> str:
            sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
            answer = read_reply(sock).strip()
            replies.append(answer)
            return answer

        replies.append(read_reply(sock).strip())
        command("EHLO client.test").startswith("250")
        if command(f"MAIL FROM:<{sender}>").startswith("250") and command(f"RCPT TO:<{recipient}>").startswith("250") \
                and data is not None and command("DATA").startswith("354"):
            command(data + b".")
        command("QUIT")
    return replies


# ---- DNS lists -------------------------------------------------------------------------------

def test_client_listed_past_the_threshold_is_refused_at_rcpt(relay: Relay, dns: DnsServer) -> None:
    replies = dialogue(relay.port, "127.0.0.2", "alice@spf-pass.example")
    assert replies[3] == "554 5.7.1 Service unavailable; client host has a poor reputation"
    line = dnsbl_line(relay, "127.0.0.2")
    assert (line["score"], line["listed_on"]) == (2, ["bl.test"])
    refused = relay.wait_event("refused", stage="rcpt", reason="rule dnsbl")
    assert refused["client"].startswith("127.0.0.2:")


def test_postmaster_stays_reachable_from_a_listed_client(relay: Relay, sink: RecordingSink) -> None:
    replies = dialogue(relay.port, "127.0.0.2", "alice@spf-pass.example", "postmaster@example.org",
                       message("to postmaster"))
    assert replies[-2].startswith("250 2.0.0"), replies
    assert sink.wait_for(1)[0].recipients == ["postmaster@example.org"]


def test_client_on_an_allow_list_passes_despite_a_block_list(relay: Relay, sink: RecordingSink) -> None:
    replies = dialogue(relay.port, "127.0.0.3", "alice@spf-pass.example", data=message("allow listed"))
    assert replies[-2].startswith("250 2.0.0"), replies
    assert len(sink.wait_for(1)) == 1
    line = dnsbl_line(relay, "127.0.0.3")
    assert line["score"] == 0 and sorted(line["listed_on"]) == ["bl.test", "wl.test"]


def test_query_refused_answer_is_not_a_listing(relay: Relay, sink: RecordingSink) -> None:
    replies = dialogue(relay.port, "127.0.0.4", "alice@spf-pass.example", data=message("refused code"))
    assert replies[-2].startswith("250 2.0.0"), replies
    assert len(sink.wait_for(1)) == 1
    line = dnsbl_line(relay, "127.0.0.4")
    assert line["score"] == 0 and line["listed_on"] == []
    assert line["lists"]["bl.test"] == "refused 127.255.255.254"


def test_a_listing_below_the_threshold_passes(relay: Relay, sink: RecordingSink) -> None:
    replies = dialogue(relay.port, "127.0.0.5", "alice@spf-pass.example", data=message("below threshold"))
    assert replies[-2].startswith("250 2.0.0"), replies
    line = dnsbl_line(relay, "127.0.0.5")
    assert (line["score"], line["listed_on"]) == (1, ["bl2.test"])


def test_authenticated_user_on_a_listed_address_is_not_refused(
        dns: DnsServer, sink: RecordingSink, tmp_path: Path) -> None:
    # Our users log in from home lines that the lists carry (Spamhaus's PBL is part of zen):
    # their password vouches for them; the same address without AUTH is still refused.
    pki = make_pki(tmp_path / "tls")
    users = write_users(tmp_path / "users", {"alice@example.org": "correct horse battery"})
    config = frontdoor_config(
        tmp_path, [sink.port],
        listeners=[{"name": "submission", "address": "127.0.0.1:0", "auth": "optional"}],
        tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        auth={"users_file": str(users), "failure_delay": "50ms"},
        **reputation_sections(dns, rules_dir(tmp_path)))
    with Relay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20, source_address=("127.0.0.2", 0)) as client:
            client.ehlo("laptop.example.org")
            client.starttls(context=pki.client_context())
            client.ehlo("laptop.example.org")
            client.login("alice@example.org", "correct horse battery")
            assert client.sendmail("alice@example.org", ["someone@foreign.example"],
                                   message("from home", "alice@example.org")) == {}
        assert sink.wait_for(1)[0].recipients == ["someone@foreign.example"]
        assert dnsbl_line(relay, "127.0.0.2")["score"] == 2
        replies = dialogue(relay.port, "127.0.0.2", "alice@spf-pass.example")
        assert replies[3] == "554 5.7.1 Service unavailable; client host has a poor reputation"


def dnsbl_line(relay: Relay, source: str, timeout: float = 15.0) -> dict:
    """The `dnsbl` log line of the client that connected from `source`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in list(relay.lines):
            if entry.get("event") == "dnsbl" and str(entry.get("client", "")).startswith(source + ":"):
                return entry
        time.sleep(0.02)
    raise TimeoutError(f"no dnsbl line for {source}")


# ---- SPF -------------------------------------------------------------------------------------

def test_spf_pass_is_delivered_with_received_spf_on_top(relay: Relay, sink: RecordingSink) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
        client.ehlo("client.test")
        assert client.sendmail("alice@spf-pass.example", ["bob@example.org"], message("spf pass")) == {}
    [received] = sink.wait_for(1)
    unfolded = received.data.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    results, first, second = unfolded.split(b"\r\n")[:3]
    # RFC 8601 on top: what the relay found, for the backend that trusts mx.test's results.
    assert results == b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=spf-pass.example; dnsbl=pass"
    assert first == (b"Received-SPF: pass (mx.test: domain of alice@spf-pass.example designates 127.0.0.1 "
                     b"as permitted sender) client-ip=127.0.0.1; envelope-from=\"alice@spf-pass.example\"; "
                     b"helo=client.test; receiver=mx.test; identity=mailfrom;")
    assert second.startswith(b"Received: from client.test")    # RFC 7208 §9.1: above our Received


def test_spf_fail_is_refused_at_mail(relay: Relay, sink: RecordingSink) -> None:
    replies = dialogue(relay.port, "127.0.0.1", "mallory@spf-fail.example")
    assert replies[2] == "550 5.7.23 SPF validation failed"
    assert relay.wait_event("refused", stage="mail", reason="rule spf-fail")


def test_spf_softfail_is_delivered_and_tagged(relay: Relay, sink: RecordingSink) -> None:
    replies = dialogue(relay.port, "127.0.0.1", "carol@spf-softfail.example", data=message("soft", "carol@spf-softfail.example"))
    assert replies[-2].startswith("250 2.0.0"), replies
    [received] = sink.wait_for(1)
    unfolded = received.data.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    assert unfolded.split(b"\r\n")[1].startswith(b"Received-SPF: softfail ")     # under our A-R
    assert b"X-Frontfilter-Tags: spf-softfail\r\n" in received.data


def test_spf_temperror_is_deferred_as_configured(relay: Relay, dns: DnsServer) -> None:
    replies = dialogue(relay.port, "127.0.0.1", "dave@spf-temperror.example")
    assert replies[2] == "451 4.7.24 SPF validation error, try again later"
    assert ("spf-temperror.example", "TXT") in dns.asked("spf-temperror.example")


def test_null_sender_is_checked_by_its_helo_name(relay: Relay, dns: DnsServer) -> None:
    with connect_from("127.0.0.1", relay.port, timeout=20) as sock:
        read_reply(sock)
        sock.sendall(b"EHLO spf-fail.example\r\n")
        read_reply(sock)
        sock.sendall(b"MAIL FROM:<>\r\n")
        assert read_reply(sock).strip() == "550 5.7.23 SPF validation failed"
        sock.sendall(b"QUIT\r\n")
        read_reply(sock)


# ---- when DNS is not there -------------------------------------------------------------------

def test_dead_resolver_gives_the_configured_outcome_within_the_timeout(
        sink: RecordingSink, tmp_path: Path) -> None:
    with dead_resolver() as dead:
        sections = reputation_sections(dead, rules_dir(tmp_path, DNS_FAILURE_RULE),
                                       dns={"timeout": "1s"}, spf={"timeout": "1s"})
        config = write_config(tmp_path, [sink.port], **sections)
        with Relay(config) as relay:
            # The client's own timeout (20 s) bounds the test; the relay answers after ~1 s.
            replies = dialogue(relay.port, "127.0.0.1", "alice@spf-pass.example")
            assert replies[2] == "451 4.4.3 Temporary DNS failure, try again later"
            line = relay.wait_event("dnsbl")
            assert line["lists"]["bl.test"].startswith("error timeout")
        assert dead.asked(), "the relay never asked the (dead) resolver"
    assert sink.wait_for(1, timeout=0.3) == []


def test_without_a_rule_that_needs_them_no_dns_query_is_made(
        dns: DnsServer, sink: RecordingSink, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "00-executables.toml", rules)
    sections = reputation_sections(dns, rules, spf={"header": False})
    config = write_config(tmp_path, [sink.port], **sections)
    before = len(dns.asked())
    with Relay(config) as relay:
        replies = dialogue(relay.port, "127.0.0.2", "alice@spf-pass.example", data=message("no lookups"))
        assert replies[-2].startswith("250 2.0.0"), replies
    assert dns.asked()[before:] == []
