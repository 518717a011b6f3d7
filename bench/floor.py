"""The floor of frontfilter's stack: aiosmtpd and aiosmtplib relaying mail and doing nothing else.

    python bench/floor.py --port P --backend B --mode queue|sync --spool DIR [--workers N]

No parse, no rules, no log, no metrics, no envelope on disk: what is left is the cost of the
libraries frontfilter is built on. In queue mode each message is made durable by frontfilter's
own commit (`safeio.write_atomically`: written under a lock, fsynced, renamed, directory
fsynced) before the 250, and forwarded by a background task over reused connections; in sync
mode it is forwarded before the 250. uvloop when installed, `--workers` processes sharing one listening socket.
EHLO offers PIPELINING, which aiosmtpd handles (it reads one command line at a time) but does not
announce, so that the bench's pipelined load (`bench/pipeliner.py`) can run against the floor too.

It relays everything, the messages frontfilter refuses included, and is not a product: a crash
loses what it queued. It is a bench contender (`floor-queue`, `floor-sync`) so that a target can
be set against what the stack allows. Where frontfilter replaced a part of the libraries (DATA
read in blocks, not lines; the message sent in one write; addresses parsed by a regex), it can
beat this floor, and does on large messages; everywhere else it pays at least this much.
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

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frontfilter.delivery.safeio import write_atomically  # noqa: E402  (the spool's own commit)

CONNECTIONS = 10                  # to the backend, per process: frontfilter's backend.concurrency


class Backend:
    """A pool of open aiosmtplib connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self.opened = 0

    async def send(self, sender: str, recipients: list[str], data: bytes) -> None:
        if self.idle.empty() and self.opened < CONNECTIONS:
            self.opened += 1
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False)
            await client.connect()
        else:
            client = await self.idle.get()
        try:
            await client.sendmail(sender, recipients, data)
        finally:
            self.idle.put_nowait(client)


class Relay:
    def __init__(self, mode: str, backend: Backend, spool: Path) -> None:
        self.mode, self.backend, self.spool = mode, backend, spool
        self.queue: asyncio.Queue[tuple[str, str, list[str], bytes]] = asyncio.Queue()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        """aiosmtpd's reply with PIPELINING added (RFC 2920) before its last line."""
        session.host_name = hostname             # this hook's duty in aiosmtpd's new-style EHLO
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if self.mode == "sync":
            await self.backend.send(envelope.mail_from or "", envelope.rcpt_tos, data)
        else:
            name = uuid.uuid4().hex
            await asyncio.get_running_loop().run_in_executor(
                None, write_atomically, self.spool / "tmp", self.spool / "queue" / name, (data,))
            self.queue.put_nowait((name, envelope.mail_from or "", envelope.rcpt_tos, data))
        return "250 2.0.0 Ok"

    async def deliver(self) -> None:
        while True:
            name, sender, recipients, data = await self.queue.get()
            await self.backend.send(sender, recipients, data)
            # On the event loop and without a directory fsync, unlike frontfilter (a thread,
            # batched fsyncs): the floor takes the cheaper way wherever there is one.
            (self.spool / "queue" / name).unlink()


async def serve(listener: socket.socket, mode: str, backend_port: int, spool: Path) -> None:
    for sub in ("tmp", "queue"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    relay = Relay(mode, Backend(backend_port), spool)
    deliverers = [asyncio.create_task(relay.deliver()) for _ in range(CONNECTIONS)]
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopped.set_result, None)
    server = await loop.create_server(
        lambda: SMTP(relay, decode_data=False, hostname="floor.localdomain"), sock=listener)
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
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    children = []
    for worker in range(1, args.workers):      # bound once, before the forks: one socket for all
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(listener, args.mode, args.backend, args.spool / str(worker)))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(serve(listener, args.mode, args.backend, args.spool / "0"))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
