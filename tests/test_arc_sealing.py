"""ARC sealing (issue 25) through a real relay and a real backend: a DKIM-signed message whose
attachment a rule strips arrives with its signature broken — and an ARC chain that verifies as a
receiver checks it (dkimpy's arc_verify, the public keys from a dict standing in for DNS), whose
ARC-Authentication-Results say the signature held when the relay checked it (the sender's key on
a local DNS server the relay asks). A
message the relay did not change is not sealed (seal = "changed"), every one is with "always";
`frontfilter check` refuses a bad key in one line and prints the record to publish; SIGHUP puts
a replaced key in force, and keeps the old one when the new one does not load."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from tests.content import corpus
from tests.harness import REPO, WAIT_TIMEOUT, RecordingSink, Relay, eventually, send, write_config
from tests.reputation.dnsserver import DnsServer

SELECTOR, DOMAIN = "seal1", "edge.example.org"
SIGNER_SELECTOR, SIGNER_DOMAIN = "s2025", "example.net"
RULES = """
[[rule]]
name = "strip-bin"
attachment.filename = "*.bin"
action = "strip"
"""


def new_key(bits: int = 1024) -> bytes:
    """An RSA private key in PEM, as `openssl genrsa` writes it (PKCS#8)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def record(pem: bytes) -> bytes:
    public = serialization.load_pem_private_key(pem, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dns(**published: bytes) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: `selector._domainkey.domain.` -> the TXT record, from a dict."""
    records = {f"{name}.".encode(): text for name, text in published.items()}
    return lambda name, timeout=5: records.get(name)


SIGNER_KEY = new_key()
SIGNER_RECORD_NAME = f"{SIGNER_SELECTOR}._domainkey.{SIGNER_DOMAIN}"


def signed(message: bytes) -> bytes:
    """`message` with the sender's DKIM signature on top, as example.net's server would send it."""
    signature = dkim.sign(message, SIGNER_SELECTOR.encode(), SIGNER_DOMAIN.encode(), SIGNER_KEY,
                          include_headers=[b"from", b"to", b"subject", b"content-type", b"mime-version"])
    return signature + message


def with_attachment(name: str) -> bytes:
    return corpus.message(corpus.attachment(b"\x7fELF firmware image\x00" * 20, "application/octet-stream", name)
                          ).replace(b"Alice <alice@example.org>", b"Alice <alice@example.net>")


@dataclass
class Sealing:
    relay: Relay
    sink: RecordingSink
    key_file: Path
    config: Path


@contextmanager
def sealing_relay(tmp_path: Path, sink: RecordingSink, resolver: DnsServer, mode: str = "sync",
                  **arc: str) -> Iterator[Sealing]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "50-strip.toml").write_text(RULES)
    key_file = tmp_path / "arc.key"
    key_file.write_bytes(new_key())
    config = write_config(tmp_path, [sink.port], rules_dir=rules, metrics={"listen": "127.0.0.1:0"},
                          backend={"mode": mode},
                          # With a key the relay checks DKIM (and judges ARC chains) as received,
                          # on this DNS server: the sender's key is published there.
                          dns={"resolvers": [resolver.address]},
                          arc={"key_file": str(key_file), "selector": SELECTOR, "domain": DOMAIN, **arc})
    with Relay(config) as relay:
        yield Sealing(relay, sink, key_file, config)


@pytest.fixture(scope="module")
def resolver() -> Iterator[DnsServer]:
    """Where example.net publishes its DKIM key (the relay's own key is looked up by no one but
    the test's receiver, from `arc_of`'s dict)."""
    with DnsServer() as server:
        server.txt(SIGNER_RECORD_NAME, record(SIGNER_KEY).decode())
        yield server


@pytest.fixture(scope="module")
def changed(module_sink: RecordingSink, resolver: DnsServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealing]:
    with sealing_relay(tmp_path_factory.mktemp("arc-changed"), module_sink, resolver) as sealing:
        yield sealing


def arc_of(data: bytes, key_file: Path) -> tuple[bytes, list[dict], str]:
    found = dns(**{f"{SELECTOR}._domainkey.{DOMAIN}": record(key_file.read_bytes()),
                   SIGNER_RECORD_NAME: record(SIGNER_KEY)})
    return dkim.arc_verify(data, dnsfunc=found)


def scraped(relay: Relay, outcome: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return next((s.value for family in text_string_to_metric_families(text) for s in family.samples
                 if s.name == "frontfilter_arc_seals_total" and s.labels.get("outcome") == outcome), 0.0)


def test_a_stripped_signed_message_verifies_through_its_arc_chain(changed: Sealing, sink: RecordingSink) -> None:
    original = signed(with_attachment("update.bin"))
    assert dkim.verify(original, dnsfunc=dns(**{SIGNER_RECORD_NAME: record(SIGNER_KEY)}))   # as sent
    answer = send(changed.relay.port, original, sender="alice@example.net")
    assert answer.ok, answer
    [received] = sink.wait_for(1)
    data = received.data
    assert b"X-Frontfilter-Stripped:" in data and b"update.bin" in data     # the strip happened
    # The sender's signature no longer holds: the body it covered is not the body forwarded.
    assert not dkim.verify(data, dnsfunc=dns(**{SIGNER_RECORD_NAME: record(SIGNER_KEY)}))
    # The relay's seal does, and carries what it found before the change.
    assert data.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=edge.example.org; s=seal1;")
    cv, sets, reason = arc_of(data, changed.key_file)
    assert (cv, reason) == (dkim.CV_Pass, "success"), sets
    # What the relay found before it stripped: the signature held then (RFC 8617 §4.1.1).
    assert sets[0]["aar-value"].startswith(b"i=1; mx.test")
    assert b"dkim=pass" in sets[0]["aar-value"] and b"header.d=example.net" in sets[0]["aar-value"]
    line = changed.relay.wait_event("message", queue_id=answer.queue_id)
    assert line["arc_seal"] == "sealed i=1" and line["stripped"][0]["filename"] == "update.bin"
    assert eventually(lambda: scraped(changed.relay, "sealed") >= 1, timeout=WAIT_TIMEOUT)


def test_a_p_reject_domains_message_stripped_here_is_vouched_for_by_the_seal(
        tmp_path: Path, sink: RecordingSink, resolver: DnsServer) -> None:
    """The issue's acceptance: example.net publishes p=reject; the relay checks DKIM and DMARC
    before it strips, so the receiver finds a broken signature (a DMARC check of its own would
    refuse the message) and a valid ARC chain whose results say DMARC passed at the edge."""
    resolver.txt(f"_dmarc.{SIGNER_DOMAIN}", "v=DMARC1; p=reject")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "50-strip.toml").write_text(RULES)
    (rules / "45-reputation.toml").write_text((REPO / "rules" / "45-reputation.toml").read_text())  # dmarc-reject
    key_file = tmp_path / "arc.key"
    key_file.write_bytes(new_key(2048))
    config = write_config(tmp_path, [sink.port], rules_dir=rules, dns={"resolvers": [resolver.address]},
                          dkim={"enabled": True}, dmarc={"enabled": True},
                          arc={"key_file": str(key_file), "selector": SELECTOR, "domain": DOMAIN})
    with Relay(config) as relay:
        answer = send(relay.port, signed(with_attachment("update.bin")), sender="alice@example.net")
        assert answer.ok, answer
        [received] = sink.wait_for(1)
        line = relay.wait_event("message", queue_id=answer.queue_id)
    assert (line["dkim"], line["dmarc"], line["dmarc_policy"], line["arc_seal"]) == \
        ("pass", "pass", "reject", "sealed i=1")
    assert not dkim.verify(received.data, dnsfunc=dns(**{SIGNER_RECORD_NAME: record(SIGNER_KEY)}))
    cv, sets, reason = arc_of(received.data, key_file)
    assert (cv, reason) == (dkim.CV_Pass, "success"), sets
    results = sets[0]["aar-value"]
    assert b"dkim=pass header.d=example.net" in results
    assert b"dmarc=pass header.from=example.net policy.dmarc=reject" in results


def test_a_message_the_relay_did_not_change_is_not_sealed(changed: Sealing, sink: RecordingSink) -> None:
    original = signed(with_attachment("notes.txt"))
    answer = send(changed.relay.port, original, sender="alice@example.net")
    assert answer.ok, answer
    [received] = sink.wait_for(1)
    assert b"ARC-Seal" not in received.data
    assert dkim.verify(received.data, dnsfunc=dns(**{SIGNER_RECORD_NAME: record(SIGNER_KEY)}))  # still whole
    assert "arc_seal" not in changed.relay.wait_event("message", queue_id=answer.queue_id)


def test_a_replaced_key_is_used_after_sighup_and_a_broken_one_is_refused(
        changed: Sealing, sink: RecordingSink) -> None:
    old = changed.key_file.read_bytes()
    changed.key_file.write_bytes(new_key(2048))
    try:
        changed.relay.signal(signal.SIGHUP)
        loaded = changed.relay.wait_event("arc_key_loaded", reload=True)
        assert (loaded["bits"], loaded["selector"], loaded["domain"]) == (2048, SELECTOR, DOMAIN)
        assert send(changed.relay.port, signed(with_attachment("a.bin"))).ok
        [received] = sink.wait_for(1)
        assert arc_of(received.data, changed.key_file)[0] == dkim.CV_Pass           # the new key
        now = changed.key_file.read_bytes()
        changed.key_file.write_bytes(old)
        assert arc_of(received.data, changed.key_file)[0] == dkim.CV_Fail           # not the old one
        changed.key_file.write_text("-----BEGIN PRIVATE KEY-----\ntruncated\n")
        changed.relay.signal(signal.SIGHUP)
        refused = changed.relay.wait_event("arc_key_refused")
        assert refused["kept_previous"] is True
        assert refused["problems"] == [f"{changed.config.resolve()}: arc.key_file: {changed.key_file}: "
                                       "not a private key in PEM form (make one with: openssl genrsa 2048)"]
        sink.messages.clear()
        assert send(changed.relay.port, signed(with_attachment("b.bin"))).ok
        [kept] = sink.wait_for(1)
        changed.key_file.write_bytes(now)
        assert arc_of(kept.data, changed.key_file)[0] == dkim.CV_Pass              # still the 2048-bit one
    finally:
        changed.key_file.write_bytes(old)
        changed.relay.signal(signal.SIGHUP)
        eventually(lambda: len(changed.relay.events("arc_key_loaded")) >= 3)


@pytest.mark.parametrize("mode", ["sync", "queue"])      # queue: sealed before it is spooled
def test_with_always_every_forwarded_message_is_sealed(tmp_path: Path, sink: RecordingSink, resolver: DnsServer,
                                                       mode: str) -> None:
    with sealing_relay(tmp_path, sink, resolver, mode, seal="always") as sealing:
        answer = send(sealing.relay.port, corpus.plain())
        assert answer.ok
        [received] = sink.wait_for(1)
        assert arc_of(received.data, sealing.key_file)[0] == dkim.CV_Pass
        assert sealing.relay.wait_event("message", queue_id=answer.queue_id)["arc_seal"] == "sealed i=1"


def test_the_relay_does_not_start_without_its_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, [25], arc={"key_file": "missing.key", "selector": SELECTOR, "domain": DOMAIN})
    done = subprocess.run([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (f"frontfilter: {config.resolve()}: arc.key_file: "
                                            f"{tmp_path / 'missing.key'}: cannot read: No such file or directory")


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def test_check_refuses_a_bad_key_in_one_line_naming_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "arc.key").write_bytes(new_key().replace(b"MII", b"XYZ", 1))
    config = write_config(tmp_path, [25], arc={"key_file": "arc.key", "selector": SELECTOR, "domain": DOMAIN})
    done = check(config)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{config.resolve()}: arc.key_file: {tmp_path / 'arc.key'}: not a private key in PEM form "
        "(make one with: openssl genrsa 2048)"]
    missing = write_config(tmp_path, [25], arc={"key_file": "arc.key", "domain": DOMAIN})
    assert check(missing).stderr.splitlines() == [
        f"{missing}: arc.selector: missing (arc.key_file is set: the key is published at "
        "SELECTOR._domainkey.DOMAIN)"]


def test_check_prints_the_record_to_publish_and_warns_of_a_short_key(tmp_path: Path) -> None:
    pem = new_key(1024)
    (tmp_path / "arc.key").write_bytes(pem)
    config = write_config(tmp_path, [25], arc={"key_file": "arc.key", "selector": SELECTOR, "domain": DOMAIN})
    done = check(config)
    assert done.returncode == 0, done.stderr
    published = done.stdout.splitlines()[-1]
    name, _in, _txt, strings = published.split(" ", 3)
    assert name == f"{SELECTOR}._domainkey.{DOMAIN}." and (_in, _txt) == ("IN", "TXT")
    assert "".join(part.strip('"') for part in strings.split('" "')).encode() == record(pem)
    assert "arc.key_file: warning: a 1024-bit key: 2048 bits recommended" in done.stderr
