"""frontfilter's half of the systemd service protocol, against real sockets and real processes.

Notifications are received on real AF_UNIX datagram sockets (a path, and an abstract name
written with '@' as systemd does); socket activation is driven by systemd's own
`systemd-socket-activate`, which passes the listening socket exactly as PID 1 does
(fd 3, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES). The same code under the real PID 1: test_nspawn.py.
"""

from __future__ import annotations

import os
import signal
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontfilter.process import sdnotify
from tests.harness import REPO, RecordingSink, Relay, free_port, write_config
from tests.requires import installed


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A notify socket bound at a path: (NOTIFY_SOCKET value, the socket to read)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(10)
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"frontfilter-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    sock.settimeout(10)
    yield "@" + name, sock
    sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_ready_and_status_reach_a_socket_named_by_path(receiver: tuple[str, socket.socket]) -> None:
    address, sock = receiver
    with sdnotify.Notifier(address) as notifier:
        assert notifier.ready("27 rules; listening on 0.0.0.0:25")
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "27 rules; listening on 0.0.0.0:25"}


def test_an_abstract_socket_written_with_at_is_reached(abstract_receiver: tuple[str, socket.socket]) -> None:
    address, sock = abstract_receiver
    with sdnotify.Notifier(address) as notifier:
        assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_reloading_carries_the_monotonic_clock_in_microseconds(receiver: tuple[str, socket.socket]) -> None:
    address, sock = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with sdnotify.Notifier(address) as notifier:
        notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(sock.recv(4096))
    assert got["RELOADING"] == "1" and before <= int(got["MONOTONIC_USEC"]) <= after


def test_a_status_stays_one_line_and_bounded(receiver: tuple[str, socket.socket]) -> None:
    address, sock = receiver
    with sdnotify.Notifier(address) as notifier:
        notifier.status("two\nlines " + "x" * 500)
    datagram = sock.recv(4096)
    assert datagram.startswith(b"STATUS=two lines x") and b"\n" not in datagram
    assert len(datagram) == len("STATUS=") + sdnotify.MAX_STATUS_LENGTH


@pytest.mark.parametrize("address", [None, "", "vsock:2:1234", "relative/path"])
def test_without_a_usable_notify_socket_everything_is_a_no_op(address: str | None) -> None:
    notifier = sdnotify.Notifier(address, watchdog_usec=1_000_000)
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and notifier.watchdog_interval is None


def test_a_vanished_notify_socket_does_not_raise(tmp_path: Path) -> None:
    with sdnotify.Notifier(str(tmp_path / "gone")) as notifier:
        assert notifier.ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only(receiver: tuple[str, socket.socket]) -> None:
    address, _ = receiver
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}

    def interval(**changes: str) -> float | None:
        with sdnotify.Notifier.from_environment({**env, **changes}) as notifier:
            return notifier.watchdog_interval

    assert interval() == 15.0
    assert interval(WATCHDOG_PID=str(os.getpid())) == 15.0
    assert interval(WATCHDOG_PID="1") is None
    assert interval(WATCHDOG_USEC="soon") is None


def test_sockets_meant_for_another_process_are_ignored_and_the_variables_removed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "smtp", "PATH": "/bin"}
    assert sdnotify.listen_fds(env) == []
    assert env == {"PATH": "/bin"}
    assert sdnotify.listen_fds({}) == []


def test_malformed_activation_variables_are_an_error() -> None:
    with pytest.raises(sdnotify.ActivationError, match="not numbers"):
        sdnotify.listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "three"})


@pytest.fixture
def listening() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def test_passed_sockets_follow_the_listeners_by_address_or_by_name(listening: list[socket.socket]) -> None:
    a, b = listening
    port_a, port_b = a.getsockname()[1], b.getsockname()[1]
    listeners = [("", "127.0.0.1", port_b), ("", "127.0.0.1", port_a)]
    assert sdnotify.assign_sockets(listeners, [("smtp", a), ("smtp", b)]) == [b, a]
    named = [("submission", "0.0.0.0", 587), ("inbound", "0.0.0.0", 25)]
    assert sdnotify.assign_sockets(named, [("inbound", a), ("submission", b)]) == [b, a]


def test_a_listener_without_a_socket_or_a_socket_without_listener_is_refused(listening: list[socket.socket]) -> None:
    a, b = listening
    port_a = a.getsockname()[1]
    with pytest.raises(sdnotify.ActivationError, match="listener 127.0.0.1:1 has no socket"):
        sdnotify.assign_sockets([("", "127.0.0.1", port_a), ("", "127.0.0.1", 1)], [("smtp", a)])
    with pytest.raises(sdnotify.ActivationError, match=r"socket 127\.0\.0\.1:\d+ \(smtp\) passed by systemd matches no"):
        sdnotify.assign_sockets([("", "127.0.0.1", port_a)], [("smtp", a), ("smtp", b)])


