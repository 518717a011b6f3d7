"""`frontfilter scan` shows the reputation facts and the rules of the early stages they feed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, write_config
from tests.reputation.dnsserver import DnsServer

SPOOF = b"From: CEO <ceo@example.org>\r\nTo: bob@example.org\r\nSubject: urgent\r\n\r\nPlease wire money.\r\n"


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", "scan", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)


def test_scan_shows_the_monitored_anti_spoofing_rules(tmp_path: Path) -> None:
    (tmp_path / "spoof.eml").write_bytes(SPOOF)
    config = write_config(tmp_path, [25])
    done = scan(str(tmp_path / "spoof.eml"), "--config", str(config), "--sender", "ceo@example.org",
                "--recipient", "bob@example.org")
    assert done.returncode == 0, done.stderr
    assert "client 192.0.2.1: not trusted; own domains: example.org" in done.stdout
    assert "stage mail:\n  spoofed-envelope-sender (reject, monitor): sender.own_domain is true" in done.stdout
    assert "spoofed-from-header (reject, monitor): from.own_domain is true" in done.stdout
    assert done.stdout.rstrip().endswith("verdict: accept")
    # Authenticated, the same message is ours.
    done = scan(str(tmp_path / "spoof.eml"), "--config", str(config), "--sender", "ceo@example.org",
                "--auth-user", "ceo", "--json")
    assert json.loads(done.stdout)["early"] == []


def test_scan_with_dns_asks_the_configured_resolvers(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(SPOOF.replace(b"ceo@example.org", b"x@spf-fail.example"))
    with DnsServer() as dns:
        dns.add("99.2.0.192.bl.test", "A", "127.0.0.2")
        dns.txt("spf-fail.example", "v=spf1 -all")
        config = write_config(tmp_path, [25], dns={"resolvers": [dns.address]},
                              dnsbl={"lists": ["bl.test*2"], "threshold": 2}, spf={"enabled": True})
        done = scan(str(tmp_path / "m.eml"), "--config", str(config), "--dns", "--client-ip", "192.0.2.99",
                    "--sender", "x@spf-fail.example", "--recipient", "bob@example.org")
    assert done.returncode == 1, done.stdout + done.stderr            # 1: reject
    assert "dnsbl: score 2 (threshold reached): bl.test=listed 127.0.0.2" in done.stdout
    assert "spf: fail (mailfrom spf-fail.example)" in done.stdout
    assert "spf-fail (reject, enforce): spf.result fail" in done.stdout
    assert "(decided at stage mail, before the message" in done.stdout


def test_scan_dns_needs_a_config(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(SPOOF)
    done = scan(str(tmp_path / "m.eml"), "--dns")
    assert done.returncode == 2 and "--dns needs --config" in done.stderr


def test_scan_applies_the_relay_policy_before_the_rules(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(b"From: alice@example.org\nSubject: hi\n\nhello\n")
    config = write_config(tmp_path, [25])
    done = scan(str(tmp_path / "m.eml"), "--config", str(config), "--auth-user", "alice",
                "--sender", "bob@example.org", "--recipient", "x@foreign.example")
    assert done.returncode == 1, done.stderr
    assert "relay policy at mail: 553 5.7.1 Sender address rejected: not owned by user" in done.stdout
    done = scan(str(tmp_path / "m.eml"), "--config", str(config), "--auth-user", "alice",
                "--sender", "alice@example.org", "--recipient", "x@foreign.example")
    assert done.returncode == 0 and "relay policy" not in done.stdout
    done = scan(str(tmp_path / "m.eml"), "--config", str(config), "--sender", "a@elsewhere.example",
                "--recipient", "x@foreign.example", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["reply"].startswith("554 5.7.1")


def test_scan_binds_an_authenticated_sender_as_the_relay_sender_map_does(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(b"From: shop@example.org\nSubject: order\n\nthanks\n")
    (tmp_path / "senders").write_text("webshop: orders@example.org\n")
    config = write_config(tmp_path, [25], relay={"sender_map": str(tmp_path / "senders")})
    done = scan(str(tmp_path / "m.eml"), "--config", str(config), "--auth-user", "webshop",
                "--sender", "orders@example.org", "--recipient", "x@foreign.example")
    assert done.returncode == 0 and "relay policy" not in done.stdout, done.stdout + done.stderr
    (tmp_path / "senders").write_text("webshop orders@example.org\n")      # no colon: unreadable
    done = scan(str(tmp_path / "m.eml"), "--config", str(config), "--auth-user", "webshop",
                "--sender", "orders@example.org", "--recipient", "x@foreign.example")
    assert done.returncode == 2 and "relay.sender_map" in done.stderr and "Traceback" not in done.stderr
