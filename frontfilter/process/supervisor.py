"""`server.workers > 1`: one relay process per core on the same sockets, spool and metrics.

One interpreter does its Python work on one core at a time; the relay's CPU per message is
mostly Python (the SMTP session, the pipeline, the MIME walk), so more cores need more processes.

The supervisor — the process systemd started — takes the listening sockets (binds them, or
receives them by socket activation) and the metrics socket, then forks the workers. Each
worker is the ordinary service on the inherited sockets, and the kernel hands each new
connection to one of them. What they share, and how:
- the spool: every worker's delivery worker sees every message; one flock per message means
  one attempt at a time across processes (delivery/safeio.py), so the messages of a worker that
  died are delivered by the others;
- the metrics: prometheus_client's multiprocess mode, one memory-mapped file per worker in a
  private directory; whichever worker answers /metrics reports the sum over all (metrics.py);
- greylisting: its SQLite database, with SQLite's locking.
Per worker: the per-client connection limits of `[limits]` (a client spread over N workers
may hold up to N times `max_connections_per_ip`), and /healthz and /readyz, answered by the
worker that takes the request (they share config, spool and backends, so they agree).

The supervisor runs no event loop and no thread, so a fork never copies a lock held by
another thread. It relays signals — SIGHUP to every worker (each reloads its rules and
certificates), SIGTERM or SIGINT to every worker, then waits for them within
`server.shutdown_grace` — restarts a worker that dies, and speaks to systemd for them: the
workers' notifications (READY=1, RELOADING=1, STOPPING=1) come to its own socket, and it says
READY=1 once every worker has. A worker that fails before it was ever ready ends the service
with its exit code: the same error would kill every restart.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import select
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from frontfilter.process import sdnotify

RESTART_DELAY = 1.0           # seconds before a dead worker is replaced
RESTART_BURST = 5             # restarts within RESTART_WINDOW before the supervisor gives up
RESTART_WINDOW = 60.0
STOP_MARGIN = 10.0            # beyond shutdown_grace before the stragglers are killed
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_SLOT_ENV = "FRONTFILTER_WORKER_SLOT"   # 0 .. workers-1: a replacement takes the slot it fills
PR_SET_PDEATHSIG = 1          # linux/prctl.h
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (SCM_CREDENTIALS)


def prepare_metrics_dir() -> str:
    """A fresh directory for the workers' metric files, named in the environment before
    prometheus_client is first imported (it picks its storage at import)."""
    directory = tempfile.mkdtemp(prefix="frontfilter-metrics-")
    os.environ[METRICS_DIR_ENV] = directory
    return directory


@dataclass
class _Worker:
    pid: int
    started: float
    slot: int = 0             # stable across restarts: the `worker` label of its process metrics
    ready: bool = False
    status: str = ""          # its last STATUS= line ("23 rules; listening on ...")


@dataclass
class Supervisor:
    count: int
    serve: Callable[[], int]          # runs one worker's service in the forked child; its exit code
    shutdown_grace: float
    log: Callable[..., None]          # (event, **fields): the supervisor's own log lines
    on_worker_exit: Callable[[int, int], None] = lambda pid, slot: None     # (pid, its slot)
    workers: dict[int, _Worker] = field(default_factory=dict)
    _stopping: bool = False
    _reloading: bool = False
    _announced: bool = False
    _restarts: list[float] = field(default_factory=list)
    _pending_starts: list[float] = field(default_factory=list)
    _exit_code: int = 0
    _child_env: dict[str, str] = field(default_factory=dict)   # NOTIFY_SOCKET: ours, for the workers

    def run(self) -> int:
        notify = sdnotify.Notifier.from_environment()
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        inbox_name = f"frontfilter-supervisor-{os.getpid()}-{os.urandom(4).hex()}"
        inbox.bind("\0" + inbox_name)          # abstract: nothing on disk, gone with us
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        received: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda number, _frame: received.append(number))
        self._child_env["NOTIFY_SOCKET"] = "@" + inbox_name
        try:
            for _ in range(self.count):
                self._spawn(notify, inbox, wake_read, wake_write)
            self.log("workers_started", workers=self.count, pids=sorted(self.workers))
            deadline: float | None = None
            while self.workers or (not self._stopping and self._pending_starts):
                timeout = self._tick_timeout(notify, deadline)
                readable, _, _ = select.select([inbox, wake_read], [], [], timeout)
                if wake_read in readable:
                    _drain(wake_read)
                if inbox in readable:
                    self._notifications(inbox, notify)
                while received:
                    number = received.pop(0)
                    if number in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
                        deadline = self._stop(notify)
                    elif number == signal.SIGHUP and not self._stopping:
                        self._reload(notify)
                self._reap()
                self._respawn(notify, inbox, wake_read, wake_write)
                if notify.watchdog_interval and not self._stopping:
                    notify.watchdog()
                if deadline is not None and time.monotonic() > deadline:
                    for pid in list(self.workers):
                        _signal(pid, signal.SIGKILL)
                    deadline = time.monotonic() + STOP_MARGIN
            return self._exit_code
        finally:
            signal.set_wakeup_fd(-1)
            inbox.close()
            wake_read.close()
            wake_write.close()
            notify.close()

    # ---- workers ---------------------------------------------------------------------------

    def _spawn(self, notify: sdnotify.Notifier, *inherited: socket.socket) -> None:
        supervisor = os.getpid()
        taken = {worker.slot for worker in self.workers.values()}
        slot = next(n for n in itertools.count() if n not in taken)    # the lowest free one
        pid = os.fork()
        if pid == 0:                                     # the worker
            code = 1
            try:
                _die_with_parent(supervisor)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for sock in inherited:
                    sock.close()
                notify.close()
                os.environ.update(self._child_env)
                os.environ[WORKER_SLOT_ENV] = str(slot)
                for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):   # the supervisor pings for all
                    os.environ.pop(name, None)
                code = self.serve()
            finally:
                os._exit(code)
        self.workers[pid] = _Worker(pid, time.monotonic(), slot)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.on_worker_exit(pid, worker.slot)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                self.log("worker_stopped", pid=pid, exit_code=code)
                continue
            if not worker.ready:
                # Before it was ever ready: a config, certificate or spool problem that every
                # restart would hit again. End the service with the worker's own exit code.
                self.log("worker_failed_to_start", pid=pid, exit_code=code, level="error")
                self._exit_code = code if code > 0 else 1
                self._stopping = True
                self._pending_starts.clear()
                for other in list(self.workers):
                    _signal(other, signal.SIGTERM)
                continue
            self.log("worker_died", pid=pid, exit_code=code, level="error")
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
            if len(self._restarts) > RESTART_BURST:
                self.log("workers_restarting_too_often", restarts=len(self._restarts),
                         window_seconds=RESTART_WINDOW, level="error")
                self._exit_code = 1
                self._stopping = True
                for other in list(self.workers):
                    _signal(other, signal.SIGTERM)
                continue
            self._pending_starts.append(now + RESTART_DELAY)

    def _respawn(self, notify: sdnotify.Notifier, *inherited: socket.socket) -> None:
        now = time.monotonic()
        due = [t for t in self._pending_starts if t <= now]
        self._pending_starts = [t for t in self._pending_starts if t > now]
        for _ in due:
            if not self._stopping:
                self._spawn(notify, *inherited)
                self.log("worker_restarted", workers=sorted(self.workers))

    def _tick_timeout(self, notify: sdnotify.Notifier, deadline: float | None) -> float:
        timeout = 1.0
        if notify.watchdog_interval:
            timeout = min(timeout, notify.watchdog_interval)
        now = time.monotonic()
        for moment in [*self._pending_starts, *([deadline] if deadline is not None else [])]:
            timeout = min(timeout, max(0.0, moment - now))
        return timeout

    # ---- the service manager's protocol ----------------------------------------------------

    def _notifications(self, inbox: socket.socket, notify: sdnotify.Notifier) -> None:
        while True:
            try:
                data, ancillary, _flags, _address = inbox.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size),
                                                                 socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            pid = next((_UCRED.unpack(payload[:_UCRED.size])[0] for level, kind, payload in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            worker = self.workers.get(pid) if pid is not None else None
            if worker is None:
                continue
            lines = data.decode("utf-8", "replace").splitlines()
            if "READY=1" in lines and not worker.ready:
                worker.ready = True     # from now on its death is a crash to restart, not a failed start
                self.log("worker_ready", pid=pid)
            if "RELOADING=1" in lines:
                worker.ready = False
            worker.status = next((line[7:] for line in lines if line.startswith("STATUS=")), worker.status)
        all_ready = len(self.workers) == self.count and all(w.ready for w in self.workers.values())
        if all_ready and (not self._announced or self._reloading) and not self._stopping:
            notify.ready(self.status_line())
            self._announced, self._reloading = True, False
            self.log("workers_ready", workers=sorted(self.workers))

    def status_line(self) -> str:
        """For `systemctl status`: the workers' own line (rules, listeners), the worst of them
        when they differ — a worker whose reload was refused says so."""
        statuses = [w.status for w in self.workers.values() if w.status]
        worst = next((s for s in statuses if "REFUSED" in s or "no valid rule set" in s),
                     statuses[0] if statuses else "ready")
        return f"{worst} ({self.count} workers)"

    def _reload(self, notify: sdnotify.Notifier) -> None:
        notify.reloading(f"reloading {len(self.workers)} workers")
        self._reloading = True
        for pid in list(self.workers):
            _signal(pid, signal.SIGHUP)
        self.log("workers_reloading", workers=sorted(self.workers))

    def _stop(self, notify: sdnotify.Notifier) -> float:
        notify.stopping(f"stopping {len(self.workers)} workers")
        self._stopping = True
        self._pending_starts.clear()
        for pid in list(self.workers):
            _signal(pid, signal.SIGTERM)
        self.log("workers_stopping", workers=sorted(self.workers))
        return time.monotonic() + self.shutdown_grace + STOP_MARGIN


def cleanup_metrics_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except OSError as error:
        if error.errno != errno.ESRCH:
            raise


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


def _die_with_parent(supervisor: int) -> None:
    """A worker must not outlive a supervisor killed with SIGKILL (it would hold the ports):
    the kernel sends it SIGTERM when the supervisor dies (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != supervisor:     # it died between fork and prctl
        os._exit(1)
