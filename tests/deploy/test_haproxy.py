"""deploy/haproxy/haproxy.cfg with the real HAProxy in front of two real frontfilter instances.

`haproxy -c` checks the file as shipped. Then its `defaults`, `frontend` and `backend` sections
run as written, bar the addresses (loopback ports instead of the example's) and a `global`
section fit for a test (no chroot, no daemon, no stats socket): mail sent to HAProxy reaches
the backend through both instances, HAProxy's SMTP health check (PROXY v2 LOCAL, then EHLO)
keeps them up, and each instance logs the client's own address and port — which only the PROXY
v2 header can have told it.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import threading
import time
from pathlib import Path


from tests.harness import RecordingSink, Relay, free_port, write_config
from tests.requires import installed

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = installed(Path(HAPROXY).exists(), "haproxy is not installed (make test installs it)")


def test_the_shipped_haproxy_cfg_is_valid() -> None:
    result = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = line.strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def balancer_config(front_port: int, instance_ports: list[int], check_interval: str = "") -> str:
    parts = sections(CONFIG.read_text())
    frontend = next(name for name in parts if name.startswith("frontend "))
    backend = next(name for name in parts if name.startswith("backend "))
    front = [line for line in parts[frontend] if not line.strip().startswith("bind ")]
    back = [line for line in parts[backend] if not line.strip().startswith("server ")]
    if check_interval:
        back.append(f"    default-server inter {check_interval}")
    servers = [f"    server ff{i} 127.0.0.1:{port}" for i, port in enumerate(instance_ports, 1)]
    return "\n".join([
        "global", "    maxconn 100",
        "defaults", *parts["defaults"],
        frontend, f"    bind 127.0.0.1:{front_port}", *front,
        backend, *back, *servers,
    ]) + "\n"


def instance_config(tmp_path: Path, backend_port: int) -> Path:
    """A frontfilter behind the balancer: its listener expects PROXY from 127.0.0.1 only."""
    port = free_port()
    directory = tmp_path / f"ff-{port}"
    directory.mkdir()
    path = write_config(directory, [backend_port], port=port,
                        extra=f'[[listener]]\nname = "mx"\naddress = "127.0.0.1:{port}"\nproxy_protocol = true\n'
                              '[proxy]\nnetworks = ["127.0.0.1/32"]\n')
    text = re.sub(r"(?m)^listen = .*\n", "", path.read_text())     # [[listener]] replaces it
    path.write_text(text)
    return path


def test_mail_flows_through_haproxy_to_every_instance_with_the_real_client_address(tmp_path: Path) -> None:
    with RecordingSink() as backend:
        relays = [Relay(instance_config(tmp_path, backend.port)).start() for _ in range(2)]
        front_port, dead_port = free_port(), free_port()
        cfg = tmp_path / "haproxy.cfg"
        # A third server that is not there: proof that the health checks run (it goes DOWN)
        # while the real instances, checked the same way, stay UP.
        cfg.write_text(balancer_config(front_port, [relay.port for relay in relays] + [dead_port],
                                       check_interval="100ms"))
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(
            line.decode(errors="replace") for line in iter(haproxy.stdout.readline, b"")), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 15
            while not any("ff3 is DOWN" in line for line in output) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)                   # five more check rounds for ff1 and ff2
            sent: list[int] = []
            for n in range(4):
                with smtplib.SMTP("127.0.0.1", front_port, timeout=10) as client:
                    client.sendmail("alice@example.net", ["bob@example.org"],
                                    f"Subject: via haproxy {n}\r\n\r\nhi\r\n".encode())
                    sent.append(client.sock.getsockname()[1])
            assert len(backend.wait_for(4)) == 4
            logged = {}
            for index, relay in enumerate(relays):
                for event in relay.events("message"):
                    logged[event["client"]] = index
            assert sorted(logged) == sorted(f"127.0.0.1:{port}" for port in sent), logged
            assert set(logged.values()) == {0, 1}, "leastconn should have used both instances"
        finally:
            haproxy.terminate()
            haproxy.wait(10)
            reader.join(5)
            haproxy.stdout.close()
            for relay in relays:
                relay.stop()
        text = "".join(output)
        assert "ff3 is DOWN" in text, text
        assert not re.search(r"ff[12] is DOWN|ALERT", text), text
        for relay in relays:
            assert not relay.events("connection_refused"), relay.events("connection_refused")