# ---- the relay under a service manager ----------------------------------------------------

class NotifyLog:
    """Collects every datagram on a notify socket, in a thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.messages: list[dict[str, str]] = []
        sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(fields(self.sock.recv(4096)))
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return

    def wait(self, key: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if key in m]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count} × {key} not received; got {self.messages}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_the_relay_tells_systemd_ready_reloading_stopping_and_pings_the_watchdog(
        tmp_path: Path, abstract_receiver: tuple[str, socket.socket]) -> None:
    address, sock = abstract_receiver
    log = NotifyLog(sock)
    with RecordingSink() as backend:
        config = write_config(tmp_path, [backend.port], rules={"dir": str(REPO / "rules"), "watch": False})
        relay = Relay(config, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}).start()
        try:
            ready = log.wait("READY")[0]
            assert "rules; listening on 127.0.0.1:" in ready["STATUS"]
            assert len(log.wait("WATCHDOG", count=3, timeout=5)) >= 3       # every 0.1 s
            relay.signal(signal.SIGHUP)
            reloading = log.wait("RELOADING")[0]
            assert int(reloading["MONOTONIC_USEC"]) > 0
            second_ready = log.wait("READY", count=2)[1]                     # the reload is over
            order = [id(m) for m in log.messages]
            assert order.index(id(reloading)) < order.index(id(second_ready))
            relay.signal(signal.SIGTERM)
            log.wait("STOPPING")
            assert relay.proc is not None and relay.proc.wait(15) == 0
        finally:
            relay.stop()
            log.stop()


def test_a_refused_reload_says_so_in_the_status(tmp_path: Path, receiver: tuple[str, socket.socket]) -> None:
    address, sock = receiver
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    log = NotifyLog(sock)
    with RecordingSink() as backend:
        config = write_config(tmp_path, [backend.port], rules={"dir": str(rules), "watch": False})
        relay = Relay(config, env={"NOTIFY_SOCKET": address}).start()
        try:
            log.wait("READY")
            (rules / "90-local.toml").write_text('[[rule]]\nname = "broken"\naction = "explode"\n')
            relay.signal(signal.SIGHUP)
            status = log.wait("READY", count=2)[1]["STATUS"]
            assert "REFUSED" in status and "previous rules kept" in status
        finally:
            relay.stop()
            log.stop()


@installed(shutil.which("systemd-socket-activate") is not None,
           "systemd-socket-activate is not installed (package systemd)")
class TestSocketActivation:
    def activate(self, config: Path, port: int) -> subprocess.Popen[bytes]:
        """The relay behind systemd-socket-activate: started on the first connection, with the
        socket the activator bound passed as fd 3, LISTEN_FDNAMES=smtp."""
        proc = subprocess.Popen(
            ["systemd-socket-activate", "--listen", f"127.0.0.1:{port}", "--fdname=smtp",
             sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()                 # "Listening on 127.0.0.1:PORT as 3."
        assert f"127.0.0.1:{port}" in line, line
        return proc

    def test_mail_passes_through_the_socket_systemd_passed(self, tmp_path: Path) -> None:
        port = free_port()
        with RecordingSink() as backend:
            config = write_config(tmp_path, [backend.port], port=port)
            proc = self.activate(config, port)
            try:
                # The first client waits in the backlog while the relay starts.
                with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                    client.sendmail("alice@example.net", ["bob@example.org"], b"Subject: activated\r\n\r\nhi\r\n")
                assert [m.recipients for m in backend.wait_for(1)] == [["bob@example.org"]]
            finally:
                proc.send_signal(signal.SIGTERM)
                _, stderr = proc.communicate(timeout=20)
            assert proc.returncode == 0, stderr.decode()
            assert f'"event": "listening", "address": "127.0.0.1:{port}"' in stderr.decode()

    def test_a_socket_that_matches_no_listener_stops_the_start_with_the_reason(self, tmp_path: Path) -> None:
        port = free_port()
        config = write_config(tmp_path, [free_port()], port=free_port())     # listens elsewhere
        proc = self.activate(config, port)
        try:
            with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
                with smtplib.SMTP("127.0.0.1", port, timeout=20):
                    pass
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = stderr.decode()
        assert "socket activation: listener" in text and "has no socket from systemd" in text, text
