"""Readiness: may a load balancer (or an administrator) send this relay mail right now — would
a message get its 250? Only what decides that is a check; each is a fact read in O(1) when
`/readyz` is asked — a scraper hammering the endpoint never makes the relay touch the disk or
the network:

- `rules`: a valid rule set is loaded. Invalid rules at start leave none (the relay answers 421
  to everyone); a refused *reload* keeps the previous set, so the relay stays ready (the
  dashboard and the `FrontfilterRulesReloadFailing` alert say the reload failed).
- `spool`: the last spool probe, at most `SPOOL_STALE_AFTER` old, could create, write and fsync
  a file in `spool.dir`, with at least `spool.min_free_space` left for non-root users. The probe
  uses an unnamed `O_TMPFILE` inode, so the spool never holds a file it did not write itself
  (named fallback `.probe-*` on file systems without O_TMPFILE). It runs in a worker thread: a
  stuck fsync blocks the probe, not the event loop, and turns the check stale, hence failing.
- `backend` (sync mode only): some backend answered within `BACKEND_STALE_AFTER`; without one
  every message gets 451. In queue mode a backend outage is not unreadiness — mail is still
  taken and spooled, and the spool check says when that must stop — so the backends are
  probed and reported (`frontfilter_backend_up`, the FrontfilterBackendDown alert) but do not
  make the relay unready. Delivered mail is the signal
  (observe.backend_answered_at); a backend with no delivery in the last `PROBE_INTERVAL` gets a
  probe: TCP connect, read the 220 greeting, QUIT — what HAProxy's smtpchk does. So a busy
  backend is never probed, an idle or standby one about twice a minute, and a quiet night does
  not make the relay "not ready" (no mail, hence no signal, hence no mail, would never recover).
- `antivirus` (with `[antivirus]` and an `on_error` that refuses, the default): clamd answered
  a PING within `ANTIVIRUS_STALE_AFTER`. Without clamd such a relay answers 451 (or 5xx) to
  every message. With `on_error = "accept"` mail passes unscanned: not a check.
- `accepting`: false from the moment shutdown begins, so a load balancer drains us first.

Every probe sets `frontfilter_ready{check}` and `frontfilter_backend_up{backend}`; a check or a
backend that changes state writes one log line with the reason.

Bounds: one probe round at a time, every `PROBE_INTERVAL`; each backend probe bounded by
`backend.connect_timeout` for connect and greeting together, and by `PROBE_LINE_BYTES`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from frontfilter import observe
from frontfilter.antivirus.clamd import ClamdClient
from frontfilter.config import BackendMode, Config, HostPort, OnError
from frontfilter.units import SECONDS

PROBE_INTERVAL = 10 * SECONDS        # spool probe, and idle-backend probes
SPOOL_STALE_AFTER = 30 * SECONDS     # a spool probe older than this (stuck disk) fails the check
BACKEND_STALE_AFTER = 45 * SECONDS   # no backend answer this long: not ready (> 3 probe rounds
                                     # even with a 10 s connect_timeout in each)
ANTIVIRUS_STALE_AFTER = 30 * SECONDS  # no PONG from clamd this long: not ready (3 probe rounds)
PROBE_LINE_BYTES = 1024              # a greeting line longer than this is not an SMTP server
LAG_INTERVAL = 0.5 * SECONDS         # event loop lag sampling


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Health:
    """The readiness state of one relay process, kept fresh by `run()`."""

    def __init__(self, config: Config, rules_count: Callable[[], int | None],
                 clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._rules_count = rules_count
        self._clock = clock
        self._backends = [str(server) for server in config.backend.servers]
        self._servers = dict(zip(self._backends, config.backend.servers, strict=True))
        self._probe_ok_at: dict[str, float] = {}     # backend -> when a probe last succeeded
        self._backend_state: dict[str, bool] = {}
        self._backend_detail = "not probed yet"
        self._spool_ok_at: float | None = None
        self._spool_detail = "not probed yet"
        self._reported: dict[str, bool] = {}
        self.accepting = True
        antivirus = config.antivirus
        self._clamd = (ClamdClient.from_config(antivirus)
                       if antivirus is not None and antivirus.on_error is not OnError.ACCEPT else None)
        self._clamd_ok_at: float | None = None
        self._clamd_detail = "not probed yet"
        observe.backends_configured(self._backends)

    # ---- reading ------------------------------------------------------------------------

    def checks(self) -> list[Check]:
        now = self._clock()
        count = self._rules_count()
        rules = Check("rules", count is not None,
                      f"{count} rules loaded" if count is not None else "no valid rule set loaded")
        spool_fresh = self._spool_ok_at is not None and now - self._spool_ok_at <= SPOOL_STALE_AFTER
        if spool_fresh:
            spool = Check("spool", True, "writable")
        elif self._spool_ok_at is not None and self._spool_detail == "writable":
            spool = Check("spool", False, f"probe stuck for more than {SPOOL_STALE_AFTER:g}s")
        else:
            spool = Check("spool", False, self._spool_detail)
        answered = self._last_backend_answer()
        if answered is not None and now - answered[1] <= BACKEND_STALE_AFTER:
            backend = Check("backend", True, f"{answered[0]} answered {now - answered[1]:.0f}s ago")
        else:
            backend = Check("backend", False,
                            f"no backend answered in the last {BACKEND_STALE_AFTER:g}s "
                            f"({self._backend_detail})")
        accepting = Check("accepting", self.accepting,
                          "accepting connections" if self.accepting else "shutting down")
        checks = [rules, spool]
        if self._config.backend.mode is BackendMode.SYNC:
            checks.append(backend)
        if self._clamd is not None:
            if self._clamd_ok_at is not None and now - self._clamd_ok_at <= ANTIVIRUS_STALE_AFTER:
                checks.append(Check("antivirus", True, "clamd answered"))
            else:
                assert self._config.antivirus is not None      # a clamd client is made only with one
                checks.append(Check("antivirus", False, f"{self._clamd_detail} (on_error "
                                    f"{self._config.antivirus.on_error.value}: mail is refused)"))
        return [*checks, accepting]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks())

    def publish(self) -> list[Check]:
        """Set the readiness gauges and log the checks that changed; returns the checks."""
        checks = self.checks()
        for check in checks:
            observe.ready_check(check.name, check.ok)
            if self._reported.get(check.name) != check.ok:
                if check.name in self._reported or not check.ok:
                    observe.readiness_changed(check.name, check.ok, check.detail)
                self._reported[check.name] = check.ok
        return checks

    def _last_backend_answer(self) -> tuple[str, float] | None:
        best: tuple[str, float] | None = None
        for backend in self._backends:
            seen = [t for t in (observe.backend_answered_at(backend), self._probe_ok_at.get(backend))
                    if t is not None]
            if seen and (best is None or max(seen) > best[1]):
                best = (backend, max(seen))
        return best

    # ---- probing ------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe now, then every PROBE_INTERVAL, until cancelled. A bug in a probe is logged and
        the next round runs; meanwhile the checks go stale, hence not ready (fail closed)."""
        while True:
            try:
                await self.probe()
            except Exception:
                observe.internal_error("readiness probe")
            await asyncio.sleep(PROBE_INTERVAL)

    async def probe(self) -> None:
        """One round: the spool, and each backend without a recent delivery. Never raises."""
        spool = self._config.spool
        problem = await asyncio.to_thread(probe_spool, spool.dir, getattr(spool, "min_free_space", 0))
        if problem is None:
            self._spool_ok_at = self._clock()
            self._spool_detail = "writable"
        else:   # failing now: the last success no longer counts (staleness is for a stuck probe)
            self._spool_ok_at = None
            self._spool_detail = problem
        if self._clamd is not None:
            problem = await self._clamd.ping()
            if problem is None:
                self._clamd_ok_at, self._clamd_detail = self._clock(), "clamd answered"
            else:
                self._clamd_ok_at, self._clamd_detail = None, problem
        now = self._clock()
        idle = [b for b in self._backends
                if (observe.backend_answered_at(b) or float("-inf")) < now - PROBE_INTERVAL]
        results = await asyncio.gather(*(self._probe_backend(b) for b in idle))
        failures = [f"{b}: {r}" for b, r in zip(idle, results, strict=True) if r is not None]
        if failures:
            self._backend_detail = "; ".join(failures)
        elif idle:
            self._backend_detail = "probed"
        self.publish()

    async def _probe_backend(self, backend: str) -> str | None:
        server = self._servers[backend]
        started = self._clock()
        problem = await probe_smtp(server, self._config.backend.connect_timeout)
        up = problem is None
        if up:
            self._probe_ok_at[backend] = self._clock()
        observe.backend_probed(backend, up)
        if self._backend_state.get(backend) != up:
            if backend in self._backend_state or not up:
                observe.backend_changed(backend, up, problem or f"greeted in {self._clock() - started:.3f}s")
            self._backend_state[backend] = up
        return problem


