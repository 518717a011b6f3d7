"""`server.workers = 2`: two relay processes on one port, one spool, one set of metrics.

Through real sockets and processes: mail is spread over both workers and each message arrives
exactly once; SIGHUP reaches every worker; a worker killed with SIGKILL is replaced and mail
keeps flowing; SIGTERM stops them all; a worker that cannot start ends the service with one
readable line; and a real Prometheus scraping the relay sees the workers' counts summed, never
one worker's share.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from tests.harness import REPO, RawClient, RecordingSink, Relay, eventually, send, write_config
from tests.observability.promql import dashboard_queries
from tests.requires import installed

WORKERS = 2


def send_subject(port: int, subject: str) -> str:
    """One message on its own connection (so the kernel picks a worker each time): "250", or
    the refusal as "554 5.7.1 text"."""
    data = f"From: a@example.net\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    answer = send(port, data, sender="a@example.net", recipients=("b@example.org",), timeout=20)
    return "250" if answer.ok else answer.said


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(tmp_path: Path, sink: RecordingSink, rules: Path | None = None, **sections: dict) -> Relay:
    config = write_config(tmp_path, [sink.port], rules_dir=rules,
                          server={"hostname": "mx.test", "listen": ["127.0.0.1:0"],
                                  "workers": WORKERS, "shutdown_grace": "5s"},
                          backend={"servers": [f"127.0.0.1:{sink.port}"], "mode": "queue"}, **sections)
    relay = Relay(config).start()
    relay.wait_event("workers_ready")
    return relay


def worker_pids(relay: Relay) -> list[int]:
    return list(relay.wait_event("workers_started")["pids"])


def test_mail_is_spread_over_the_workers_and_arrives_exactly_once(tmp_path: Path, sink: RecordingSink) -> None:
    relay = start(tmp_path, sink)
    try:
        pids = worker_pids(relay)
        assert len(pids) == WORKERS and all(alive(pid) for pid in pids)
        replies = [send_subject(relay.port, f"spread {n}") for n in range(60)]
        assert replies == ["250"] * 60
        arrived = sink.wait_for(60)
        subjects = Counter(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in arrived)
        assert len(subjects) == 60 and set(subjects.values()) == {1}        # each once, none twice
        eventually(lambda: len(relay.events("message")) == 60)
        by_worker = Counter(line["worker"] for line in relay.events("message"))
        assert set(by_worker) == set(pids), by_worker                         # both took mail
        eventually(lambda: len(relay.events("delivery")) == 60)
    finally:
        assert relay.stop() == 0
    assert not [pid for pid in pids if alive(pid)]                            # SIGTERM stopped them all


def test_sighup_reloads_every_worker(tmp_path: Path, sink: RecordingSink) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    relay = start(tmp_path, sink, rules=rules)
    try:
        assert send_subject(relay.port, "forbidden words") == "250"
        (rules / "90-local.toml").write_text(
            '[[rule]]\nname = "no-forbidden"\nstage = "data"\nsubject = "*forbidden*"\n'
            'action = "reject"\nreply = "554 5.7.1 Not this subject"\n')
        relay.signal(signal.SIGHUP)
        eventually(lambda: len(relay.events("workers_ready")) == 2)
        reloaded = [line for line in relay.events("rules_loaded") if line.get("reload")]
        assert {line["worker"] for line in reloaded} == set(worker_pids(relay))
        replies = [send_subject(relay.port, f"forbidden {n}") for n in range(20)]
        assert all(reply.startswith("554 5.7.1 Not this subject") for reply in replies), replies
    finally:
        relay.stop()


def test_a_killed_worker_is_replaced_and_mail_keeps_flowing(tmp_path: Path, sink: RecordingSink) -> None:
    relay = start(tmp_path, sink, metrics={"listen": "127.0.0.1:0"})
    http_port = relay.http_port
    try:
        victim, survivor = worker_pids(relay)
        assert scraped_counter(http_port, "frontfilter_worker_restarts_total") == 0
        os.kill(victim, signal.SIGKILL)
        died = relay.wait_event("worker_died", pid=victim)
        assert died["exit_code"] == -signal.SIGKILL
        replaced = relay.wait_event("worker_restarted")
        assert survivor in replaced["workers"] and victim not in replaced["workers"]
        assert len(replaced["workers"]) == WORKERS
        assert [send_subject(relay.port, f"after {n}") for n in range(20)] == ["250"] * 20
        assert len(sink.wait_for(20)) == 20
        # The supervisor counts it (FrontfilterWorkerRestarts); the replacement is worker slot
        # of the one that died, so process_* keep their two worker series.
        eventually(lambda: scraped_counter(http_port, "frontfilter_worker_restarts_total") == 1, timeout=10)
    finally:
        assert relay.stop() == 0


def test_a_worker_that_cannot_start_ends_the_service_with_one_line(tmp_path: Path, sink: RecordingSink) -> None:
    config = write_config(tmp_path, [sink.port],
                          server={"hostname": "mx.test", "listen": ["127.0.0.1:0"], "workers": WORKERS},
                          relay={"domains": ["example.org"], "trusted_networks": [],
                                 "sender_map": str(tmp_path / "missing-sender-map")})
    done = subprocess.run([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("frontfilter: ")]
    assert errors and "missing-sender-map" in errors[0]
    assert "Traceback" not in done.stderr


PROMETHEUS = shutil.which("prometheus")


@installed(PROMETHEUS is not None, "Prometheus is installed by `make test` (Debian package prometheus)")
def test_prometheus_sees_the_sum_over_workers_on_every_scrape(tmp_path: Path, sink: RecordingSink) -> None:
    from tests.observability.test_prometheus import Prometheus

    relay = start(tmp_path, sink, metrics={"listen": "127.0.0.1:0"})
    http_port = relay.http_port
    (tmp_path / "prom").mkdir()
    prometheus = Prometheus(tmp_path / "prom", f"127.0.0.1:{http_port}", []).start()
    try:
        assert [send_subject(relay.port, f"counted {n}") for n in range(30)] == ["250"] * 30
        accepted = 'frontfilter_messages_total{verdict="accepted"}'
        eventually(lambda: prometheus.value(accepted) == 30, timeout=30)
        scraped = time.monotonic()
        eventually(lambda: time.monotonic() - scraped > 4, timeout=10)   # a few more scrapes
        # Each scrape lands on one worker; every one of them must report all 30.
        assert prometheus.value(f"min_over_time({accepted}[4s])") == 30
        assert prometheus.value(f"changes({accepted}[4s])") == 0
        assert prometheus.value('min_over_time(frontfilter_ready{check="rules"}[4s])') == 1
        assert prometheus.value("frontfilter_rules_loaded") == prometheus.value("min_over_time(frontfilter_rules_loaded[4s])")
    finally:
        prometheus.stop()
        relay.stop()


def proc_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process, from /proc, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def scraped_counter(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_process_metrics_cover_every_worker_and_the_supervisor_and_counters_never_go_back(
        tmp_path: Path, sink: RecordingSink) -> None:
    from tests.observability.test_prometheus import Prometheus

    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    relay = start(tmp_path, sink, rules=rules, metrics={"listen": "127.0.0.1:0"})
    http_port = relay.http_port
    (tmp_path / "prom").mkdir()
    prometheus = Prometheus(tmp_path / "prom", f"127.0.0.1:{http_port}", []).start()
    try:
        # Counters read 0.1 s apart while mail flows, whichever worker answers: never lower.
        accepted = 'frontfilter_messages_total{verdict="accepted"}'
        readings = []
        for n in range(40):
            assert send_subject(relay.port, f"cpu {n}") == "250"
            readings.append(scraped_counter(http_port, accepted))
            time.sleep(0.1)
        assert readings == sorted(readings) and readings[-1] > 0, readings
        eventually(lambda: scraped_counter(http_port, accepted) == 40, timeout=10)   # the cache is 1 s
        # process_* per process: the supervisor and each worker slot, summed = the service's CPU.
        assert relay.proc is not None
        pids = [relay.proc.pid, *worker_pids(relay)]
        eventually(lambda: prometheus.value("count(process_cpu_seconds_total)") == WORKERS + 1, timeout=30)
        labels = prometheus.query("process_resident_memory_bytes")["data"]["result"]
        assert sorted(r["metric"]["worker"] for r in labels) == ["0", "1", "supervisor"]
        scraped = time.monotonic()
        eventually(lambda: time.monotonic() - scraped > 2.5, timeout=10)     # two fresh scrapes
        real = proc_cpu_seconds(pids)
        reported = prometheus.value("sum(process_cpu_seconds_total)")
        assert reported is not None and abs(reported - real) <= 0.1 * real, (reported, real)
        # The dashboard's CPU panel (a rate over $__rate_interval, 20 s here) under steady mail,
        # against what /proc says the processes used over the same 20 s.
        panel = next(q.promql for q in dashboard_queries() if q.where.startswith("panel 'CPU'"))
        stop = threading.Event()
        sender = threading.Thread(target=lambda: [send_subject(relay.port, "steady") for _ in iter(stop.is_set, True)],
                                  daemon=True)
        sender.start()
        try:
            time.sleep(5)                                    # the load is steady
            cpu_before, began = proc_cpu_seconds(pids), time.time()
            time.sleep(20)
            used, end = proc_cpu_seconds(pids) - cpu_before, time.time()
        finally:
            stop.set()
            sender.join(30)
        time.sleep(2.5)                                      # the scrapes around `end` are in
        shown = float(prometheus.api("query", query=panel, time=end)["data"]["result"][0]["value"][1])
        actual = used / (end - began)
        assert abs(shown - actual) <= 0.1 * actual, (shown, actual)
        # A reload is one event, however many workers make it.
        before = prometheus.value('sum(frontfilter_rules_reloads_total{result="ok"})')
        relay.signal(signal.SIGHUP)
        eventually(lambda: len(relay.events("workers_ready")) == 2)
        eventually(lambda: prometheus.value('sum(frontfilter_rules_reloads_total{result="ok"})') == before + 1,
                   timeout=15)
        time.sleep(2)
        assert prometheus.value('sum(frontfilter_rules_reloads_total{result="ok"})') == before + 1
        # A refused reload is one event too, and the dashboard's reload annotation shows it.
        (rules / "95-broken.toml").write_text('[[rule]]\nname = "broken"\naction = "explode"\n')
        relay.signal(signal.SIGHUP)
        annotation = next(q.promql for q in dashboard_queries() if q.where.startswith("annotation"))
        eventually(lambda: "invalid" in {r["metric"]["result"]
                                         for r in prometheus.query(annotation)["data"]["result"]}, timeout=15)
        assert prometheus.value('sum(frontfilter_rules_reloads_total{result="invalid"})') == 1
    finally:
        prometheus.stop()
        relay.stop()


class NotifySocket:
    """A stand-in for systemd's notification socket: what the supervisor tells the manager."""

    def __init__(self, directory: Path):
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.seen: list[dict[str, str]] = []

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.seen:
                if predicate(message):
                    return message
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.seen.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))
        raise TimeoutError(f"no such notification in {self.seen}")

    def close(self) -> None:
        self.sock.close()


