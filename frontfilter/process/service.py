"""The composition root: build everything from the config, run it, reload it, stop it.

Start: rules are loaded first; if they are invalid the relay still starts (so `/readyz` and the
logs can say why) but answers every connection `421 4.3.0` until a valid set loads — a security
filter never runs without its rules. Reload (SIGHUP, or a rule file changing on disk): the new
set is loaded and validated whole in a worker thread and swapped in atomically between messages;
an invalid set is refused, logged with file, rule and key, and the old set keeps running.
SIGHUP also reloads the TLS certificate, the AUTH users file and the backend TLS files
(smtp/door.py): new handshakes use them, sessions in flight are not touched; and the ARC
sealing key (pipeline/sealing.py): messages decided from then on are sealed with it.
With `[metrics] listen`, the HTTP endpoint (/metrics, /healthz, /readyz; see endpoint/httpd.py) starts
before the SMTP listeners, with the probes that keep readiness fresh (endpoint/health.py).
In queue mode the spool is recovered (delivery/queue.py) before the listeners open.
One process of the service (the only one, or worker 0) runs the quarantine's retention and
reports what `frontfilter quarantine` did (delivery/quarantine/expiry.py).
Stop (SIGTERM/SIGINT): /readyz turns 503 at once, stop accepting, let sessions in flight
finish within `server.shutdown_grace`, then close what is left with `421 4.3.2`; deliveries in
flight get the same grace, what is not delivered stays spooled for the next start.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from frontfilter import __version__, observe
from frontfilter.process import allocator, sdnotify
from frontfilter.config import BackendMode, Config, ConfigError, HostPort, config_warnings
from frontfilter.delivery.queue import StoreAndForward
from frontfilter.delivery.tls import load_client_context, reload_backend_tls
from frontfilter.endpoint.health import Health, watch_loop_lag
from frontfilter.endpoint.httpd import HttpEndpoint
from frontfilter.pipeline.sealing import load_sealer, reload_sealer
from frontfilter.pipeline.stages import Pipeline, RuleBook
from frontfilter.delivery.quarantine import expiry
from frontfilter.rules.loader import load_ruleset
from frontfilter.rules.model import RuleSetError
from frontfilter.smtp.door import FrontDoor, open_front_door, reload_front_door
from frontfilter.smtp.handler import Handler
from frontfilter.smtp.server import bind, start_servers


def rules_snapshot(directory: Path) -> tuple[tuple[str, float, int], ...]:
    """What the watcher compares: name, mtime and size of every file under the rules dir."""
    try:
        return tuple(sorted(
            (str(p), p.stat().st_mtime, p.stat().st_size) for p in directory.rglob("*") if p.is_file()))
    except OSError:
        return ()

# After the shutdown grace, how long a message already being decided may take to get its
# verdict (the unit's TimeoutStopSec leaves room for shutdown_grace plus this).
DECISION_WAIT = 10.0


class Service:
    def __init__(self, config: Config, sockets: list[socket.socket] | None = None,
                 http_socket: socket.socket | None = None):
        self.config = config
        self.rulebook = RuleBook(None)
        # Queue mode: spool, delivery worker, recipient verification (delivery/queue.py).
        self.queue = StoreAndForward(config) if config.backend.mode is BackendMode.QUEUE else None
        self.pipeline = Pipeline(config, self.rulebook,
                                 spool=self.queue.spool if self.queue else None,
                                 verifier=self.queue.verifier if self.queue else None)
        self.handler = Handler(self.pipeline)
        self._sockets = sockets
        self._http_socket = http_socket    # metrics.listen, bound by a supervisor for its workers
        self._servers: list[asyncio.base_events.Server] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._snapshot: tuple[tuple[str, float, int], ...] = ()
        self.addresses: list[str] = []
        self.health = Health(config, lambda: None if self.rulebook.current is None else len(self.rulebook.current))
        self.httpd: HttpEndpoint | None = None
        self.door: FrontDoor | None = None

    @property
    def ready(self) -> bool:
        return self.rulebook.current is not None

    async def start(self) -> None:
        config = self.config
        allocator.give_big_blocks_back()     # a big message's buffers unmapped once freed
        observe.started(__version__, [str(listener.address) for listener in config.listeners], config)
        for key, why in config_warnings(config):
            observe.warning("config_warning", key=key, detail=why)
        # The certificate, the users file, the backend TLS files, the ARC key: every one that
        # does not load is reported, together, and the relay does not start.
        problems: list[str] = []
        try:
            self.door = await open_front_door(config)
        except ConfigError as error:
            problems += error.problems
        try:
            await load_client_context(config)
        except ConfigError as error:
            problems += error.problems
        try:
            self.pipeline.sealer = await load_sealer(config)
        except ConfigError as error:
            problems += error.problems
        if problems:
            raise ConfigError(problems)
        await self.pipeline.load_sender_map()       # relay.sender_map: ConfigError if unreadable
        await self.pipeline.prepare()
        observe.set_type_labels(config.metrics.type_labels)
        await self.reload(initial=True)
        if self.queue is not None:     # crash recovery before the first new message
            await self.queue.start()
        if config.metrics.listen is not None:
            await self._start_http(config)
        sockets = self._sockets if self._sockets is not None else [bind_listener(l.address) for l in config.listeners]
        assert self.door is not None          # opened above, or the start stopped there
        self._servers = await start_servers(config, self.handler, self.door,
                                            list(zip(config.listeners, sockets)))
        for listener, server in zip(config.listeners, self._servers, strict=True):
            for sock in server.sockets:
                name = sock.getsockname()
                address = f"[{name[0]}]:{name[1]}" if sock.family == socket.AF_INET6 else f"{name[0]}:{name[1]}"
                self.addresses.append(address)
                observe.listening(address, listener.name)     # the port it got, when given port 0
        if config.rules.watch:
            self._tasks.append(asyncio.create_task(self._watch_rules()))
        if expiry.runs_here():       # one process of the service: retention, the tool's ledger
            self._tasks.append(asyncio.create_task(expiry.Expiry(config.quarantine, self._rule_names).run()))
        # What start-up built (modules, config, rule set, lists) lives as long as the process:
        # out of the cycle collector's sight, a full collection walks only what serving made.
        # It walked all of it before: 20-36 ms with the event loop stopped (bench/README.md).
        gc.freeze()

    def _rule_names(self) -> list[str]:
        rules = self.rulebook.current
        return [] if rules is None else [rule.name for rule in rules]

    async def _start_http(self, config: Config) -> None:
        """/metrics, /healthz, /readyz, and the probes that keep readiness fresh."""
        self.httpd = HttpEndpoint(self.health)
        try:
            address = await self.httpd.start(config.metrics.listen, sock=self._http_socket)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise OSError(error.errno, f"{config.metrics.listen} (metrics.listen): {reason}") from None
        observe.http_listening(address)
        self._tasks.append(asyncio.create_task(self.health.run()))
        self._tasks.append(asyncio.create_task(watch_loop_lag()))

    async def reload(self, initial: bool = False) -> bool:
        directory = self.config.rules.dir
        self._snapshot = rules_snapshot(directory)
        try:
            rules = await asyncio.to_thread(load_ruleset, directory)
        except RuleSetError as error:
            observe.rules_refused(error.errors, reload=not initial)
            return False
        except Exception:
            observe.internal_error("loading rules")
            observe.rules_refused(["internal error while loading rules"], reload=not initial)
            return False
        self.rulebook.current = rules
        observe.rules_loaded(len(rules), getattr(rules, "fingerprint", ""),
                             [str(p.name) for p in sorted(directory.glob("*.toml"))], reload=not initial,
                             rules=[(r.name, r.action.value, r.mode.value) for r in rules])
        if self.httpd is not None:
            # Readiness follows at once (a relay that had no rule set becomes ready now), not
            # at the next probe round.
            self.health.publish()
        return True

    async def hangup(self) -> None:
        """SIGHUP: the rules, then the certificate, users, backend TLS files and ARC key; running
        sessions keep what they have, new connections and handshakes get the new."""
        await self.reload()
        if self.door is not None:
            await reload_front_door(self.door, self.config)
        await reload_backend_tls(self.config)
        await reload_sealer(self.pipeline.sealer, self.config)
        await self.pipeline.load_sender_map(reload=True)

    async def _watch_rules(self) -> None:
        interval = self.config.rules.watch_interval
        while True:
            await asyncio.sleep(interval)
            snapshot = await asyncio.to_thread(rules_snapshot, self.config.rules.dir)
            if snapshot != self._snapshot:
                await self.reload()

    async def stop(self, reason: str = "requested") -> None:
        observe.stopping(reason)
        self.handler.accepting = False
        self.health.accepting = False
        self.health.publish()          # /readyz says 503 while sessions drain
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + self.config.server.shutdown_grace
        # Deliveries in flight get the same grace as sessions; the rest stays spooled.
        delivery = asyncio.create_task(self.queue.stop(deadline)) if self.queue is not None else None
        # Sessions between transactions are told 421 4.3.2 now; the others finish theirs.
        for session in list(self._live_sessions()):
            session.shut_down()
        while self._live_sessions() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cut = 0
        for session in list(self._live_sessions()):
            cut += 1
            session.cut()
        # A message being decided at the cut is answered first (answering 421 to a message
        # that is then spooled would have it sent twice), within DECISION_WAIT.
        late = time.monotonic() + DECISION_WAIT
        while any(session.deciding for session in self.handler.sessions) and time.monotonic() < late:
            await asyncio.sleep(0.05)
        for session in [session for session in self.handler.sessions if session.deciding]:
            session.cut(force=True)
        for server in self._servers:
            await server.wait_closed()
        if delivery is not None:
            await delivery
        if self.queue is not None:     # no session left that could still spool a message
            await self.queue.close()
        self.pipeline.shutdown()
        if self.door is not None and self.door.authenticator is not None:
            self.door.authenticator.shutdown()
        if self.httpd is not None:
            await self.httpd.stop()
        observe.stopped(cut)

    def _live_sessions(self) -> list[Any]:
        return [session for session in self.handler.sessions if session.live]

    async def run(self) -> None:
        """The process's life under a service manager: READY=1 once listening, RELOADING=1 …
        READY=1 around SIGHUP, STOPPING=1, watchdog pings from this loop (sdnotify.py)."""
        loop = asyncio.get_running_loop()
        with sdnotify.Notifier.from_environment() as notify:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._notified_hangup(notify)))
            watchdog = asyncio.create_task(_watchdog(notify)) if notify.watchdog_interval else None
            try:
                await self.start()
                notify.ready(self.status_line())
                await self._stop.wait()
                notify.stopping("stopping: letting sessions in flight finish")
                await self.stop("signal")
            finally:
                if watchdog is not None:
                    watchdog.cancel()

    async def _notified_hangup(self, notify: sdnotify.Notifier) -> None:
        notify.reloading("reloading rules and certificates")
        before = self.rulebook.current
        try:
            await self.hangup()
        finally:
            refused = self.rulebook.current is before     # a refused set leaves the old object
            notify.ready(self.status_line() + ("; last reload REFUSED, previous rules kept (see the journal)"
                                               if refused else ""))

    def status_line(self) -> str:
        """One line for `systemctl status`: what is served, with how many rules."""
        if self.rulebook.current is None:
            return "no valid rule set: answering 421 until one loads (see the journal)"
        return f"{len(self.rulebook.current)} rules; listening on {', '.join(self.addresses)}"


async def _watchdog(notify: sdnotify.Notifier) -> None:
    """WATCHDOG=1 every half WatchdogSec=, from the event loop: a stuck loop stops the pings."""
    interval = notify.watchdog_interval or 1.0
    while True:
        notify.watchdog()
        await asyncio.sleep(interval)


def bind_listener(address: HostPort | None) -> socket.socket:
    """bind(), with the address in the error an administrator reads."""
    try:
        assert address is not None
        return bind(address)
    except OSError as error:
        raise OSError(error.errno, f"{address}: {error.strerror or error}") from None
