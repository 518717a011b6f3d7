"""A pipelining SMTP load for the bench: EHLO, then MAIL, RCPT and DATA in one write (RFC 2920).

    python bench/pipeliner.py --port P --sessions 20 --messages 1000 [--per-connection 5]
                              [--from ADDR] [--to ADDR ...] MESSAGE_FILE

Postfix's `smtp-source`, the bench's other load, says HELO and waits for the reply to each
command. An MTA does not: Postfix's own `smtp` client says EHLO and, when PIPELINING is
offered, sends MAIL, every RCPT and DATA as one group and then reads their replies. This load
does that, so a relay is measured on what its real senders do.

What it sends: `--sessions` sessions at once over loopback, each opening connections one after
the other until its share of `--messages` is sent. On each connection: EHLO (and it stops unless
PIPELINING is in the reply: RFC 2920 §3 lets a client pipeline only then); then, for each of up
to `--per-connection` messages, `MAIL FROM`, one `RCPT TO` per `--to` and `DATA` in one write
(DATA ends a group, RFC 2920 §3.1); their replies read in order (250, 250 or 251 each, 354);
the message with CRLF line ends, dot-stuffed (RFC 5321 §4.5.2), and its terminator in one
write; and the 250 that takes it. Then QUIT (221), and the next connection.

What it guarantees: a message counts as accepted only when the 250 after its terminator came.
Every reply is checked; the first one that is not what the exchange needs, a connection closed
or refused, or a reply that does not come within REPLY_TIMEOUT stops the whole load: one line
on stderr naming the session, the message and the command, with the reply, and exit status 1.
On success it prints `accepted=N connections=C seconds=T` on stdout and exits 0; the bench
(`bench/run.py`) reads both. It sends only mail that should be taken: a refusal is a failure.

Plain asyncio streams, one task per session; uvloop when installed, as for the bench's other
Python processes. With `--wait-for-go` it prepares everything, prints `ready` and waits for a
line on stdin before connecting, so the bench's clock does not time the interpreter's start.

Bounds:
  REPLY_TIMEOUT = 60 s        a relay that goes silent this long has failed the run (the bench
                              gives a whole load 300 s)
  REPLY_LINE_LIMIT = 512      octets of one reply line with its CRLF (RFC 5321 §4.5.3.1.5)
  REPLY_LINES_LIMIT = 100     lines of one multi-line reply: EHLO's is about ten; more is a
                              broken server, not a reply to wait out
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SECONDS = 1.0
REPLY_TIMEOUT = 60 * SECONDS
REPLY_LINE_LIMIT = 512
REPLY_LINES_LIMIT = 100
EHLO_NAME = "pipeliner.localdomain"


class Unexpected(Exception):
    """The first reply (or silence, or closed connection) the exchange did not allow; its text
    is the readable line the load stops with."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]          # the text of each line, after the code and its separator

    def __str__(self) -> str:
        more = f" (+{len(self.lines) - 1} lines)" if len(self.lines) > 1 else ""
        return f"{self.code} {self.lines[0]}".rstrip() + more

    def keywords(self) -> set[str]:
        """EHLO keywords (RFC 5321 §4.1.1.1): the first word of each line after the greeting."""
        return {line.split(" ", 1)[0].upper() for line in self.lines[1:] if line}


@dataclass(frozen=True)
class Plan:
    port: int
    sessions: int
    messages: int
    per_connection: int
    sender: str
    recipients: tuple[str, ...]
    data: bytes                     # as it goes on the wire after 354: see `wire_data`
    host: str = "127.0.0.1"

    def quotas(self) -> list[int]:
        """How many messages each session sends: `messages` spread as evenly as it goes."""
        share, extra = divmod(self.messages, self.sessions)
        return [share + (session < extra) for session in range(self.sessions)]


@dataclass
class Tally:
    accepted: int = 0
    connections: int = 0


