"""The administrator's HTTP endpoint on `[metrics] listen`: /metrics, /healthz, /readyz.

- `GET /metrics`: the Prometheus text format (0.0.4) of `metrics.REGISTRY`.
- `GET /healthz`: 200 "ok" whenever the event loop runs — it is answered *by* the SMTP event
  loop, so a wedged loop (the failure that matters) shows as a timeout, not as "alive".
- `GET /readyz`: 200 "ready" or 503 "not ready", then one line per check (see `endpoint/health.py`).
  The lines name the check and a short reason, never a path or a backend reply.
- `HEAD` for each; anything else 404 (unknown path) or 405 (other method).

Design: an asyncio server on the relay's own event loop, one request per connection
(`Connection: close`), rather than prometheus_client's `start_http_server` (a thread per
connection, no read timeout: a slowloris holds threads for ever) or a thread of our own (the GIL
means it competes with the loop all the same, and `/healthz` would no longer prove the loop
turns). Generating the exposition runs on the loop: ~3 ms for ~600 series, and it is cached
for `EXPOSITION_CACHE`, so scrapes in a tight loop cost at most one generation per second
(with several workers the cache is one file all share, made in a thread by one worker at a
time: whichever worker answers, a counter never goes back).
Measured (`python -m tests.observability.scrape_cost`, 2 cores): 8 hostile clients scraping
~6000 times a second leave the loop's timer lateness at p99 4.5 ms (idle: 0.5 ms); without the
cache the same attack gives p50 16 ms, p99 51 ms.

Bounds, each against a slow or hostile client (the endpoint belongs on a management network,
but must not be the way to take the relay down):
- `MAX_CONNECTIONS` connections served at once. The next `MAX_CONNECTIONS` get `503` once their
  request head is in (or after `REFUSE_TIMEOUT`): closing a socket with an unread request
  makes the kernel send a reset that destroys the 503 in flight. Past twice the limit a
  connection is reset at once, unanswered.
- `REQUEST_TIMEOUT` for the whole request head, however slowly it trickles (slowloris): 408.
- `MAX_REQUEST_BYTES` of request line and headers: 431. A body is never read.
- `WRITE_TIMEOUT` to take the response: a client that stops reading is cut (abort).
Memory is therefore bounded by 2 x MAX_CONNECTIONS x (MAX_REQUEST_BYTES + one exposition).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from frontfilter import metrics, observe
from frontfilter.config import HostPort
from frontfilter.endpoint.health import Health
from frontfilter.units import SECONDS, KiB

MAX_CONNECTIONS = 16             # Prometheus HA pairs, a blackbox probe, an admin's curl: < 16
REQUEST_TIMEOUT = 5 * SECONDS    # a scraper sends its request in one packet
MAX_REQUEST_BYTES = 8 * KiB      # Prometheus sends ~300 bytes of request head
WRITE_TIMEOUT = 10 * SECONDS     # Prometheus' default scrape_timeout is 10 s too
REFUSE_TIMEOUT = 1 * SECONDS     # how long a connection over the limit may take to ask
EXPOSITION_CACHE = 1 * SECONDS   # shorter than any sane scrape interval

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"
_INDEX = b"frontfilter\n/metrics  Prometheus metrics\n/healthz  liveness\n/readyz   readiness\n"


class HttpEndpoint:
    """The listening endpoint. `start()` binds (OSError when it cannot), `stop()` closes it all."""

    def __init__(self, health: Health, *, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 max_request_bytes: int = MAX_REQUEST_BYTES, cache_seconds: float = EXPOSITION_CACHE,
                 exposition: Callable[[], bytes] | None = None):
        self.health = health
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_request_bytes = max_request_bytes
        self.cache_seconds = cache_seconds
        registry = metrics.exposition_registry()    # all workers' values when there are several
        self._generate = exposition or (lambda: generate_latest(registry))
        self._shared = exposition is None          # a test's own exposition is not the workers'
        self._cached: tuple[float, bytes] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._serving = 0
        self.address = ""

    @property
    def connections(self) -> int:
        """Connections being served now (at most max_connections; the others got 503)."""
        return self._serving

    async def start(self, listen: HostPort | None = None, sock: socket.socket | None = None) -> str:
        """Listen on `listen` (or an already bound `sock`); returns the address as host:port."""
        if sock is not None:
            self._server = await asyncio.start_server(self._connected, sock=sock,
                                                      limit=self.max_request_bytes)
        else:
            assert listen is not None
            self._server = await asyncio.start_server(
                self._connected, listen.host, listen.port, limit=self.max_request_bytes,
                reuse_address=True, backlog=64)
        name = self._server.sockets[0].getsockname()
        self.address = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Reset the connections still open: their tasks see the reset and end on their own
        # (a cancelled stream-callback task is reported as an error by asyncio 3.11).
        for writer in list(self._clients.values()):
            writer.transport.abort()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=self.write_timeout)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ---- one connection -------------------------------------------------------------------

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= 2 * self.max_connections:
            writer.transport.abort()        # far over the limit: a reset, no answer
            observe.http_request("other", 503, _peer(writer))
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            if self._serving >= self.max_connections:
                await self._refuse(reader, writer)
            else:
                self._serving += 1
                try:
                    await self._serve(reader, writer)
                finally:
                    self._serving -= 1
        except (ConnectionError, OSError):
            writer.transport.abort()
        except asyncio.CancelledError:
            # Only the loop shutting down cancels these; end quietly (see stop()).
            writer.transport.abort()
        finally:
            del self._clients[task]

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Over the limit: take the request head (briefly), answer 503, close."""
        try:
            async with asyncio.timeout(min(REFUSE_TIMEOUT, self.request_timeout)):
                await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            pass
        await self._send(writer, 503, b"too many connections\n", "other", _peer(writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _peer(writer)
        try:
            async with asyncio.timeout(self.request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            await self._send(writer, 408, b"request too slow\n", "other", client)
            return
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n", "other", client)
            return
        except asyncio.IncompleteReadError:
            writer.close()                  # the client went away before asking anything
            return
        method, path, problem = _parse(head)
        if problem:
            await self._send(writer, 400, b"bad request\n", "other", client)
            return
        label = path if path in metrics.HTTP_PATHS else "other"
        if path not in ("/", "/metrics", "/healthz", "/readyz"):
            await self._send(writer, 404, b"not found: try /metrics, /healthz or /readyz\n", label, client)
            return
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"only GET and HEAD\n", label, client,
                             extra=b"Allow: GET, HEAD\r\n")
            return
        head_only = method == "HEAD"
        if path == "/metrics":
            await self._send(writer, 200, await self._exposition(), label, client, head_only,
                             content_type=CONTENT_TYPE_PLAIN_0_0_4)
        elif path == "/healthz":
            await self._send(writer, 200, b"ok\n", label, client, head_only)
        elif path == "/readyz":
            checks = self.health.checks()
            ready = all(check.ok for check in checks)
            body = ("ready\n" if ready else "not ready\n") + "".join(
                f"{check.name}: {'ok' if check.ok else 'FAILING'}: {check.detail}\n" for check in checks)
            await self._send(writer, 200 if ready else 503, body.encode(), label, client, head_only)
        else:
            await self._send(writer, 200, _INDEX, label, client, head_only)

    async def _exposition(self) -> bytes:
        if metrics.MULTIPROCESS and self._shared:
            # One cache for all workers, made in turn (metrics.shared_exposition): a thread,
            # since another worker may hold the lock while it generates.
            return await asyncio.to_thread(metrics.shared_exposition, self._generate, self.cache_seconds)
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.cache_seconds:
            self._cached = (now, self._generate())
        return self._cached[1]

    async def _send(self, writer: asyncio.StreamWriter, code: int, body: bytes, path: str,
                    client: str | None, head_only: bool = False, content_type: str = _TEXT,
                    extra: bytes = b"") -> None:
        writer.write(_response(code, body, head_only, content_type, extra))
        observe.http_request(path, code, client)
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except TimeoutError:
            writer.transport.abort()        # it stopped reading: cut, do not wait for it
        writer.close()


def _response(code: int, body: bytes, head_only: bool, content_type: str = _TEXT,
              extra: bytes = b"") -> bytes:
    head = (f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n").encode() + extra + b"\r\n"
    return head if head_only else head + body


def _parse(head: bytes) -> tuple[str, str, bool]:
    """(method, path without query, problem) from a request head."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
        return "", "", True
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return "", "", True
    return method, target.split("?", 1)[0], False


def _peer(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
