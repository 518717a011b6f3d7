"""The /metrics, /healthz, /readyz endpoint in-process: what it serves, and every bound against a
slow or hostile client (slowloris, huge heads, too many connections, a client that never reads)
while the same event loop keeps serving others."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from frontfilter import metrics
from frontfilter.endpoint.health import Check
from frontfilter.endpoint.httpd import HttpEndpoint
from frontfilter.config import HostPort

WAIT = 10.0      # bound on every wait in these tests


class StubHealth:
    def __init__(self, ok: bool = True):
        self.ok = ok

    def checks(self) -> list[Check]:
        return [Check("rules", True, "3 rules loaded"),
                Check("spool", self.ok, "writable" if self.ok else "not writable: Read-only file system")]


def run(test: Callable[[HttpEndpoint, int], Awaitable[None]], **options: Any) -> None:
    """Start an endpoint on 127.0.0.1:<ephemeral>, run `test`, stop everything."""
    async def main() -> None:
        endpoint = HttpEndpoint(options.pop("health", StubHealth()), **options)
        address = await endpoint.start(HostPort("127.0.0.1", 0))
        try:
            await asyncio.wait_for(test(endpoint, int(address.rsplit(":", 1)[1])), WAIT * 2)
        finally:
            await endpoint.stop()
    asyncio.run(main())


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, read the whole response (the server closes), parse it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def eventually(condition: Callable[[], bool]) -> bool:
    """Poll `condition` until it holds or WAIT seconds pass."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: mx\r\nAccept: */*\r\n\r\n".encode()


# ---- what it serves ---------------------------------------------------------------------------

def test_metrics_are_served_in_the_text_format() -> None:
    async def check(endpoint: HttpEndpoint, port: int) -> None:
        status, headers, body = await request(port, get("/metrics"))
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert int(headers["Content-Length"]) == len(body)
        assert headers["Connection"] == "close"
        names = {family.name for family in text_string_to_metric_families(body.decode())}
        assert {"frontfilter_messages", "frontfilter_build_info", "process_cpu_seconds"} <= names
        status, headers, body = await request(port, get("/metrics", "HEAD"))
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    run(check)


def test_health_readiness_and_errors() -> None:
    health = StubHealth(ok=False)

    async def check(endpoint: HttpEndpoint, port: int) -> None:
        assert (await request(port, get("/healthz")))[::2] == (200, b"ok\n")
        status, _, body = await request(port, get("/readyz"))
        assert status == 503
        assert body.decode().splitlines() == [
            "not ready", "rules: ok: 3 rules loaded",
            "spool: FAILING: not writable: Read-only file system"]
        health.ok = True
        status, _, body = await request(port, get("/readyz?verbose=1"))
        assert status == 200 and body.startswith(b"ready\n")
        assert (await request(port, get("/")))[0] == 200
        assert (await request(port, get("/admin")))[0] == 404
        status, headers, _ = await request(port, get("/metrics", "POST"))
        assert status == 405 and headers["Allow"] == "GET, HEAD"
        assert (await request(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"))[0] == 400
        assert (await request(port, b"GET http://evil/metrics HTTP/1.1\r\n\r\n"))[0] == 400
    run(check, health=health)
    assert metrics.REGISTRY.get_sample_value(
        "frontfilter_http_requests_total", {"path": "/readyz", "code": "503"}) >= 1


def test_exposition_is_generated_at_most_once_per_cache_period() -> None:
    generated = []

    def exposition() -> bytes:
        generated.append(1)
        return b"# nothing\n"

    async def check(endpoint: HttpEndpoint, port: int) -> None:
        for _ in range(20):
            assert (await request(port, get("/metrics")))[0] == 200
        assert len(generated) == 1
        endpoint.cache_seconds = 0
        await request(port, get("/metrics"))
        assert len(generated) == 2
    run(check, exposition=exposition, cache_seconds=3600)


# ---- hostile clients --------------------------------------------------------------------------

def test_slowloris_gets_408_and_the_loop_serves_others_meanwhile() -> None:
    async def check(endpoint: HttpEndpoint, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metr")                 # ... and never the rest
        for _ in range(5):                         # the same loop answers everyone else
            assert (await request(port, get("/healthz")))[0] == 200
        answer = await asyncio.wait_for(reader.read(), WAIT)
        assert answer.startswith(b"HTTP/1.1 408 ")
        writer.close()
        await writer.wait_closed()
    run(check, request_timeout=0.5)


def test_a_huge_request_head_gets_431_without_being_buffered() -> None:
    async def check(endpoint: HttpEndpoint, port: int) -> None:
        head = b"GET /metrics HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await request(port, head))[0] == 431
    run(check, max_request_bytes=4096)


def test_connections_past_the_limit_get_503_at_once_then_service_resumes() -> None:
    async def check(endpoint: HttpEndpoint, port: int) -> None:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await eventually(lambda: endpoint.connections == 3)     # all three taken
        status, _, body = await request(port, get("/metrics"))
        assert (status, body) == (503, b"too many connections\n")
        for reader, writer in idle:                              # they time out (408) ...
            assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 408 ")
            writer.close()
            await writer.wait_closed()
        assert (await request(port, get("/metrics")))[0] == 200  # ... and service resumes
    run(check, max_connections=3, request_timeout=1.0)


def test_a_client_that_never_reads_is_cut_after_the_write_timeout() -> None:
    big = b"# HELP x y\n" + b"x 1\n" * 2_000_000                    # ~8 MB: far over socket buffers

    async def check(endpoint: HttpEndpoint, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(get("/metrics"))
            assert await eventually(lambda: bool(endpoint._clients))    # it took the request,
            assert await eventually(lambda: not endpoint._clients)      # then cut the non-reader
            assert (await request(port, get("/healthz")))[0] == 200
        finally:
            sock.close()
    run(check, write_timeout=0.5, exposition=lambda: big)


def test_a_flood_of_scrapes_and_stalled_clients_leaves_the_loop_serving() -> None:
    """64 stalled connections, then 300 back-to-back scrapes: a plain TCP echo on the same loop
    (standing in for SMTP) answers each of its round trips all along."""
    async def check(endpoint: HttpEndpoint, port: int) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        echo_port = server.sockets[0].getsockname()[1]

        async def scrapes(count: int) -> list[int]:
            codes = []
            for _ in range(count):
                try:
                    codes.append((await request(port, get("/metrics")))[0])
                except ConnectionResetError:       # past twice the limit: reset, unanswered
                    codes.append(0)
            return codes

        async def attack() -> tuple[list[int], list[int]]:
            stalled = []
            for _ in range(64):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /")
                stalled.append(writer)
            while_stalled = await scrapes(100)
            for writer in stalled:
                writer.close()
                with contextlib.suppress(ConnectionError):   # the server reset half of them
                    await writer.wait_closed()
            await asyncio.sleep(0.1)
            return while_stalled, await scrapes(200)

        async def smtp_like() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)
            for n in range(300):
                writer.write(b"NOOP %d\r\n" % n)
                assert await asyncio.wait_for(reader.readline(), WAIT) == b"NOOP %d\r\n" % n
                await asyncio.sleep(0)
            writer.close()
            await writer.wait_closed()
            return 300

        (while_stalled, after), answered = await asyncio.gather(attack(), smtp_like())
        assert answered == 300
        assert set(while_stalled) <= {0, 503}     # every slot held by a stalled client
        assert set(after) == {200}                # slots free again: all served
        server.close()
        await server.wait_closed()
    run(check, request_timeout=5.0)
