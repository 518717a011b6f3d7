"""The floor of frontfilter's stack: its own SMTP session and its own backend client relaying mail, and nothing else.

    python bench/floor.py --port P --backend B --mode queue|sync --spool DIR [--workers N]

What it measures: frontfilter's own SMTP server (`smtp.session.SmtpSession` on the I/O-free
core `smtp.core`, built as `smtp.server` builds it, connection limits off) with a handler that
decides nothing, the spool's durable write in queue mode, and frontfilter's backend client
(`delivery.client`, MAIL, RCPT and DATA pipelined, `delivery.wire` for the message) forwarding — without
parsing, rules, inspection, logs or an envelope on disk. That is the stack's own limit:
frontfilter serves on this same session and adds its filtering on top. The session's own costs
are in it, as in frontfilter: the core's command and DATA reading, the timers, and the reply
counters (`observe.reply_sent`, prometheus counters in this process).

In queue mode each message is made durable by frontfilter's own commit
(`safeio.write_atomically`: written under a lock, fsynced, renamed, directory fsynced) before
the 250, and forwarded by a background task over reused connections; in sync mode it is
forwarded before the 250. uvloop when installed, `--workers` processes sharing one listening
socket (bound as frontfilter binds its own). EHLO says what frontfilter's does, PIPELINING
included, so the bench's pipelined load (`bench/pipeliner.py`) runs against the floor too.

It relays everything, the messages frontfilter refuses included, and is not a product: a crash
loses what it queued. It is a bench contender (`floor-queue`, `floor-sync`) so that a target can
be set against what the stack allows: frontfilter pays at least this much. (Until the client
of 2026-12-06 the floor forwarded with aiosmtplib's `sendmail`, one round trip per command.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# frontfilter's own SMTP server, public API only: what `smtp.server` builds for each connection.
from frontfilter import reply  # noqa: E402
from frontfilter.config import HostPort, ListenerConfig, ServerConfig, TlsMode  # noqa: E402
from frontfilter.delivery import wire  # noqa: E402
from frontfilter.delivery.client import SmtpClient  # noqa: E402
from frontfilter.delivery.safeio import write_atomically  # noqa: E402  (the spool's own commit)
from frontfilter.reply import Reply  # noqa: E402
from frontfilter.smtp.door import FrontDoor  # noqa: E402
from frontfilter.smtp.limits import ConnectionLimits  # noqa: E402
from frontfilter.smtp.server import bind  # noqa: E402
from frontfilter.smtp.session import SmtpSession  # noqa: E402

CONNECTIONS = 10                  # to the backend, per process: frontfilter's backend.concurrency
QUEUED = Reply(250, "2.0.0", "Ok")
# As the bench's frontfilter config (bench/run.py): 64 MiB messages; every other bound is
# frontfilter's default (line length, junk commands, errors, timeouts).
SERVER = ServerConfig(hostname="floor.localdomain", max_message_size=64 * 1024 * 1024)


class Backend:
    """A pool of open connections of frontfilter's backend client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[SmtpClient] = asyncio.Queue()
        self.opened = 0

    async def send(self, sender: str, recipients: list[str], data: bytes) -> None:
        if self.idle.empty() and self.opened < CONNECTIONS:
            self.opened += 1
            client = await SmtpClient.connect("127.0.0.1", self.port, timeout=60, connect_timeout=10)
            await client.ehlo(SERVER.hostname)
        else:
            client = await self.idle.get()
        try:
            commands = [wire.mail_command(sender, [], "utf-8"), *(wire.rcpt_command(r, "utf-8") for r in recipients), b"DATA"]
            if (await client.exchange(commands))[-1].code == 354:
                await wire.send_message(client, data)
        finally:
            self.idle.put_nowait(client)


class Envelope:
    """The floor's whole per-connection state (`SmtpSession.state`): sender and recipients."""

    __slots__ = ("sender", "recipients")

    def __init__(self) -> None:
        self.sender = ""
        self.recipients: list[str] = []


class FloorHandler:
    """frontfilter's Handler interface (smtp.handler) with no policy: everyone is admitted,
    every sender and recipient taken, every message relayed."""

    def __init__(self, mode: str, backend: Backend, spool: Path) -> None:
        self.mode, self.backend, self.spool = mode, backend, spool
        self.queue: asyncio.Queue[tuple[str, str, list[str], bytes]] = asyncio.Queue()

    async def admit(self, session: SmtpSession) -> Reply | None:
        session.state = Envelope()
        return None

    async def helo(self, session: SmtpSession, hostname: str) -> Reply | None:
        return None

    async def mail(self, session: SmtpSession, address: str, options: list[str]) -> Reply:
        envelope: Envelope = session.state
        envelope.sender, envelope.recipients = address, []
        return reply.SENDER_OK

    async def rcpt(self, session: SmtpSession, address: str) -> Reply:
        session.state.recipients.append(address)
        return reply.RECIPIENT_OK

    async def data(self, session: SmtpSession, content: bytes) -> Reply:
        envelope: Envelope = session.state
        sender, recipients = envelope.sender, envelope.recipients
        envelope.sender, envelope.recipients = "", []
        if self.mode == "sync":
            await self.backend.send(sender, recipients, content)
        else:
            name = uuid.uuid4().hex
            await asyncio.get_running_loop().run_in_executor(
                None, write_atomically, self.spool / "tmp", self.spool / "queue" / name, (content,))
            self.queue.put_nowait((name, sender, recipients, content))
        return QUEUED

    async def reset(self, session: SmtpSession) -> None:
        envelope: Envelope = session.state
        envelope.sender, envelope.recipients = "", []

    async def session_closed(self, session: SmtpSession) -> None:
        pass

    def forget(self, session: SmtpSession) -> None:
        pass

    def authenticated(self, session: SmtpSession, user: str) -> None:
        pass

    def tls_started(self, session: SmtpSession) -> None:
        pass

    def queue_id_of(self, session: SmtpSession) -> str | None:
        return None

    async def deliver(self) -> None:
        while True:
            name, sender, recipients, data = await self.queue.get()
            await self.backend.send(sender, recipients, data)
            # On the event loop and without a directory fsync, unlike frontfilter (a thread,
            # batched fsyncs): the floor takes the cheaper way wherever there is one.
            (self.spool / "queue" / name).unlink()


async def serve(listener: socket.socket, port: int, mode: str, backend_port: int, spool: Path) -> None:
    for sub in ("tmp", "queue"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    handler = FloorHandler(mode, Backend(backend_port), spool)
    deliverers = [asyncio.create_task(handler.deliver()) for _ in range(CONNECTIONS)]
    role = ListenerConfig(address=HostPort("127.0.0.1", port), name="floor", tls=TlsMode.NONE)
    door = FrontDoor(limits=ConnectionLimits(max_connections=0, max_per_ip=0, rate_per_ip=0, rate_window=0))
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopped.set_result, None)
    server = await loop.create_server(lambda: SmtpSession(handler, role, door, SERVER), sock=listener)
    async with server:
        await stopped
    for task in deliverers:
        task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", type=int, required=True, help="the sink's port on 127.0.0.1")
    parser.add_argument("--mode", choices=("queue", "sync"), default="queue")
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    listener = bind(HostPort("127.0.0.1", args.port))
    children = []
    for worker in range(1, args.workers):      # bound once, before the forks: one socket for all
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(listener, args.port, args.mode, args.backend, args.spool / str(worker)))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(serve(listener, args.port, args.mode, args.backend, args.spool / "0"))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
