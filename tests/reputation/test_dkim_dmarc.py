"""DKIM, ARC and DMARC of received mail: over real loopback SMTP, a real relay process, keys and
policies published by a real DNS server on loopback (tests/reputation/dnsserver.py), messages
signed in the test with a key made in the test.

The zone:
- signed.example: DKIM key `sel`, DMARC p=reject; its mail is sent from a bulk mailer whose
  envelope domain (mailer.example) passes SPF but is not aligned: DMARC rests on DKIM alone.
- quarantined.example: DMARC p=quarantine, nothing signed.
- nodmarc.example: signed with the same key (its own selector record), no DMARC record.
- broken.example: its key lookup answers SERVFAIL.
"""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import dkim
import pytest
from prometheus_client.parser import text_string_to_metric_families
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from frontfilter.config import DnsConfig, HostPort
from frontfilter.reputation.dmarc import Dmarc, from_domain, parse_record
from frontfilter.reputation.facts import MAX_HEADER_SCAN, DmarcPolicy, header_of
from frontfilter.reputation.resolver import Resolver
from tests.harness import RecordingSink, Relay, eventually, queue_id_in, send, write_config
from tests.reputation.dnsserver import DnsServer
from tests.reputation.test_reputation_relay import rules_dir

SITE_RULES = '''
[[rule]]
name = "known-signer"
description = "Tag mail a partner signed"
stage = "data"
dkim.domain = "nodmarc.example"
action = "tag"
tag = "partner-signed"

[[rule]]
name = "dkim-key-unknown"
stage = "data"
dns.error = "dkim"
action = "tempfail"
reply = "451 4.7.5 DKIM key lookup failed, try again later"
'''


class Signer:
    """An RSA key made in the test, its DNS record, and signing with it."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()

    def sign(self, message: bytes, domain: str, selector: str = "sel") -> bytes:
        field = dkim.sign(message, selector.encode(), domain.encode(), self.private,
                          canonicalize=(b"relaxed", b"simple"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"content-type"])
        return field + message


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def publish_key(server: DnsServer, name: str, record: str) -> None:
    """A 2048-bit key is longer than one TXT string (255 octets): several, joined by the reader."""
    server.add(name, "TXT", " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200)))


@pytest.fixture(scope="module")
def dns(signer: Signer) -> Iterator[DnsServer]:
    server = DnsServer()
    server.txt("mailer.example", "v=spf1 ip4:127.0.0.0/8 -all")
    publish_key(server, "sel._domainkey.signed.example", signer.record)
    server.txt("_dmarc.signed.example", "v=DMARC1; p=reject; rua=mailto:d@signed.example")
    server.txt("_dmarc.quarantined.example", "v=DMARC1; p=quarantine")
    publish_key(server, "sel._domainkey.nodmarc.example", signer.record)
    server.servfail.add("sel._domainkey.broken.example")
    with server:
        yield server


@pytest.fixture(scope="module")
def relay(dns: DnsServer, module_sink: RecordingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    base = tmp_path_factory.mktemp("dkim")
    config = write_config(base, [module_sink.port], rules_dir=rules_dir(base, SITE_RULES),
                          dns={"resolvers": [dns.address], "timeout": "2s"},
                          spf={"enabled": True, "timeout": "3s"},
                          dkim={"enabled": True, "timeout": "3s"}, dmarc={"enabled": True},
                          metrics={"listen": "127.0.0.1:0"})
    with Relay(config) as running:
        yield running


def message(subject: str, author: str = "news@signed.example", body: str = "Hello.\r\n") -> bytes:
    return (f"From: {author}\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@test>\r\n"
            f"\r\n{body}").encode()


def results_field(data: bytes) -> str:
    """The relay's own Authentication-Results field (the first one: it is added on top)."""
    return " ".join(str(message_from_bytes(data)["Authentication-Results"]).split())


def message_line(relay: Relay, reply: str) -> dict:
    return relay.wait_event("message", queue_id=queue_id_in(reply))


# ---- through the relay ---------------------------------------------------------------------------

def test_a_signed_message_passes_unmodified_with_dkim_and_dmarc_pass(
        relay: Relay, sink: RecordingSink, signer: Signer, dns: DnsServer) -> None:
    signed = signer.sign(message("signed newsletter"), "signed.example")
    answer = send(relay.port, signed, sender="bounces@mailer.example")
    assert answer.ok, answer
    forwarded = sink.wait_for(1)[0].data
    field = results_field(forwarded)
    assert field.startswith("mx.test;")
    assert "dkim=pass header.d=signed.example header.s=sel" in field
    assert "dmarc=pass header.from=signed.example policy.dmarc=reject" in field
    # What the backend gets still verifies: the relay's trace fields are on top, outside the
    # signed ones, and nothing signed was touched.
    assert dkim.verify(forwarded, dnsfunc=lambda name, timeout=5: signer.record.encode())
    line = message_line(relay, answer.text)
    assert (line["dkim"], line["dkim_domains"], line["dmarc"], line["dmarc_policy"]) == \
        ("pass", ["signed.example"], "pass", "reject")


