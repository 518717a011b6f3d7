"""Real processes and real sockets for the tests: a backend sink, a running relay, a raw client.

Everything binds 127.0.0.1 on ephemeral ports; every process or thread started here is stopped
by the context manager that started it; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0     # seconds for a relay process to say it listens
WAIT_TIMEOUT = 15.0      # seconds for mail to show up


def free_port() -> int:
    """A port free a moment ago, for programs that cannot report the port they got (Postfix,
    haproxy, Prometheus). Another process may take it first: a relay is given port 0 instead,
    and says which port it got (`Relay.port`, `Relay.port_of`, `Relay.http_port`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port where nothing answers (connections are refused) for as long as the block
    runs: bound, never listened on, so no other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# ---- a backend that records what it receives ---------------------------------------------

@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SinkBehaviour:
    reject_prefix: str = "reject"      # recipients starting with this get 550 5.1.1
    defer_prefix: str = "defer"        # ... get 451 4.2.0
    data_reply: str | None = None      # e.g. "451 4.3.0 busy" to refuse DATA
    data_delay: float = 0.0            # seconds before the answer to the message: a slow backend


class RecordingSink:
    """An aiosmtpd backend in its own thread and loop, keeping every message in memory."""

    def __init__(self, port: int = 0, behaviour: SinkBehaviour | None = None):
        self.port = port
        self.behaviour = behaviour or SinkBehaviour()
        self.messages: list[Received] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()
        self._protocols: list[SMTP] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        local = address.split("@", 1)[0].lower()
        if local.startswith(self.behaviour.reject_prefix):
            return "550 5.1.1 User unknown"
        if local.startswith(self.behaviour.defer_prefix):
            return "451 4.2.0 Try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.behaviour.data_delay:
            await asyncio.sleep(self.behaviour.data_delay)
        if self.behaviour.data_reply:
            return self.behaviour.data_reply
        with self._lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Stored"

    def smtp_options(self) -> dict[str, Any]:
        """Extra keyword arguments for aiosmtpd's SMTP (a subclass adds TLS, say)."""
        return {}

    def start(self) -> RecordingSink:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            # IPPROTO_TCP, so asyncio turns Nagle off on accepted sockets (see smtp/server.py)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            self.port = sock.getsockname()[1]
            def protocol() -> SMTP:
                smtp = SMTP(self, hostname="backend.test", enable_SMTPUTF8=True, data_size_limit=None,
                            loop=loop, **self.smtp_options())
                self._protocols.append(smtp)
                return smtp

            self._server = loop.run_until_complete(loop.create_server(protocol, sock=sock))
            ready.set()
            loop.run_forever()
            self._server.close()
            for smtp in self._protocols:          # sessions still open: cut them, as a crash would
                if smtp.transport is not None:
                    smtp.transport.close()
            loop.run_until_complete(asyncio.sleep(0.05))
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("sink did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def wait_for(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)

    def __enter__(self) -> RecordingSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the relay as an administrator runs it ---------------------------------------------------

_CONFIG_NUMBERS = itertools.count(1)


def write_config(directory: Path, backend_ports: list[int], *, port: int | None = None,
                 rules_dir: Path | None = None, extra: str = "", **sections: dict[str, Any]) -> Path:
    """A config file with sensible test defaults; `sections` override keys per section."""
    port = port or 0           # the relay binds a port of its own and says which (Relay.port)
    base: dict[str, dict[str, Any]] = {
        "server": {"hostname": "mx.test", "listen": [f"127.0.0.1:{port}"],
                   "max_message_size": "1MiB", "max_recipients": 5, "shutdown_grace": "5s"},
        "relay": {"domains": ["example.org"], "trusted_networks": []},
        "backend": {"servers": [f"127.0.0.1:{p}" for p in backend_ports], "mode": "sync",
                    "connect_timeout": "2s", "timeout": "10s"},
        "spool": {"dir": str(directory / "spool")},
        "rules": {"dir": str(rules_dir or REPO / "rules"), "watch_interval": "200ms"},
        "quarantine": {"dir": str(directory / "quarantine")},
        "log": {"format": "json", "level": "info"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = directory / f"frontfilter-{port or next(_CONFIG_NUMBERS)}.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


# ---- one message, as a client sends it ----------------------------------------------------

@dataclass
class Answer:
    """What the relay said to one message: the reply that decided it (to end of DATA, or the
    refusal of MAIL or of every RCPT), and the recipients refused on the way."""

    code: int
    text: str                      # enhanced code and text, as the relay wrote them
    stage: str                     # "mail", "rcpt" or "data": the command that got `code`
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)     # recipient -> reply

    @property
    def queue_id(self) -> str | None:
        found = QUEUE_ID.search(self.text)
        return (found.group(1) or found.group(2)) if found else None

    @property
    def ok(self) -> bool:
        """The message was taken (250) for every recipient."""
        return self.code == 250 and self.stage == "data" and not self.refused

    @property
    def said(self) -> str:
        """"554 5.7.1 text", without the " [queue id]" a refusal ends with."""
        return re.sub(r" \[[0-9A-Z]+\]$", "", f"{self.code} {self.text}")


def send(port: int, data: bytes, *, sender: str = "alice@example.net",
         recipients: tuple[str, ...] | list[str] = ("bob@example.org",), helo: str = "client.test",
         mail_options: tuple[str, ...] = (), timeout: float = 30.0) -> Answer:
    """One message in a session of its own, through the relay at `port`."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
        client.ehlo(helo)
        code, text = client.mail(sender, list(mail_options))
        if code != 250:
            return Answer(code, text.decode(errors="replace"), "mail")
        refused = {}
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code != 250:
                refused[recipient] = (code, text.decode(errors="replace"))
        if len(refused) == len(recipients):
            code, text = next(iter(refused.values()))
            return Answer(code, text, "rcpt", refused)
        code, text = client.data(data)
        return Answer(code, text.decode(errors="replace"), "data", refused)


def eventually(probe: Any, timeout: float = WAIT_TIMEOUT, interval: float = 0.05) -> Any:
    """Call `probe` until it returns something true (returned), or raise after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {value!r} after {timeout:g}s")
        time.sleep(interval)


QUEUE_ID = re.compile(r"queued as (\w+)|\[(\w+)\]\s*$")


def queue_id_in(reply: bytes | str) -> str:
    """The queue id the relay's answer to end of DATA names: `queued as ID` on a 250, `[ID]` at
    the end of a refusal. A test finds the log line of its own message with it."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    found = QUEUE_ID.search(text)
    assert found is not None, f"no queue id in {text!r}"
    return found.group(1) or found.group(2)


class Relay:
    """`frontfilter serve --config FILE` in a subprocess; its JSON log lines are collected."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None):
        self.config = config
        self.env = env
        self.prefix = prefix or []       # a command the relay runs under (`unshare ...`)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.port = 0

    def start(self) -> Relay:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "frontfilter", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.wait_event("listening", timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        listening = [l for l in self.lines if l.get("event") == "listening"]
        self.port = int(listening[0]["address"].rsplit(":", 1)[1])
        return self

    def port_of(self, listener: str) -> int:
        """The port of the listener of that name, as the relay reported it (listen with port 0)."""
        return int(self.wait_event("listening", timeout=START_TIMEOUT, listener=listener)["address"].rsplit(":", 1)[1])

    @property
    def http_port(self) -> int:
        """The port of /metrics, /healthz and /readyz (metrics.listen with port 0)."""
        return int(self.wait_event("http_listening", timeout=START_TIMEOUT)["address"].rsplit(":", 1)[1])

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.raw_stderr.append(text)
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.lines.append(entry)
                self._events.put(entry)

    def wait_event(self, event: str, timeout: float = WAIT_TIMEOUT, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for entry in list(self.lines):
            if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                return entry
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None and self._events.empty():
                raise RuntimeError(f"relay exited ({self.proc.returncode}): " + "\n".join(self.raw_stderr[-20:]))
            try:
                entry = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                return entry
        raise TimeoutError(f"no {event} {match} in the log: " + "\n".join(self.raw_stderr[-20:]))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [l for l in self.lines if l.get("event") == event]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def relay_with_sink(tmp_path: Path, sink_behaviour: SinkBehaviour | None = None,
                    **sections: dict[str, Any]) -> Iterator[tuple[Relay, RecordingSink]]:
    with RecordingSink(behaviour=sink_behaviour) as sink:
        config = write_config(tmp_path, [sink.port], **sections)
        with Relay(config) as relay:
            yield relay, sink


# ---- a raw SMTP client, for what smtplib would refuse to send ----------------------------------

@dataclass
class RawClient:
    port: int
    host: str = "127.0.0.1"
    timeout: float = 10.0
    sock: socket.socket = field(init=False)
    buffer: bytes = b""

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)

    def read_reply(self) -> str:
        """One whole reply (multi-line replies joined by newlines)."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines) if lines else ""
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read_reply()

    def begin_data(self, sender: str = "alice@example.net", recipient: str = "bob@example.org",
                   helo: str = "client.test") -> None:
        """Greeting, EHLO, MAIL, RCPT, DATA, each answered as a clean transaction is (250s, 354):
        the client is left to send its message."""
        assert self.read_reply().startswith("220 ")
        assert self.command(f"EHLO {helo}").startswith("250")
        assert self.command(f"MAIL FROM:<{sender}>").startswith("250")
        assert self.command(f"RCPT TO:<{recipient}>").startswith("250")
        assert self.command("DATA").startswith("354")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