async def probe_smtp(server: HostPort, timeout: float) -> str | None:
    """None when `server` greets with 220 within `timeout`; else why not. Sends QUIT, then closes."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(server.host, server.port,
                                                           limit=PROBE_LINE_BYTES)
            greeting = await reader.readline()
            if not greeting.startswith(b"220"):
                code = greeting[:3].decode("ascii", "replace") if greeting else "nothing"
                return f"greeted with {code}, not 220"
            writer.write(b"QUIT\r\n")
            await writer.drain()
            return None
    except TimeoutError:
        return f"no greeting within {timeout:g}s"
    except (OSError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as error:
        errno_ = getattr(error, "errno", None)
        return f"connect failed: {os.strerror(errno_) if errno_ else type(error).__name__}"
    finally:
        if writer is not None:
            writer.transport.abort()    # no lingering: the 221 is not worth waiting for


def probe_spool(directory: Path, min_free: int = 0) -> str | None:
    """None when a file can be created, written and fsynced in `directory` and at least
    `min_free` bytes are available to unprivileged users; else the reason. Blocking: run it in
    a thread. Creates the directory (0750) when it is missing."""
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
            name = None
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            if name is not None:
                os.unlink(name)
        stats = os.statvfs(directory)
    except OSError as error:
        return f"not writable: {error.strerror or type(error).__name__}"
    free = stats.f_bavail * stats.f_frsize
    if free < min_free:
        return f"only {free // 2**20} MiB free, below spool.min_free_space"
    return None


async def watch_loop_lag(interval: float = LAG_INTERVAL) -> None:
    """Sample how late the event loop runs a timer, until cancelled (frontfilter_event_loop_lag_seconds)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        observe.loop_lag(loop.time() - started - interval)
