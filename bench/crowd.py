"""A crowd for the bench: thousands of SMTP sessions held open from many loopback addresses.

    python bench/crowd.py --port P --sessions 5000 [--per-address 10] [--slow 0.05]

What a relay on the internet holds most of the time is not mail in flight but sessions that
wait: clients that said EHLO and think, and clients on slow links. This opens `--sessions`
sessions to 127.0.0.1:P, each from its own source address in 127.1.0.1 and up (the client
socket is bound to 127.x.y.z, all of 127.0.0.0/8 being loopback), `--per-address` sessions per
address so that a relay's per-address limit (`limits.max_connections_per_ip`) is not what is
measured. Each session reads the greeting and says EHLO; then

- most sit idle, as a client between commands does, and
- a `--slow` share sends MAIL, RCPT and DATA and then the message's lines at SLOW_RATE bytes
  a second, never the terminator: a slow link (twice Postfix's `smtpd_min_data_rate` of 500 B/s,
  the relay's default minimum) that is still sending when the bench ends.

Sessions are opened OPEN_CONCURRENCY at a time; those not greeted and past EHLO within
OPEN_DEADLINE, or when none has come up for OPEN_STALL, are given up (a relay that cannot take
the crowd: Postfix's 100 `smtpd` processes by default, the rest of the crowd waiting in its
listen queue).

The bench (`bench/run.py`) reads one line on stdout when the crowd is up,
`ready opened=N failed=F`, then writes a line on stdin when it should go; the crowd then
closes every session and prints `held=H dropped=D slow_bytes=B`: sessions still open, sessions
the relay closed meanwhile (an idle timeout, a 421), bytes the slow ones sent. The crowd
itself raises its RLIMIT_NOFILE to the hard limit: one socket per session.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import ipaddress
import resource
import sys
from dataclasses import dataclass

SECONDS = 1.0
OPEN_CONCURRENCY = 100            # sessions being opened at once: the relay's listen queue is ~100
OPEN_DEADLINE = 60 * SECONDS      # for the whole crowd to be up
OPEN_STALL = 5 * SECONDS          # no session came up for this long: the relay takes no more
REPLY_TIMEOUT = 30 * SECONDS      # for one reply while opening
SLOW_LINE = b"y" * 248 + b"\r\n"  # 250 octets, never starting with a dot
SLOW_RATE = 1000                  # bytes a second per slow session
FIRST_ADDRESS = ipaddress.IPv4Address("127.1.0.1")
EHLO_NAME = "crowd.localdomain"


class State(enum.Enum):
    OPENING = "opening"
    HELD = "held"            # greeted, past EHLO (and DATA for a slow one), still open
    FAILED = "failed"        # refused, not greeted, or not up within OPEN_DEADLINE
    DROPPED = "dropped"      # closed by the relay while held


@dataclass
class Crowd:
    states: list[State]
    slow_bytes: int = 0

    def count(self, state: State) -> int:
        return sum(1 for got in self.states if got is state)


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One whole reply (its last line has a space after the code); b"" if the relay closed."""
    lines = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        if not line:
            return b""
        lines += line
        if len(line) < 4 or line[3:4] != b"-":
            return lines


async def session(number: int, args: argparse.Namespace, crowd: Crowd, gate: asyncio.Semaphore,
                  up: asyncio.Event) -> None:
    address = str(FIRST_ADDRESS + number // args.per_address)
    slow = bool(args.slow) and number % round(1 / args.slow) == 0
    writer = None
    try:
        async with gate:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", args.port, local_addr=(address, 0)), REPLY_TIMEOUT)
            if not (await reply(reader)).startswith(b"220"):
                raise ConnectionError("no greeting")
            writer.write(f"EHLO {EHLO_NAME}\r\n".encode())
            if not (await reply(reader)).startswith(b"250"):
                raise ConnectionError("EHLO refused")
            if slow:
                for command, code in ((b"MAIL FROM:<crowd@example.net>", b"250"),
                                      (b"RCPT TO:<user@example.org>", b"25"), (b"DATA", b"354")):
                    writer.write(command + b"\r\n")
                    if not (await reply(reader)).startswith(code):
                        raise ConnectionError(f"{command.decode()} refused")
                writer.write(b"Subject: slow\r\n\r\n")
        crowd.states[number] = State.HELD
        await up.wait()                      # nobody drips until the whole crowd is up
        dripping = asyncio.ensure_future(drip(writer, crowd)) if slow else None
        try:
            await reader.read(65536)         # anything from the relay now (a 421) ends the session
        finally:
            if dripping:
                dripping.cancel()
        crowd.states[number] = State.DROPPED
    except (OSError, asyncio.TimeoutError, ConnectionError):
        crowd.states[number] = State.DROPPED if crowd.states[number] is State.HELD else State.FAILED
    finally:
        if writer is not None:
            writer.transport.abort()


async def drip(writer: asyncio.StreamWriter, crowd: Crowd) -> None:
    interval = len(SLOW_LINE) / SLOW_RATE
    while True:
        writer.write(SLOW_LINE)
        crowd.slow_bytes += len(SLOW_LINE)
        await asyncio.sleep(interval)


async def gather(args: argparse.Namespace) -> None:
    crowd = Crowd([State.OPENING] * args.sessions)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    up = asyncio.Event()
    tasks = [asyncio.ensure_future(session(number, args, crowd, gate, up)) for number in range(args.sessions)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_DEADLINE
    last_up, progress_at = 0, loop.time()
    while crowd.count(State.OPENING) and loop.time() < deadline and loop.time() - progress_at < OPEN_STALL:
        await asyncio.sleep(0.05)
        if (up_now := args.sessions - crowd.count(State.OPENING)) != last_up:
            last_up, progress_at = up_now, loop.time()
    for number, task in enumerate(tasks):        # not up in time: given up
        if crowd.states[number] is State.OPENING:
            task.cancel()
            crowd.states[number] = State.FAILED
    up.set()
    print(f"ready opened={args.sessions - crowd.count(State.FAILED)} failed={crowd.count(State.FAILED)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)       # the bench says when to stop
    held, dropped = crowd.count(State.HELD), crowd.count(State.DROPPED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"held={held} dropped={dropped} slow_bytes={crowd.slow_bytes}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--per-address", type=int, default=10)
    parser.add_argument("--slow", type=float, default=0.05, help="share of sessions sending DATA slowly")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.sessions + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(gather(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
