"""Test certificates, a TLS-only backend, users files, swaks and PROXY headers for the front-door tests.

Certificates are made by trustme in memory and written to the test's folder: a test CA, a
server certificate for the relay ("mx.test", 127.0.0.1) and one for the backend ("backend.test").
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from frontfilter.smtp.passwd import hash_password, set_user
from tests.harness import RecordingSink, write_config
from tests.requires import installed

SWAKS = shutil.which("swaks")
needs_swaks = installed(SWAKS is not None, "swaks is not installed (apt-get install swaks "
                        "libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl)")
SWAKS_TIMEOUT = 60.0


@dataclass
class Pki:
    """A test CA and files for one server certificate issued by it."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


def make_pki(directory: Path, *names: str, prefix: str = "relay") -> Pki:
    """A fresh CA and a certificate for `names` (written as chain + key), in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*(names or ("mx.test", "127.0.0.1")))
    ca_file = directory / f"{prefix}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file = directory / f"{prefix}-chain.pem"
    key_file = directory / f"{prefix}-key.pem"
    with open(cert_file, "wb") as handle:
        for blob in leaf.cert_chain_pems:      # leaf first, then the chain: fullchain.pem
            handle.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key_file))
    return Pki(ca, ca_file, cert_file, key_file)


def write_users(path: Path, users: dict[str, str]) -> Path:
    for name, password in users.items():
        set_user(path, name, hash_password(password.encode()))
    return path


class TlsRecordingSink(RecordingSink):
    """A backend that requires STARTTLS (530 to MAIL before it) and notes whether each message
    came over TLS."""

    def __init__(self, pki: Pki, **kwargs: Any):
        super().__init__(**kwargs)
        self.pki = pki
        self.tls_flags: list[bool] = []
        self._flags_lock = threading.Lock()

    def smtp_options(self) -> dict[str, Any]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert_file, self.pki.key_file)
        return {"tls_context": context, "require_starttls": True}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._flags_lock:
            self.tls_flags.append(session.ssl is not None)
        return await super().handle_DATA(server, session, envelope)


def swaks(*args: str, timeout: float = SWAKS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    return subprocess.run([SWAKS, "--hide-informational", "--timeout", "30", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def proxy_v2(source: str, source_port: int, destination: str = "127.0.0.1", port: int = 25) -> bytes:
    """A PROXY protocol v2 header for TCP over IPv4."""
    body = socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!HH", source_port, port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def connect_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port whose source address is `source` (any 127/8)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def read_reply(sock: socket.socket) -> str:
    """One whole SMTP reply, or "" when the server closed the connection first."""
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:     # closed with our bytes unread: the kernel sends RST
            chunk = b""
        if not chunk:
            return data.decode("utf-8", "replace")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and all(len(line) >= 4 for line in lines[:-1]) and lines[-2][3:4] == b" ":
            return data.decode("utf-8", "replace")


def frontdoor_config(directory: Path, backend_ports: list[int], listeners: list[dict[str, Any]],
                     **sections: dict[str, Any]) -> Path:
    """harness.write_config with [[listener]] tables instead of server.listen."""
    path = write_config(directory, backend_ports, **sections)
    lines = path.read_text().splitlines()
    server_listen = next(i for i, line in enumerate(lines) if line.startswith("listen = "))
    del lines[server_listen]                     # the first `listen` is [server]'s
    for listener in listeners:
        lines.append("[[listener]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in listener.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value from the relay's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