def test_a_message_changed_after_signing_fails_dmarc_and_the_domains_reject_policy_is_applied(
        relay: Relay, sink: RecordingSink, signer: Signer) -> None:
    signed = signer.sign(message("altered"), "signed.example").replace(b"Hello.", b"Hullo.")
    answer = send(relay.port, signed, sender="bounces@mailer.example")
    assert answer.said == "550 5.7.26 Unauthenticated mail from this domain is refused by its DMARC policy"
    line = message_line(relay, answer.text)
    assert (line["dkim"], line["dmarc"], line["rules"][0]) == ("fail", "fail", "dmarc-reject")
    dkim_line = relay.wait_event("dkim", queue_id=answer.queue_id)
    assert dkim_line["problems"] == ["signed.example/sel: fail body hash mismatch"]


def test_spf_alone_aligns_an_unsigned_message(relay: Relay, sink: RecordingSink) -> None:
    answer = send(relay.port, message("plain", author="news@mailer.example"), sender="bounces@mailer.example")
    assert answer.ok, answer
    field = results_field(sink.wait_for(1)[0].data)
    assert "dkim=none" in field and "dmarc=none header.from=mailer.example" in field
    assert "spf=pass smtp.mailfrom=mailer.example" in field


def test_quarantine_policy_tags_and_a_domain_without_dmarc_is_none(relay: Relay, sink: RecordingSink) -> None:
    answer = send(relay.port, message("q", author="a@quarantined.example"), sender="bounces@mailer.example")
    assert answer.ok, answer
    forwarded = message_from_bytes(sink.wait_for(1)[0].data)
    assert "dmarc-quarantine" in str(forwarded["X-Frontfilter-Tags"])
    assert "dmarc=fail header.from=quarantined.example policy.dmarc=quarantine" in results_field(
        sink.messages[0].data)


def test_rules_read_the_signing_domain(relay: Relay, sink: RecordingSink, signer: Signer) -> None:
    signed = signer.sign(message("partner", author="a@nodmarc.example"), "nodmarc.example")
    answer = send(relay.port, signed, sender="bounces@mailer.example")
    assert answer.ok, answer
    forwarded = message_from_bytes(sink.wait_for(1)[0].data)
    assert "partner-signed" in str(forwarded["X-Frontfilter-Tags"])
    assert "dmarc=none header.from=nodmarc.example" in results_field(sink.messages[0].data)


def test_a_key_that_cannot_be_looked_up_is_temperror_not_fail(
        relay: Relay, sink: RecordingSink, signer: Signer) -> None:
    signed = signer.sign(message("broken dns", author="a@broken.example"), "broken.example")
    answer = send(relay.port, signed, sender="bounces@mailer.example")
    assert answer.said == "451 4.7.5 DKIM key lookup failed, try again later"
    line = message_line(relay, answer.text)
    assert line["dkim"] == "temperror"


def test_a_header_dkimpy_cannot_read_is_a_permerror_not_a_pass_or_a_crash(
        relay: Relay, sink: RecordingSink, signer: Signer) -> None:
    signed = signer.sign(message("junk line"), "signed.example")
    broken = signed.replace(b"Subject:", b"this line is no field\r\nSubject:", 1)
    answer = send(relay.port, broken, sender="bounces@mailer.example")
    line = message_line(relay, answer.text)
    assert line["dkim"] == "permerror" and line["dmarc"] == "fail" and line["arc"] == "none"
    checked = relay.wait_event("dkim", queue_id=answer.queue_id)
    assert checked["result"] == "permerror" and checked["problems"]
    # p=reject and nothing aligned passed: refused, as for any unverifiable signature.
    assert answer.said.startswith("550 5.7.26")


def test_a_second_from_domain_is_a_dmarc_permerror(relay: Relay, sink: RecordingSink) -> None:
    two = message("two authors").replace(b"From: news@signed.example",
                                         b"From: news@signed.example, x@elsewhere.example")
    answer = send(relay.port, two, sender="bounces@mailer.example")
    assert answer.ok, answer
    assert "dmarc=permerror" in results_field(sink.wait_for(1)[0].data)