def test_systemd_hears_ready_with_the_workers_status_and_a_refused_reload(tmp_path: Path, sink: RecordingSink) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    notify = NotifySocket(tmp_path)
    config = write_config(tmp_path, [sink.port], rules_dir=rules,
                          server={"hostname": "mx.test", "listen": ["127.0.0.1:0"],
                                  "workers": WORKERS, "shutdown_grace": "5s"},
                          backend={"servers": [f"127.0.0.1:{sink.port}"], "mode": "queue"})
    relay = Relay(config, env={"NOTIFY_SOCKET": str(notify.path)}).start()
    try:
        ready = notify.wait_for(lambda m: m.get("READY") == "1")
        assert re.match(r"\d+ rules; listening on 127\.0\.0\.1:\d+ \(2 workers\)$", ready["STATUS"]), ready
        (rules / "90-broken.toml").write_text("[[rule]]\nname = \n")
        relay.signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.get("RELOADING") == "1")
        again = notify.wait_for(lambda m: m.get("READY") == "1" and "REFUSED" in m.get("STATUS", ""))
        assert again["STATUS"].endswith("(2 workers)")
        assert send_subject(relay.port, "still served") == "250"        # the previous rules go on
        assert relay.stop() == 0
        notify.wait_for(lambda m: m.get("STOPPING") == "1")
    finally:
        relay.stop()
        notify.close()


