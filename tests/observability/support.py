"""Shared by the observability tests: a relay with its HTTP endpoint, and a small HTTP client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness import RecordingSink, Relay, write_config

WAIT = 15.0      # bound on every wait here


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path -> (status, body). The endpoint closes after each answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: frontfilter\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()




@contextmanager
def relay_with_endpoint(directory: Path, backend_ports: list[int] | None = None,
                        **sections: dict[str, Any]) -> Iterator[tuple[Relay, int]]:
    """A relay (sync mode) with `[metrics] listen` on an ephemeral port; yields (relay, http port).
    Without `backend_ports`, a recording sink is started as the backend."""
    metrics_section = {"listen": "127.0.0.1:0", **sections.pop("metrics", {})}
    backend = {"mode": "sync", **sections.pop("backend", {})}
    if backend_ports is None:
        with RecordingSink() as sink:
            config = write_config(directory, [sink.port], metrics=metrics_section, backend=backend, **sections)
            with Relay(config) as relay:
                yield relay, relay.http_port
    else:
        config = write_config(directory, backend_ports, metrics=metrics_section, backend=backend, **sections)
        with Relay(config) as relay:
            yield relay, relay.http_port
