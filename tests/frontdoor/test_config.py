"""Front-door configuration: every inconsistent combination is refused with file and key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from frontfilter.config import AuthMode, ConfigError, TlsMode, load_config
from frontfilter.smtp.tls import read_certificate
from tests.frontdoor.helpers import make_pki
from tests.harness import REPO

BASE = '[backend]\nservers = ["127.0.0.1:2526"]\n'
TLS = '[tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'
AUTH = '[auth]\nusers_file = "users"\n'


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "frontfilter.toml"
    path.write_text(BASE + text)
    return load_config(path)


@pytest.mark.parametrize("text, problem", [
    ('[[listener]]\nname = "mx"\n', 'listener[1].address: missing (e.g. "0.0.0.0:25")'),
    ('[[listener]]\naddress = "127.0.0.1:25"\ntls = "startls"\n',
     "listener[1].tls: 'startls' is not one of 'none', 'starttls', 'implicit'"),
    ('[server]\nlisten = ["127.0.0.1:25"]\n[[listener]]\naddress = "127.0.0.1:587"\n',
     "server.listen: use either server.listen or [[listener]] tables, not both"),
    ('[[listener]]\naddress = "127.0.0.1:465"\ntls = "implicit"\n',
     "listener[1].tls: 'implicit' needs tls.cert_file and tls.key_file"),
    (TLS + '[[listener]]\naddress = "127.0.0.1:587"\ntls = "none"\nrequire_tls = true\n',
     'listener[1].require_tls: needs tls = "starttls" or "implicit"'),
    (TLS + '[[listener]]\naddress = "127.0.0.1:587"\nauth = "required"\n',
     "listener[1].auth: needs auth.users_file"),
    (TLS + AUTH + '[[listener]]\naddress = "127.0.0.1:25"\ntls = "none"\nauth = "optional"\n',
     "listener[1].auth: AUTH is offered only inside TLS: set tls"),
    ('[[listener]]\naddress = "127.0.0.1:25"\nproxy_protocol = true\n',
     "listener[1].proxy_protocol: needs proxy.networks (the load balancers)"),
    ('[[listener]]\naddress = "127.0.0.1:25"\n[[listener]]\naddress = "127.0.0.1:25"\n',
     "listener[2].address: '127.0.0.1:25' is already used by listener[1]"),
    ('[relay]\nopen = true\n', 'relay.open_confirmation: an open relay needs open_confirmation = '
                               '"anyone may send mail anywhere through this relay"'),
    ('[relay]\nopen = true\nopen_confirmation = "yes"\n', "relay.open_confirmation: an open relay needs"),
    ('[tls]\ncert_file = "cert.pem"\n', "tls: cert_file and key_file go together"),
    ('[backend]\ntls = "none"\ntls_ca_file = "ca.pem"\n', "backend.tls_ca_file: has no effect while backend.tls = \"none\""),
    ('[backend]\ntls_ca_file = "ca.pem"\n', "backend.tls_ca_file: has no effect unless backend.tls = \"required\""),
    ('[limits]\nmax_conections = 5\n', "limits.max_conections: unknown key (did you mean 'max_connections'?)"),
    ('[auth]\nlockout_time = "soon"\n', "auth.lockout_time: 'soon' is not a duration"),
])
def test_inconsistent_front_door_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    if text.startswith("[backend]"):
        text = text.replace("[backend]\n", "")
        (tmp_path / "frontfilter.toml").write_text(BASE + text)
        call = lambda: load_config(tmp_path / "frontfilter.toml")  # noqa: E731
    else:
        call = lambda: load(tmp_path, text)  # noqa: E731
    with pytest.raises(ConfigError) as caught:
        call()
    label = str(tmp_path / "frontfilter.toml")
    assert any(line.startswith(f"{label}: {problem}") for line in caught.value.problems), caught.value.problems


def test_server_listen_becomes_inbound_listeners_with_starttls_when_a_certificate_is_set(tmp_path: Path) -> None:
    plain = load(tmp_path, '[server]\nlisten = ["127.0.0.1:2525", "[::1]:2525"]\n')
    assert [(str(l.address), l.tls, l.auth) for l in plain.listeners] == [
        ("127.0.0.1:2525", TlsMode.NONE, AuthMode.NONE), ("[::1]:2525", TlsMode.NONE, AuthMode.NONE)]
    with_tls = load(tmp_path, TLS + '[server]\nlisten = ["127.0.0.1:2525"]\n')
    assert with_tls.listeners[0].tls is TlsMode.STARTTLS
    assert with_tls.tls.cert_file == tmp_path / "cert.pem"       # relative to the config file


def test_listener_roles(tmp_path: Path) -> None:
    config = load(tmp_path, TLS + AUTH + '[proxy]\nnetworks = ["10.0.0.0/8"]\n'
                  '[[listener]]\naddress = "0.0.0.0:25"\nname = "mx"\n'
                  '[[listener]]\naddress = "0.0.0.0:587"\nname = "submission"\nrequire_tls = true\nauth = "required"\n'
                  '[[listener]]\naddress = "0.0.0.0:465"\ntls = "implicit"\nauth = "required"\n'
                  '[[listener]]\naddress = "0.0.0.0:2525"\nproxy_protocol = true\n')
    assert [l.name for l in config.listeners] == ["mx", "submission", "0.0.0.0:465", "0.0.0.0:2525"]
    assert config.listeners[1].require_tls and config.listeners[1].auth is AuthMode.REQUIRED
    assert config.listeners[2].tls is TlsMode.IMPLICIT
    assert config.auth.users_file == tmp_path / "users"
    # What the start-up log shows as server.listen is where the listeners are, not the default.
    assert [str(a) for a in config.server.listen] == ["0.0.0.0:25", "0.0.0.0:587", "0.0.0.0:465", "0.0.0.0:2525"]


def test_check_and_serve_name_an_unloadable_certificate(tmp_path: Path) -> None:
    path = tmp_path / "frontfilter.toml"
    path.write_text(BASE + TLS + f'[rules]\ndir = "{REPO / "rules"}"\n')
    for command, code in (("check", 1), ("serve", 2)):
        done = subprocess.run([sys.executable, "-m", "frontfilter", command, "--config", str(path)],
                              capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr
        assert f"{path}: tls.cert_file: {tmp_path / 'cert.pem'}: file not found" in done.stderr


def test_a_key_that_cannot_be_used_is_named_as_the_key(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path / "a", "mx.test"), make_pki(tmp_path / "b", "mx.test")
    cases = [(tmp_path / "missing-key.pem", f"tls.key_file: {tmp_path / 'missing-key.pem'}: file not found"),
             (other.key_file, "tls.key_file: cannot load certificate")]     # another certificate's key
    for key_file, expected in cases:
        path = tmp_path / "frontfilter.toml"
        path.write_text(BASE + f'[tls]\ncert_file = "{pki.cert_file}"\nkey_file = "{key_file}"\n'
                        + f'[rules]\ndir = "{REPO / "rules"}"\n')
        done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path)],
                              capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert done.returncode == 1 and f"{path}: {expected}" in done.stderr, done.stderr


def test_certificate_summary_names_the_leaf_of_a_chain_and_is_never_fatal(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "mx1.example.org")      # leaf first, then the CA: fullchain.pem
    leaf = x509.load_pem_x509_certificate(pki.cert_file.read_bytes())
    summary, expiry = read_certificate(pki.cert_file)
    assert summary["subject"] == leaf.subject.rfc4514_string()
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} GMT", summary["not_after"])
    assert expiry == leaf.not_valid_after_utc.timestamp()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert read_certificate(tmp_path / "junk.pem") == ({}, None)
    assert read_certificate(tmp_path / "missing.pem") == ({}, None)


# ---- limits that another limit would always beat ----------------------------------------------

PROXY_LISTENER = '[proxy]\nnetworks = ["10.0.0.5/32"]\n[[listener]]\naddress = "127.0.0.1:2525"\nproxy_protocol = true\n'


@pytest.mark.parametrize("text, problem", [
    ('[server]\ndata_timeout = "30m"\nsession_timeout = "20m"\n',
     "server.data_timeout: must be less than server.session_timeout (1800s >= 1200s): it could never fire"),
    ('[server]\ncommand_timeout = "10m"\nsession_timeout = "10m"\ndata_timeout = "5m"\n',
     "server.command_timeout: must be less than server.session_timeout (600s >= 600s): it could never fire"),
    ('[server]\nsession_timeout = "1m"\ncommand_timeout = "30s"\ndata_timeout = "50s"\n'
     '[inspection]\ntimeout = "1m"\n',
     "inspection.timeout: must be less than server.session_timeout (60s >= 60s): it could never fire"),
    ('[server]\nsession_timeout = "1m"\ncommand_timeout = "30s"\ndata_timeout = "50s"\n'
     '[inspection]\ntimeout = "20s"\n[antivirus]\naddress = "/run/clamd.sock"\ntimeout = "2m"\n',
     "antivirus.timeout: must be less than server.session_timeout (120s >= 60s): it could never fire"),
    ('[server]\nmax_errors = 3\n[limits]\ntarpit_after = 3\n',
     "limits.tarpit_after: must be less than server.max_errors (3 >= 3): "
     "the session is closed before the tarpit starts"),
    ('[limits]\nmax_connections = 10\nmax_connections_per_ip = 10\n',
     "limits.max_connections_per_ip: must be less than limits.max_connections (10 >= 10): "
     "the total limit is always reached first"),
    # The per-address count is the service's, the total each worker's: with 2 workers, 20.
    ('[server]\nworkers = 2\n[limits]\nmax_connections = 10\nmax_connections_per_ip = 20\n',
     "limits.max_connections_per_ip: must be less than limits.max_connections x server.workers (20 >= 20): "
     "the total limit is always reached first"),
    (PROXY_LISTENER + '[server]\ncommand_timeout = "10s"\n',
     "proxy.timeout: must be less than server.command_timeout (10s >= 10s): it could never fire"),
    ('[server]\nmax_errors = 0\n', "server.max_errors: must be at least 1"),
    ('[server]\nmax_commands = 0\n', "server.max_commands: must be at least 1"),
])
def test_check_refuses_a_limit_that_another_always_beats(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "frontfilter.toml"
    path.write_text(BASE + text)
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path),
                           "--rules", str(REPO / "rules")],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"{path}: {problem}"]


@pytest.mark.parametrize("text", [
    '[limits]\ntarpit_after = 10\ntarpit_delay = "0s"\n',       # no tarpit: nothing hidden
    '[limits]\nmax_connections = 0\nmax_connections_per_ip = 20\n',   # 0: no total limit
    '[limits]\nmax_connections = 20\nmax_connections_per_ip = 0\n',
    # 4 workers of 100 sessions: an address's 150 (counted for the service) can still bite.
    '[server]\nworkers = 4\n[limits]\nmax_connections = 100\nmax_connections_per_ip = 150\n',
    '[proxy]\ntimeout = "10m"\n',                               # no PROXY listener: unused
])
def test_limits_that_do_not_hide_each_other_are_accepted(tmp_path: Path, text: str) -> None:
    load(tmp_path, text)


# ---- settings that work but hurt ----------------------------------------------------------------

def test_check_warns_about_queue_mode_without_recipient_verification_and_still_passes(tmp_path: Path) -> None:
    rules = f'[rules]\ndir = "{REPO / "rules"}"\n'
    for verify, warned in (("false", True), ("true", False)):
        path = tmp_path / "frontfilter.toml"
        path.write_text(f'[backend]\nservers = ["127.0.0.1:2526"]\nmode = "queue"\nverify_recipients = {verify}\n'
                        + rules)
        done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path)],
                              capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert done.returncode == 0 and done.stdout.startswith(f"{path}: OK"), done.stderr
        assert (f"{path}: backend.verify_recipients: warning: " in done.stderr) is warned, done.stderr
        assert ("backscatter" in done.stderr) is warned


def test_the_shipped_configs_verify_recipients() -> None:
    for shipped in (REPO / "deploy" / "frontfilter.example.toml", REPO / "dev" / "frontfilter.toml"):
        assert load_config(shipped).backend.verify_recipients, shipped


def test_check_names_file_and_key_of_a_rules_dir_that_is_not_there(tmp_path: Path) -> None:
    path = tmp_path / "frontfilter.toml"
    path.write_text(BASE + f'[rules]\ndir = "{tmp_path / "nowhere"}"\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"{path}: rules.dir: {tmp_path / 'nowhere'}: not a directory"


def test_make_check_passes_on_the_shipped_configs() -> None:
    done = subprocess.run(["make", "-s", "check"], capture_output=True, text=True, cwd=REPO, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK (") == 2


def test_check_before_the_first_start_warns_about_systemd_credentials_instead_of_failing(tmp_path: Path) -> None:
    # The deploy guide's LoadCredential paths exist only while the service runs.
    credentials = "/run/credentials/frontfilter-test-absent.service"
    pki = make_pki(tmp_path, "mx.test")
    path = tmp_path / "frontfilter.toml"
    path.write_text(BASE + f'[tls]\ncert_file = "{pki.cert_file}"\nkey_file = "{credentials}/tls.key"\n'
                    + f'[auth]\nusers_file = "{credentials}/users"\n[rules]\ndir = "{REPO / "rules"}"\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith(f"{path}: OK"), done.stderr
    for key, name in (("tls.key_file", "tls.key"), ("auth.users_file", "users")):
        assert (f"{path}: {key}: warning: {credentials}/{name}: a systemd credential (LoadCredential), "
                "there only while the service runs: not checked here") in done.stderr


def test_port_0_is_a_port_to_listen_on_but_not_a_backend(tmp_path: Path) -> None:
    """Listening on port 0 takes a free port (the relay logs it): for tests and side-by-side
    instances. Two listeners on port 0 do not clash; a backend on port 0 is no address."""
    config = load(tmp_path, '[[listener]]\nname = "a"\naddress = "127.0.0.1:0"\n'
                            '[[listener]]\nname = "b"\naddress = "[::1]:0"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    assert [str(listener.address) for listener in config.listeners] == ["127.0.0.1:0", "[::1]:0"]
    assert config.metrics.listen is not None and config.metrics.listen.port == 0
    (tmp_path / "backend.toml").write_text('[backend]\nservers = ["127.0.0.1:0"]\n')
    with pytest.raises(ConfigError, match=r"backend.servers: item 1: '127.0.0.1:0' is not host:port"):
        load_config(tmp_path / "backend.toml")


def test_check_says_how_much_data_the_relay_may_hold_and_refuses_a_bound_below_one_message(tmp_path: Path) -> None:
    rules = REPO / "rules"
    good = tmp_path / "good.toml"
    good.write_text(BASE + f'[server]\nworkers = 2\n[rules]\ndir = "{rules}"\n[limits]\nmax_data_in_memory = "64MiB"\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(good)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{good}: DATA in memory: at most 64 MiB a worker, 128 MiB for 2 workers" in done.stdout
    assert (f"{good}: DATA in memory: at most 64 MiB a worker, 128 MiB for 2 workers (limits.max_data_in_memory);"
            " a message being received holds at most 1 MiB of it, the rest is in a file in the spool directory"
            " (limits.data_spill_size)") in done.stdout.splitlines()
    no_spill = tmp_path / "no-spill.toml"
    no_spill.write_text(BASE + f'[rules]\ndir = "{rules}"\n[limits]\nmax_data_in_memory = "64MiB"\n'
                        'data_spill_size = 0\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(no_spill)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert f"{no_spill}: DATA in memory: at most 64 MiB a worker (limits.max_data_in_memory)" \
        in done.stdout.splitlines()        # no spill: the whole message may be held
    unbounded = tmp_path / "unbounded.toml"
    unbounded.write_text(BASE + f'[rules]\ndir = "{rules}"\n[limits]\nmax_data_in_memory = 0\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(unbounded)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert f"{unbounded}: DATA in memory: no bound (limits.max_data_in_memory = 0): up to 12500 MiB a worker" \
        in done.stdout          # 500 connections x 25 MiB
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + f'[rules]\ndir = "{rules}"\n[limits]\nmax_data_in_memory = "1MiB"\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(bad)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1
    assert "limits.max_data_in_memory: must be at least server.max_message_size" in done.stderr


def test_check_names_every_bad_dkim_dmarc_and_spf_setting_at_once(tmp_path: Path) -> None:
    """The authentication checks' bounds, as an administrator meets them: one line per key,
    all of them in one run, and exit 1."""
    path = tmp_path / "frontfilter.toml"
    path.write_text(BASE + '[dkim]\nenabled = true\ntimeout = "0s"\nconcurrency = 0\nmax_signatures = 51\n'
                           'min_key_bits = 256\n[dmarc]\nenabled = true\ntimeout = "0s"\n'
                           '[spf]\nenabled = true\nconcurrency = 0\n')
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert sorted(done.stderr.splitlines()) == sorted(f"{path}: {line}" for line in (
        "dkim.timeout: must be more than 0s",
        "dmarc.timeout: must be more than 0s",
        "dkim.concurrency: must be at least 1",
        "dkim.max_signatures: must be between 1 and 50",
        "dkim.min_key_bits: must be between 512 and 16384 (RFC 8301: 1024)",
        "spf.concurrency: must be at least 1"))