def test_workers_dying_over_and_over_end_the_service_so_systemd_restarts_it(tmp_path: Path, sink: RecordingSink) -> None:
    relay = start(tmp_path, sink)
    try:
        for _ in range(10):                              # more than the restart burst allows
            restarts = relay.events("worker_restarted")
            victim = (restarts[-1]["workers"] if restarts else worker_pids(relay))[-1]
            # Ready in the supervisor's eyes: one that dies before is a failed start, not a crash.
            relay.wait_event("worker_ready", pid=victim)
            os.kill(victim, signal.SIGKILL)
            eventually(lambda: len(relay.events("worker_restarted")) > len(restarts)
                       or relay.events("workers_restarting_too_often"), timeout=10)
            if relay.events("workers_restarting_too_often"):
                break
        assert relay.events("workers_restarting_too_often")
        assert not relay.events("worker_failed_to_start")
        assert relay.proc is not None and relay.proc.wait(30) == 1
    finally:
        relay.stop()


def test_check_names_a_bad_workers_value(tmp_path: Path) -> None:
    config = write_config(tmp_path, [25], server={"hostname": "mx.test", "workers": "many"})
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("""server.workers: expected a number of processes or "auto", got 'many'""")


PER_IP = 3
CLIENTS = 40


def test_the_per_address_limit_holds_for_the_service_not_each_worker(tmp_path: Path, sink: RecordingSink) -> None:
    """`limits.max_connections_per_ip` counts a client's sessions in every worker: forty
    sessions from one address, spread by the kernel over two workers, get three greetings,
    not three per worker; a session that ends gives its slot back."""
    relay = start(tmp_path, sink, limits={"max_connections_per_ip": PER_IP, "connection_rate_per_ip": 0})
    clients: list[RawClient] = []
    try:
        greetings = []
        for _ in range(CLIENTS):
            client = RawClient(relay.port)
            clients.append(client)
            greetings.append(client.read_reply()[:9])
        assert sorted(greetings) == ["220 mx.te"] * PER_IP + ["421 4.7.0"] * (CLIENTS - PER_IP), greetings
        def refusals() -> list[dict] | None:
            found = [e for e in relay.events("connection_refused") if e.get("limit") == "per_ip"]
            return found if len(found) == CLIENTS - PER_IP else None
        # Both workers refused: at least one of them held fewer than PER_IP sessions of its own
        # (three in all), so it counted the other's — per-worker counting would have greeted
        # more. (If the kernel had handed every connection to one worker, this would say so.)
        assert {e["worker"] for e in eventually(refusals)} == set(worker_pids(relay))
        for client in clients:
            client.close()
        clients.clear()
        # The slots come back: three new sessions are greeted again.
        again = eventually(lambda: _greeted(relay.port, clients))
        assert again == ["220 mx.te"] * PER_IP
    finally:
        for client in clients:
            client.close()
        relay.stop()


def _greeted(port: int, clients: list[RawClient]) -> list[str] | None:
    """Open PER_IP sessions; their greetings, or None (closed again) while slots are still held."""
    opened = [RawClient(port) for _ in range(PER_IP)]
    answers = [client.read_reply()[:9] for client in opened]
    if all(answer.startswith("220") for answer in answers):
        clients.extend(opened)
        return answers
    for client in opened:
        client.close()
    return None