def wire_data(message: bytes) -> bytes:
    """A message file (LF or CRLF line ends) as DATA sends it: CRLF line ends, a leading dot
    doubled (RFC 5321 §4.5.2), a last line without its line end given one, then `.` CRLF.

    A bare CR cannot be sent as SMTP data (RFC 5321 §2.3.8) and is refused here, not sent."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()                 # the file's final line end, not an empty last line
    if any(b"\r" in line for line in lines):
        raise ValueError("the message holds a bare CR, which SMTP data cannot carry")
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


async def read_reply(reader: asyncio.StreamReader, what: str) -> Reply:
    """One reply, single- or multi-line (RFC 5321 §4.2.1), within REPLY_TIMEOUT."""
    lines: list[str] = []
    code = None
    try:
        async with asyncio.timeout(REPLY_TIMEOUT):
            while True:
                raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    raise Unexpected(f"{what}: connection closed before the reply"
                                     + (f" (after {lines[-1]!r})" if lines else ""))
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                    raise Unexpected(f"{what}: not an SMTP reply line: {line[:80]!r}")
                if code is not None and int(line[:3]) != code:
                    raise Unexpected(f"{what}: a multi-line reply changed its code: {line[:80]!r}")
                code = int(line[:3])
                lines.append(line[4:])
                if line[3:4] != "-":
                    return Reply(code, tuple(lines))
                if len(lines) >= REPLY_LINES_LIMIT:
                    raise Unexpected(f"{what}: a reply of more than {REPLY_LINES_LIMIT} lines")
    except TimeoutError:
        raise Unexpected(f"{what}: no reply within {REPLY_TIMEOUT:.0f} s") from None
    except ValueError:               # StreamReader's limit: LimitOverrunError is a ValueError here
        raise Unexpected(f"{what}: a reply line over {REPLY_LINE_LIMIT} octets") from None


async def expect(reader: asyncio.StreamReader, what: str, *codes: int) -> Reply:
    reply = await read_reply(reader, what)
    if reply.code not in codes:
        raise Unexpected(f"{what} answered {reply} (expected {' or '.join(map(str, codes))})")
    return reply


async def connection(plan: Plan, label: str, count: int, tally: Tally) -> None:
    """One connection: EHLO, `count` pipelined transactions, QUIT."""
    try:
        reader, writer = await asyncio.open_connection(plan.host, plan.port, limit=REPLY_LINE_LIMIT)
    except OSError as error:
        raise Unexpected(f"{label}: cannot connect to {plan.host}:{plan.port}: {error}") from None
    tally.connections += 1
    try:
        await expect(reader, f"{label}: the greeting", 220)
        writer.write(f"EHLO {EHLO_NAME}\r\n".encode())
        ehlo = await expect(reader, f"{label}: EHLO", 250)
        if "PIPELINING" not in ehlo.keywords():
            raise Unexpected(f"{label}: EHLO's reply does not offer PIPELINING "
                             f"(offered: {' '.join(sorted(ehlo.keywords())) or 'nothing'})")
        commands = [f"MAIL FROM:<{plan.sender}>"] + [f"RCPT TO:<{rcpt}>" for rcpt in plan.recipients] + ["DATA"]
        group = "".join(command + "\r\n" for command in commands).encode()
        for number in range(1, count + 1):
            where = f"{label}, message {number}"
            writer.write(group)                       # MAIL, RCPT..., DATA: one write
            await expect(reader, f"{where}: {commands[0]}", 250)
            for command in commands[1:-1]:
                await expect(reader, f"{where}: {command}", 250, 251)
            await expect(reader, f"{where}: DATA", 354)
            writer.write(plan.data)                   # the message and its terminator: one write
            await expect(reader, f"{where}: the end of data", 250)
            tally.accepted += 1
        writer.write(b"QUIT\r\n")
        await expect(reader, f"{label}: QUIT", 221)
    except (ConnectionError, OSError) as error:
        raise Unexpected(f"{label}: the connection failed: {error}") from None
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass                                      # already reported, or of no interest after 221


async def session(plan: Plan, index: int, quota: int, tally: Tally) -> None:
    """One of the concurrent sessions: connections one after the other until `quota` is sent."""
    opened = 0
    while quota > 0:
        opened += 1
        count = min(quota, plan.per_connection)
        await connection(plan, f"session {index + 1}, connection {opened}", count, tally)
        quota -= count


async def run(plan: Plan) -> Tally:
    """Send the whole plan; raise Unexpected, the first failure, which stops every session."""
    tally = Tally()
    try:
        async with asyncio.TaskGroup() as group:
            for index, quota in enumerate(plan.quotas()):
                group.create_task(session(plan, index, quota, tally))
    except ExceptionGroup as failures:
        first = failures.exceptions[0]
        if isinstance(first, Unexpected):
            raise first from None
        raise
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the server's port on --host")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    parser.add_argument("--messages", type=int, required=True, help="messages in all")
    parser.add_argument("--per-connection", type=int, default=5, help="messages per connection (default 5)")
    parser.add_argument("--from", dest="sender", default="bench@example.net")
    parser.add_argument("--to", action="append", help="a recipient; repeat for several (default user@example.org)")
    parser.add_argument("--wait-for-go", action="store_true",
                        help="print 'ready' when prepared, then wait for a line on stdin before connecting")
    parser.add_argument("message", type=Path, help="the message file (LF or CRLF line ends)")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.messages < 0 or args.per_connection < 1:
        parser.error("--sessions and --per-connection must be at least 1, --messages at least 0")
    try:
        data = wire_data(args.message.read_bytes())
    except (OSError, ValueError) as error:
        print(f"pipeliner: {args.message}: {error}", file=sys.stderr)
        return 2
    plan = Plan(args.port, args.sessions, args.messages, args.per_connection, args.sender,
                tuple(args.to or ["user@example.org"]), data, host=args.host)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    if args.wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            tally = runner.run(run(plan))
    except Unexpected as failure:
        print(f"pipeliner: {failure}", file=sys.stderr)
        return 1
    print(f"accepted={tally.accepted} connections={tally.connections} seconds={time.monotonic() - started:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
