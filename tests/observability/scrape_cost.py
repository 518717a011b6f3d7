"""Measure what the metrics endpoint costs the SMTP event loop: `python -m tests.observability.scrape_cost`.

Not a test (timings vary by machine); the numbers behind the design notes in frontfilter/endpoint/httpd.py.
The endpoint runs on an event loop with a 1 ms timer whose lateness is sampled (the delay every
SMTP session of the process would see), while a separate process attacks the endpoint:
scrapes in a tight loop from 8 connections, with and without the exposition cache, and with 64
stalled (slowloris) connections on top. The registry holds ~500 series, a large relay's worth.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import textwrap
import time

from prometheus_client import generate_latest

from frontfilter import metrics, observe
from frontfilter.config import HostPort
from frontfilter.endpoint.health import Check
from frontfilter.endpoint.httpd import HttpEndpoint

ATTACK = textwrap.dedent("""
    import socket, sys, threading, time
    port, seconds, clients, stalled = (int(a) for a in sys.argv[1:5])
    held = []
    for _ in range(stalled):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET /me"); held.append(s)
    done = [0]
    def scrape():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\\r\\n\\r\\n")
                    while s.recv(65536): pass
                done[0] += 1
            except OSError:
                pass
    threads = [threading.Thread(target=scrape) for _ in range(clients)]
    [t.start() for t in threads]; [t.join() for t in threads]
    print(done[0])
""")


class Ready:
    def checks(self) -> list[Check]:
        return [Check("rules", True, "ok")]


def populate() -> int:
    for rule in range(60):
        for mode in ("enforce", "monitor"):
            observe.rule_matched(f"rule-{rule}", "reject", mode)
    for backend in range(3):
        observe.forward_attempt(f"10.0.0.{backend}:25", "ok", 0.1)
    for stage in metrics.SMTP_STAGES:
        observe.stage_decided(stage, 0.01)
        for code in ("220", "221", "250", "354", "421", "450", "451", "452", "500", "501", "550", "554"):
            observe.reply_sent(stage, code)
    observe.set_type_labels(None)
    return generate_latest(metrics.REGISTRY).count(b"\n")


async def scenario(name: str, seconds: float, clients: int, stalled: int, cache: float) -> None:
    endpoint = HttpEndpoint(Ready(), cache_seconds=cache)  # type: ignore[arg-type]
    port = int((await endpoint.start(HostPort("127.0.0.1", 0))).rsplit(":", 1)[1])
    generated = [0]
    plain = endpoint._generate
    endpoint._generate = lambda: (generated.__setitem__(0, generated[0] + 1), plain())[1]
    attack = None
    if clients or stalled:
        attack = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ATTACK, str(port), str(seconds), str(clients), str(stalled),
            stdout=subprocess.PIPE)
    lags = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        started = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - started - 0.001)
    served = int((await attack.communicate())[0]) if attack else 0
    await endpoint.stop()
    lags.sort()
    print(f"{name:38s} scrapes {served / seconds:7.0f}/s  generations {generated[0] / seconds:5.1f}/s  "
          f"loop lag p50 {statistics.median(lags) * 1e3:5.2f} ms  p99 {lags[int(len(lags) * .99)] * 1e3:5.2f} ms  "
          f"max {lags[-1] * 1e3:6.2f} ms")


def main() -> None:
    lines = populate()
    started = time.perf_counter()
    for _ in range(200):
        generate_latest(metrics.REGISTRY)
    print(f"exposition: {lines} lines, {(time.perf_counter() - started) / 200 * 1e3:.2f} ms to generate")
    asyncio.run(scenario("idle", 3, 0, 0, 1.0))
    asyncio.run(scenario("8 scrapers, cache 1 s (shipped)", 3, 8, 0, 1.0))
    asyncio.run(scenario("8 scrapers, no cache", 3, 8, 0, 0.0))
    asyncio.run(scenario("8 scrapers + 64 stalled, cache 1 s", 3, 8, 64, 1.0))


if __name__ == "__main__":
    main()