def test_an_authenticated_or_trusted_client_is_not_checked(
        dns: DnsServer, sink: RecordingSink, signer: Signer, tmp_path: Path) -> None:
    config = write_config(tmp_path, [sink.port], rules_dir=rules_dir(tmp_path),
                          relay={"trusted_networks": ["127.0.0.0/8"]},
                          dns={"resolvers": [dns.address], "timeout": "2s"},
                          dkim={"enabled": True}, dmarc={"enabled": True})
    with Relay(config) as relay:
        before = len(dns.asked("sel._domainkey.signed.example"))
        answer = send(relay.port, signer.sign(message("ours"), "signed.example").replace(b"Hello", b"Changed"),
                      sender="someone@example.org", recipients=("x@elsewhere.example",))
        assert answer.ok, answer
        assert "dkim=" not in results_field(sink.wait_for(1)[0].data)
        assert len(dns.asked("sel._domainkey.signed.example")) == before


def test_the_results_are_counted_for_the_dashboard(relay: Relay, sink: RecordingSink, signer: Signer) -> None:
    def scraped() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10) as page:
            families = text_string_to_metric_families(page.read().decode())
            return {f"{s.name}{sorted(s.labels.items())}": s.value for f in families for s in f.samples}

    samples = ("frontfilter_dkim_results_total[('result', 'pass')]",
               "frontfilter_arc_results_total[('result', 'none')]",
               "frontfilter_dmarc_results_total[('policy', 'reject'), ('result', 'pass')]")
    before = scraped()
    assert send(relay.port, signer.sign(message("counted"), "signed.example"), sender="bounces@mailer.example").ok
    # The exposition is cached for a moment: scraped again until this message shows.
    after = eventually(lambda: (now := scraped())[samples[0]] > before[samples[0]] and now)
    assert [after[sample] - before[sample] for sample in samples] == [1, 1, 1]


# ---- DMARC's pieces, on their own ------------------------------------------------------------------

def test_the_record_is_read_as_rfc_7489_says() -> None:
    record = parse_record("v=DMARC1; p=Reject; sp=none; adkim=s; pct=20")
    assert record is not None
    assert (record.policy, record.subdomain_policy, record.strict_dkim, record.strict_spf, record.percent) == \
        (DmarcPolicy.REJECT, DmarcPolicy.NONE, True, False, 20)
    assert parse_record("v=DMARC1; p=bogus") is None                        # no usable policy
    bad_p = parse_record("v=DMARC1; p=bogus; rua=mailto:x@y.example")       # §6.6.3: rua makes it p=none
    assert bad_p is not None and bad_p.policy is DmarcPolicy.NONE


def test_relaxed_alignment_uses_the_organizational_domain_from_the_public_suffix_list() -> None:
    dmarc = Dmarc(Resolver(DnsConfig(resolvers=())), 1.0)
    assert dmarc.aligned("mail.example.co.uk", "example.co.uk", strict=False)
    assert not dmarc.aligned("other.co.uk", "example.co.uk", strict=False)        # co.uk is a suffix
    assert not dmarc.aligned("mail.example.co.uk", "example.co.uk", strict=True)


def test_the_from_domain_is_the_one_domain_of_the_from_field() -> None:
    assert from_domain(b"From: \"A\" <a@Example.ORG>\r\nSubject: hi") == ("example.org", "")
    assert from_domain(b"Subject: x\r\n\r\n")[0] == ""
    assert from_domain(b"From: a@x.example\r\nFrom: b@x.example\r\n\r\n")[0] == ""


def test_the_header_block_read_on_the_event_loop_is_bounded() -> None:
    assert header_of(b"From: a@x.example\r\nSubject: s\r\n\r\nFrom: b@y.example\r\n") == \
        b"From: a@x.example\r\nSubject: s"
    endless = b"X-Junk: " + b"y" * (2 * MAX_HEADER_SCAN) + b"\r\nFrom: a@x.example\r\n\r\nbody"
    assert len(header_of(endless)) == MAX_HEADER_SCAN
    assert from_domain(header_of(endless))[0] == ""       # not looked for past the bound


def test_a_subdomain_without_a_record_gets_the_organizational_domains_sp(dns: DnsServer) -> None:
    dns.txt("_dmarc.parent.example", "v=DMARC1; p=reject; sp=quarantine")
    dmarc = Dmarc(Resolver(DnsConfig(resolvers=(HostPort("127.0.0.1", dns.port),))), 2.0)

    async def evaluate() -> tuple[str, str | None]:
        outcome = await dmarc.evaluate(b"From: a@mail.parent.example\r\n\r\n", None, ())
        return outcome.result.value, outcome.policy.value if outcome.policy else None

    assert asyncio.run(evaluate()) == ("fail", "quarantine")


def test_the_shipped_rules_file_documents_every_fact_it_reads() -> None:
    text = (Path(__file__).resolve().parents[2] / "rules" / "README.md").read_text()
    for key in ("dkim.result", "dkim.domain", "arc.result", "dmarc.result", "dmarc.policy"):
        assert re.search(rf"`{re.escape(key)}`", text), key
