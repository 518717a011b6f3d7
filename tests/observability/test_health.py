"""Readiness: the probes on their own, then /readyz of a real relay turning not-ready when the
rules fail to load at start, the spool cannot be written, no backend answers, or it stops."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path


from frontfilter import observe
from frontfilter.config import HostPort, build_config
from frontfilter.endpoint.health import BACKEND_STALE_AFTER, PROBE_INTERVAL, Health, probe_smtp, probe_spool
from tests.harness import REPO, RawClient, RecordingSink, closed_port, eventually
from tests.observability.support import http_get, relay_with_endpoint


# ---- the spool probe --------------------------------------------------------------------------

def test_spool_probe_creates_the_directory_and_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = tmp_path / "var" / "spool"
    assert probe_spool(spool) is None
    assert spool.is_dir() and list(spool.iterdir()) == []


def test_spool_probe_fails_where_no_file_can_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert probe_spool(tmp_path / "file" / "spool") == "not writable: Not a directory"


def test_spool_probe_fails_below_the_free_space_floor(tmp_path: Path) -> None:
    problem = probe_spool(tmp_path, min_free=2**62)
    assert problem is not None and problem.endswith("MiB free, below spool.min_free_space")


# ---- the backend probe ------------------------------------------------------------------------

def test_backend_probe_reads_the_greeting_and_quits() -> None:
    with RecordingSink() as sink:
        assert asyncio.run(probe_smtp(HostPort("127.0.0.1", sink.port), 5.0)) is None
    with closed_port() as port:
        assert asyncio.run(probe_smtp(HostPort("127.0.0.1", port), 5.0)) == "connect failed: Connection refused"


def test_backend_probe_refuses_a_554_greeting_and_a_silent_server() -> None:
    async def scenario() -> tuple[str | None, str | None]:
        handled: list[asyncio.Event] = []

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"554 5.3.2 not now\r\n")
            await writer.drain()
            await reader.read()
            writer.close()
            handled.append(asyncio.Event())

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()          # says nothing until the prober hangs up
            writer.close()
            handled.append(asyncio.Event())

        servers = [await asyncio.start_server(refuse, "127.0.0.1", 0),
                   await asyncio.start_server(silent, "127.0.0.1", 0)]
        try:
            ports = [s.sockets[0].getsockname()[1] for s in servers]
            return (await probe_smtp(HostPort("127.0.0.1", ports[0]), 5.0),
                    await probe_smtp(HostPort("127.0.0.1", ports[1]), 0.3))
        finally:
            for _ in range(500):                 # both handlers saw the prober go (bounded)
                if len(handled) == 2:
                    break
                await asyncio.sleep(0.01)
            for server in servers:
                server.close()
                await server.wait_closed()

    refused, silent = asyncio.run(scenario())
    assert refused == "greeted with 554, not 220"
    assert silent == "no greeting within 0.3s"


# ---- the checks, with a clock the test moves ----------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_spool_and_backend_checks_go_stale_without_fresh_probes(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = build_config({"backend": {"servers": [f"127.0.0.1:{sink.port}"], "mode": "sync"},
                               "spool": {"dir": str(tmp_path / "spool")}}, tmp_path / "f.toml")
        clock = Clock()
        health = Health(config, lambda: 3, clock=clock)
        assert {c.name: c.ok for c in health.checks()} == {
            "rules": True, "spool": False, "backend": False, "accepting": True}   # not probed yet
        asyncio.run(health.probe())
        assert health.ready
    clock.now += BACKEND_STALE_AFTER + 1          # a stuck probe task: nothing fresh since
    checks = {c.name: c for c in health.checks()}
    assert not checks["backend"].ok and not checks["spool"].ok
    assert checks["spool"].detail == "probe stuck for more than 30s"
    health.accepting = False
    assert [c.detail for c in health.checks() if c.name == "accepting"] == ["shutting down"]


def test_a_delivery_the_backend_answered_counts_as_reachable(tmp_path: Path) -> None:
    backend = "192.0.2.77:25"          # never connected to: the delivery alone is the signal
    config = build_config({"backend": {"servers": [backend], "mode": "sync"}}, tmp_path / "f.toml")
    health = Health(config, lambda: 3)
    assert not [c for c in health.checks() if c.name == "backend"][0].ok
    observe.forward_attempt(backend, "permanent", 0.01)      # a 5xx is still an answer
    backend_check = [c for c in health.checks() if c.name == "backend"][0]
    assert backend_check.ok and backend_check.detail.startswith(f"{backend} answered ")


def test_rules_check_follows_the_rule_book(tmp_path: Path) -> None:
    config = build_config({"backend": {"servers": ["127.0.0.1:1"]}}, tmp_path / "f.toml")
    loaded: list[int | None] = [None]
    health = Health(config, lambda: loaded[0])
    rules = [c for c in health.checks() if c.name == "rules"][0]
    assert (rules.ok, rules.detail) == (False, "no valid rule set loaded")
    loaded[0] = 12
    rules = [c for c in health.checks() if c.name == "rules"][0]
    assert (rules.ok, rules.detail) == (True, "12 rules loaded")


def test_a_busy_backend_is_not_probed(tmp_path: Path) -> None:
    """A delivery within PROBE_INTERVAL spares the probe: no connection reaches the backend."""
    async def scenario() -> int:
        connections = []

        async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            writer.close()

        server = await asyncio.start_server(count, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            config = build_config({"backend": {"servers": [f"127.0.0.1:{port}"]},
                                   "spool": {"dir": str(tmp_path / "spool")}}, tmp_path / "f.toml")
            health = Health(config, lambda: 1)
            observe.forward_attempt(f"127.0.0.1:{port}", "ok", 0.01)
            await health.probe()
            assert health.ready
            return len(connections)
        finally:
            server.close()
            await server.wait_closed()

    assert PROBE_INTERVAL > 1
    assert asyncio.run(scenario()) == 0


# ---- /readyz of a real relay --------------------------------------------------------------------

def readyz(port: int) -> tuple[int, list[str]]:
    status, body = http_get(port, "/readyz")
    return status, body.splitlines()


def test_a_healthy_relay_is_ready(tmp_path: Path) -> None:
    with relay_with_endpoint(tmp_path) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[0] == 200 and r)
        assert lines[0] == "ready"
        assert [line.split(":", 1)[0] for line in lines[1:]] == ["rules", "spool", "backend", "accepting"]
        assert http_get(port, "/healthz") == (200, "ok\n")
        published = [f'frontfilter_ready{{check="{check}"}} 1.0' for check in ("rules", "spool", "backend", "accepting")]
        eventually(lambda: all(line in http_get(port, "/metrics")[1] for line in published))
        assert relay.wait_event("http_listening")["address"] == f"127.0.0.1:{port}"


def test_not_ready_when_the_rules_fail_to_load_at_start(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "tests" / "data" / "rulesets" / "bad_regex", rules)
    with relay_with_endpoint(tmp_path, rules={"dir": str(rules), "watch_interval": "200ms"}) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[1][2:3] != [] and r)
        assert status == 503 and lines[0] == "not ready"
        assert "rules: FAILING: no valid rule set loaded" in lines
        assert http_get(port, "/healthz")[0] == 200          # alive, just not ready
        with RawClient(relay.port) as client:
            assert client.read_reply().startswith("421 ")    # and it takes no mail
        changed = relay.wait_event("readiness_changed", check="rules")
        assert changed["ok"] is False and changed["level"] == "warning"
        # The administrator fixes the file: the watcher reloads it, and the relay becomes ready.
        (rules / "00-a.toml").write_text('[[rule]]\nname = "a"\nsubject = { regex = "ok" }\naction = "tag"\ntag = "a"\n')
        eventually(lambda: readyz(port)[0] == 200)
        assert relay.wait_event("readiness_changed", check="rules", ok=True)


def test_not_ready_when_the_spool_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the spool's parent should be")
    with relay_with_endpoint(tmp_path, spool={"dir": str(tmp_path / "file" / "spool")}) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[0] == 503 and "Not a directory" in r[1][2] and r)
        assert "spool: FAILING: not writable: Not a directory" in lines
        assert "rules: ok: " in lines[1]
        # The gauge follows at the end of the probe round (after the backends): wait for it.
        eventually(lambda: 'frontfilter_ready{check="spool"} 0.0' in http_get(port, "/metrics")[1])
        assert relay.wait_event("readiness_changed", check="spool")["detail"] == "not writable: Not a directory"


def test_not_ready_when_the_spool_disk_is_full(tmp_path: Path) -> None:
    """spool.min_free_space is the floor below which queue mode answers 452: not ready either."""
    with relay_with_endpoint(tmp_path, spool={"min_free_space": "100000000GiB"}) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[0] == 503 and "free" in r[1][2] and r)
        assert lines[2].startswith("spool: FAILING: only ") and lines[2].endswith("below spool.min_free_space")


def test_not_ready_when_no_backend_answers(tmp_path: Path) -> None:
    with closed_port() as dead, relay_with_endpoint(tmp_path, [dead]) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[0] == 503 and "connect failed" in r[1][3] and r)
        assert lines[3].startswith(f"backend: FAILING: no backend answered in the last {BACKEND_STALE_AFTER:g}s")
        assert f"127.0.0.1:{dead}: connect failed" in lines[3]
        _, exposition = http_get(port, "/metrics")
        assert f'frontfilter_backend_up{{backend="127.0.0.1:{dead}"}} 0.0' in exposition
        down = relay.wait_event("backend_down", backend=f"127.0.0.1:{dead}")
        assert down["level"] == "warning"


def test_in_queue_mode_a_backend_outage_is_reported_but_the_relay_stays_ready(tmp_path: Path) -> None:
    # Mail is still taken with 250 and spooled: a load balancer must keep sending it here.
    with closed_port() as dead, relay_with_endpoint(tmp_path, [dead], backend={"mode": "queue"}) as (relay, port):
        down = relay.wait_event("backend_down", backend=f"127.0.0.1:{dead}")
        status, lines = readyz(port)
        assert status == 200 and [line.split(":", 1)[0] for line in lines[1:]] == ["rules", "spool", "accepting"]
        _, exposition = http_get(port, "/metrics")
        assert f'frontfilter_backend_up{{backend="127.0.0.1:{dead}"}} 0.0' in exposition
        assert 'frontfilter_ready{check="backend"}' not in exposition
        with RawClient(relay.port) as client:
            client.begin_data()
            assert client.command(b"Subject: x\r\n\r\nqueued\r\n.").startswith("250 2.0.0")
    assert down["level"] == "warning"


def test_not_ready_when_clamd_is_gone_and_mail_would_be_refused(tmp_path: Path) -> None:
    nowhere = tmp_path / "clamd.ctl"          # no clamd listens here
    with relay_with_endpoint(tmp_path, antivirus={"address": str(nowhere)}) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[0] == 503 and "clamd at" in " ".join(r[1]) and r)
        [antivirus] = [line for line in lines if line.startswith("antivirus:")]
        assert antivirus.startswith(f"antivirus: FAILING: clamd at {nowhere}: ")
        assert antivirus.endswith("(on_error tempfail: mail is refused)")
        assert relay.wait_event("readiness_changed", check="antivirus")["ok"] is False


def test_with_on_error_accept_clamd_is_not_a_readiness_check(tmp_path: Path) -> None:
    nowhere = tmp_path / "clamd.ctl"
    with relay_with_endpoint(tmp_path, antivirus={"address": str(nowhere), "on_error": "accept"}) as (relay, port):
        status, lines = eventually(lambda: (r := readyz(port))[0] == 200 and r)
        assert not any(line.startswith("antivirus") for line in lines)


def test_not_ready_while_shutting_down(tmp_path: Path) -> None:
    with relay_with_endpoint(tmp_path, server={"shutdown_grace": "10s"}) as (relay, port):
        eventually(lambda: readyz(port)[0] == 200)
        with RawClient(relay.port) as client:            # a transaction in flight holds the shutdown
            assert client.read_reply().startswith("220 ")
            client.command("EHLO client.test")
            assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
            relay.signal(signal.SIGTERM)
            status, lines = eventually(lambda: (r := readyz(port))[0] == 503 and r)
            assert "accepting: FAILING: shutting down" in lines
            client.command("QUIT")
        assert relay.proc is not None and relay.proc.wait(15) == 0


def test_metrics_port_in_use_is_a_clear_start_up_error(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.harness import write_config

    with socket.socket() as busy, RecordingSink() as sink:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = write_config(tmp_path, [sink.port], metrics={"listen": f"127.0.0.1:{port}"},
                              backend={"mode": "sync"})
        done = subprocess.run([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 2
    assert f"frontfilter: cannot listen: 127.0.0.1:{port} (metrics.listen): Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_spool_check_fails_at_the_first_failing_probe_not_when_the_last_success_goes_stale(
        tmp_path: Path) -> None:
    """The spool breaks after a good probe (disk remounted read-only, directory replaced): the
    next probe makes the relay not ready at once. The clock does not move here, so the check
    cannot fail by going stale: only the failing probe itself can turn it."""
    spool = tmp_path / "spool"
    with RecordingSink() as sink:
        config = build_config({"backend": {"servers": [f"127.0.0.1:{sink.port}"], "mode": "sync"},
                               "spool": {"dir": str(spool)}}, tmp_path / "f.toml")
        health = Health(config, lambda: 3, clock=Clock())
        asyncio.run(health.probe())
        assert health.ready
        shutil.rmtree(spool)
        spool.write_text("a file where the spool directory was")
        asyncio.run(health.probe())
    checks = {c.name: c for c in health.checks()}
    assert not checks["spool"].ok and checks["spool"].detail == "not writable: File exists"
    assert not health.ready
