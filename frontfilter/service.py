"""The composition root: build everything from the config, run it, reload it, stop it.

Start: rules are loaded first; if they are invalid the relay still starts (so `/readyz` and the
logs can say why) but answers every connection `421 4.3.0` until a valid set loads — a security
filter never runs without its rules. Reload (SIGHUP, or a rule file changing on disk): the new
set is loaded and validated whole in a worker thread and swapped in atomically between messages;
an invalid set is refused, logged with file, rule and key, and the old set keeps running.
Stop (SIGTERM/SIGINT): stop accepting, let sessions in flight finish within
`server.shutdown_grace`, then close what is left with `421 4.3.2`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import time
from pathlib import Path
from typing import Any

from frontfilter import __version__, observe
from frontfilter.config import Config
from frontfilter.pipeline import Pipeline, RuleBook
from frontfilter.reply import SHUTTING_DOWN
from frontfilter.rules.loader import load_ruleset
from frontfilter.rules.model import RuleSetError
from frontfilter.smtp.handler import Handler
from frontfilter.smtp.server import bind, start_servers


def rules_snapshot(directory: Path) -> tuple[tuple[str, float, int], ...]:
    """What the watcher compares: name, mtime and size of every file under the rules dir."""
    try:
        return tuple(sorted(
            (str(p), p.stat().st_mtime, p.stat().st_size) for p in directory.rglob("*") if p.is_file()))
    except OSError:
        return ()


class Service:
    def __init__(self, config: Config, sockets: list[socket.socket] | None = None):
        self.config = config
        self.rulebook = RuleBook(None)
        self.pipeline = Pipeline(config, self.rulebook)
        self.handler = Handler(self.pipeline)
        self._sockets = sockets
        self._servers: list[asyncio.base_events.Server] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._snapshot: tuple[tuple[str, float, int], ...] = ()
        self.addresses: list[str] = []

    @property
    def ready(self) -> bool:
        return self.rulebook.current is not None

    async def start(self) -> None:
        config = self.config
        observe.started(__version__, [str(a) for a in config.server.listen], _effective(config))
        await self.reload(initial=True)
        sockets = self._sockets if self._sockets is not None else [bind(a) for a in config.server.listen]
        self._servers = await start_servers(config, self.handler, sockets)
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                address = f"[{name[0]}]:{name[1]}" if sock.family == socket.AF_INET6 else f"{name[0]}:{name[1]}"
                self.addresses.append(address)
                observe.listening(address)
        if config.rules.watch:
            self._tasks.append(asyncio.create_task(self._watch_rules()))

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
                             [str(p.name) for p in sorted(directory.glob("*.toml"))], reload=not initial)
        return True

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
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + self.config.server.shutdown_grace
        while self._live_sessions() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cut = 0
        for protocol in list(self._live_sessions()):
            cut += 1
            if protocol.transport is not None:
                protocol.transport.write((SHUTTING_DOWN.wire + "\r\n").encode())
                protocol.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self.pipeline.shutdown()
        observe.stopped(cut)

    def _live_sessions(self) -> list[Any]:
        live = [p for p in self.handler.sessions if p.transport is not None and not p.transport.is_closing()]
        self.handler.sessions = set(live)
        return live

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
        await self._stop.wait()
        await self.stop("signal")


def _effective(config: Config) -> dict[str, Any]:
    """The configuration as it will be used, for the start-up log line. No secrets in it yet."""
    result: dict[str, Any] = {}
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            result[section.name] = {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
        else:
            result[section.name] = _plain(value)
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return getattr(value, "value", None) or str(value)
