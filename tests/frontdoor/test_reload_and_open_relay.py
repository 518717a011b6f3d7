"""SIGHUP reloads the certificate and the users without dropping a session; the open relay is
explicit and loud."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from frontfilter.config import OPEN_RELAY_CONFIRMATION
from tests.frontdoor.helpers import frontdoor_config, make_pki, write_users
from tests.harness import REPO, RawClient, RecordingSink, Relay, write_config

MESSAGE = b"From: alice@example.org\r\nTo: x@foreign.example\r\nSubject: reload\r\n\r\nHi.\r\n"


def install(source: Path, target: Path) -> None:
    """Replace a file the way certbot's deploy hooks do: a new file renamed over the old."""
    temp = target.with_suffix(".new")
    shutil.copyfile(source, temp)
    os.replace(temp, target)


def starttls(port: int, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=15)
    try:
        client.ehlo("client.test")
        client.starttls(context=context)
        client.ehlo("client.test")
    except BaseException:
        client.close()
        raise
    return client


def test_sighup_reloads_certificate_and_users_without_dropping_sessions(tmp_path: Path) -> None:
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    live_cert, live_key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    install(old.cert_file, live_cert)
    install(old.key_file, live_key)
    users = write_users(tmp_path / "users", {"alice": "alice password"})
    with RecordingSink() as sink:
        config = frontdoor_config(tmp_path, [sink.port],
                                  listeners=[{"address": "127.0.0.1:0", "auth": "optional"}],
                                  tls={"cert_file": str(live_cert), "key_file": str(live_key)},
                                  auth={"users_file": str(users)})
        with Relay(config) as relay:
            port = relay.port
            running = starttls(port, old.client_context())      # a session in flight
            running.login("alice", "alice password")

            install(new.cert_file, live_cert)
            install(new.key_file, live_key)
            added = subprocess.run([sys.executable, "-m", "frontfilter", "passwd", str(users), "bob"],
                                   input="bob password\n", capture_output=True, text=True, cwd=REPO,
                                   timeout=60, check=False)
            assert added.returncode == 0, added.stderr
            relay.signal(signal.SIGHUP)
            relay.wait_event("tls_certificate_loaded", reload=True)
            relay.wait_event("users_loaded", reload=True, users=2)

            with starttls(port, new.client_context()) as fresh:      # new handshakes: new cert
                fresh.login("bob", "bob password")
            with pytest.raises(ssl.SSLCertVerificationError):
                starttls(port, old.client_context())
            # The session that started before the reload goes on, on its old certificate.
            running.sendmail("alice@example.org", ["x@foreign.example"], MESSAGE)
            running.quit()
            assert sink.wait_for(1)[0].recipients == ["x@foreign.example"]

            # A broken certificate on reload is refused; the relay keeps the last good one.
            live_cert.write_text("not a certificate\n")
            relay.signal(signal.SIGHUP)
            refused = relay.wait_event("tls_certificate_refused")
            assert refused["kept_previous"] is True and "cannot load certificate" in refused["problems"][0]
            with starttls(port, new.client_context()) as still:
                assert still.noop()[0] == 250


def test_a_reload_says_when_a_file_is_a_systemd_credential_copied_at_start(tmp_path: Path) -> None:
    # As the deploy guide's LoadCredential drop-in sets it up: the relay reads copies made at
    # start, so a reload cannot see a changed password; it says so instead of seeming to work.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    pki = make_pki(tmp_path / "tls")
    users = write_users(credentials / "users", {"alice": "alice password"})
    with RecordingSink() as sink:
        config = frontdoor_config(tmp_path, [sink.port],
                                  listeners=[{"address": "127.0.0.1:0", "auth": "optional"}],
                                  tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
                                  auth={"users_file": str(users)})
        with Relay(config, env={"CREDENTIALS_DIRECTORY": str(credentials)}) as relay:
            relay.signal(signal.SIGHUP)
            warned = relay.wait_event("credential_not_reloaded")
            relay.wait_event("users_loaded", reload=True)
    assert warned["key"] == "auth.users_file" and warned["file"] == str(users)
    assert "systemctl restart" in warned["detail"]
    assert len(relay.events("credential_not_reloaded")) == 1     # the certificate is not a credential here


def test_open_relay_needs_its_confirmation_and_warns_at_start(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        refused = write_config(tmp_path, [sink.port], relay={"domains": ["example.org"], "open": True})
        done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(refused)],
                              capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert done.returncode == 1 and "relay.open_confirmation" in done.stderr

        config = write_config(tmp_path, [sink.port], relay={
            "domains": ["example.org"], "open": True, "open_confirmation": OPEN_RELAY_CONFIRMATION})
        with Relay(config) as relay:
            relay.wait_event("open_relay")
            with RawClient(relay.port) as client:
                client.read_reply()
                client.command("EHLO client.test")
                client.command("MAIL FROM:<a@example.net>")
                assert client.command("RCPT TO:<x@foreign.example>").startswith("250")
                # Address tricks are still refused on an open relay.
                assert client.command("RCPT TO:<x%y@foreign.example>").startswith("550 5.7.1")
