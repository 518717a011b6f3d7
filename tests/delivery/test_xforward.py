"""XFORWARD: a backend that trusts the relay learns the real client — tried against a real
Postfix with `smtpd_authorized_xforward_hosts`, as deploy/README.md tells the administrator."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontfilter.delivery.xforward import ClientFacts, commands, xtext
from tests.harness import Answer, RecordingSink, Relay, eventually, free_port, write_config
from tests.requires import installed

POSTFIX = shutil.which("postfix")
CLIENT_ADDRESS = "127.0.0.2"          # the test's client: the relay itself reaches Postfix from 127.0.0.1


def test_xforward_says_only_what_the_backend_asks_for_in_xtext() -> None:
    client = ClientFacts("2001:db8::7", 40001, "mail+out=1.example", "ESMTP")
    assert commands(client, ["ADDR", "HELO", "SOURCE"]) == [
        "XFORWARD ADDR=2001:db8::7 HELO=mail+2Bout+3D1.example SOURCE=REMOTE"]
    assert commands(client, []) == []                           # not advertised: nothing sent
    assert xtext("a b\u00e9") == "a+20b+C3+A9"
    long_helo = ClientFacts("192.0.2.1", 25, "h" * 300)
    lines = commands(long_helo, ["ADDR", "PORT", "NAME", "HELO", "PROTO", "SOURCE"])
    assert all(len(line) <= 500 for line in lines) and "".join(lines).count("HELO=") == 1


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[tuple[int, Path, RecordingSink]]:
    """A throw-away Postfix (its own directories, loopback ports) that relays to a recording
    sink and trusts XFORWARD from loopback, as deploy/README.md says."""
    # Postfix's own processes (user postfix) must reach its directories: not under pytest's
    # private temporary root.
    home = Path(tempfile.mkdtemp(prefix="frontfilter-postfix-"))
    os.chmod(home, 0o755)
    base = home / "postfix"
    for sub in ("etc", "spool", "data"):
        (base / sub).mkdir(parents=True)
    shutil.chown(base / "data", "postfix")
    port = free_port()                      # Postfix cannot say which port it got
    with RecordingSink() as sink:
        (base / "etc" / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = backend.test
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = example.org
relayhost = [127.0.0.1]:{sink.port}
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
alias_maps =
alias_database =
local_recipient_maps =
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_authorized_xforward_hosts = 127.0.0.0/8
""")
        master = Path("/etc/postfix/master.cf").read_text()
        master = re.sub(r"(?m)^smtp\s+inet.*$", f"127.0.0.1:{port} inet n - y - - smtpd", master)
        (base / "etc" / "master.cf").write_text(master)
        proc = subprocess.Popen(["postfix", "-c", str(base / "etc"), "start-fg"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            eventually(lambda: (base / "maillog").exists() and b"daemon started" in (base / "maillog").read_bytes())
            yield port, base / "maillog", sink
        finally:
            subprocess.run(["postfix", "-c", str(base / "etc"), "stop"], capture_output=True, timeout=30)
            proc.wait(20)
            shutil.rmtree(home, ignore_errors=True)


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
def test_with_forward_client_off_postfix_sees_the_relay(tmp_path: Path, postfix: tuple[int, Path, RecordingSink]) -> None:
    port, maillog, sink = postfix
    config = write_config(tmp_path, [port], backend={"mode": "sync", "forward_client": False})
    with Relay(config) as relay:
        assert send_from(relay.port, CLIENT_ADDRESS).ok
        sink.wait_for(1, timeout=30)
    logged = eventually(lambda: clients_postfix_logged(maillog), timeout=30)
    assert logged == ["client=unknown[127.0.0.1]"], logged


def send_from(port: int, source: str) -> Answer:
    """One message to the relay from `source` (a loopback address of its own)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("client.example.net")
        client.mail("alice@example.net")
        code, text = client.rcpt("bob@example.org")
        if code != 250:
            return Answer(code, text.decode(), "rcpt")
        code, text = client.data(b"Subject: through\r\n\r\nhello\r\n")
        return Answer(code, text.decode(), "data")
