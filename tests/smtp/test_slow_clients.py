"""Slow clients cannot hold sessions: a command or a message sent under `limits.min_data_rate`
(from its first byte, once the grace has passed) ends the session with `421 4.4.2`, logged;
clients at a normal pace beside them are served."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness import RecordingSink, Relay, send, write_config

SLOW_CLIENTS = 50
RATE = 200                  # bytes per second: the test's limits.min_data_rate
GRACE = "1s"
BOUND = 60.0                # seconds: every slow client must have been cut by then


def relay_config(tmp_path: Path, sink: RecordingSink) -> Path:
    return write_config(tmp_path, [sink.port],
                        limits={"min_data_rate": RATE, "min_data_rate_grace": GRACE,
                                "max_connections_per_ip": SLOW_CLIENTS + 10, "connection_rate_per_ip": 0})


async def dribble(port: int, before: bytes, slowly: bytes) -> str:
    """Send `before` at once, then `slowly` a byte a second; what the relay said last."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()                              # the greeting
        writer.write(before)
        await writer.drain()
        for byte in slowly:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                break
            try:   # a reply (or the close) ends the wait for the next second
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except TimeoutError:
                continue
            if line.startswith(b"421"):
                return line.decode().strip()
        return "never cut"
    finally:
        writer.close()


async def storm(port: int, before: bytes, slowly: bytes) -> list[str]:
    return await asyncio.wait_for(asyncio.gather(*(dribble(port, before, slowly) for _ in range(SLOW_CLIENTS))),
                                  BOUND)


ENVELOPE = (b"EHLO slow.test\r\nMAIL FROM:<slow@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
MESSAGE = b"Subject: slow\r\n\r\n" + b"x" * 200 + b"\r\n.\r\n"


def test_clients_sending_a_message_a_byte_a_second_are_cut_and_the_others_served(tmp_path: Path) -> None:
    with RecordingSink() as sink, Relay(relay_config(tmp_path, sink)) as relay:
        async def scene() -> tuple[list[str], int]:
            slow = asyncio.ensure_future(storm(relay.port, ENVELOPE, MESSAGE))
            await asyncio.sleep(0)
            # A client at an ordinary pace, while fifty dribble their messages.
            answer = await asyncio.to_thread(send, relay.port, b"Subject: normal\r\n\r\nhello\r\n")
            return await slow, answer.code
        endings, code = asyncio.run(scene())
        assert code == 250
        assert endings == ["421 4.4.2 Minimum data rate not met, closing connection"] * SLOW_CLIENTS
        closed = [e for e in relay.events("session_closed") if e["reason"] == "min_data_rate"]
        assert len(closed) == SLOW_CLIENTS and {e["stage"] for e in closed} == {"data"}
    assert [m.data.split(b"Subject: ")[1][:6] for m in sink.messages] == [b"normal"]


def test_a_command_dribbled_a_byte_a_second_is_cut_too(tmp_path: Path) -> None:
    with RecordingSink() as sink, Relay(relay_config(tmp_path, sink)) as relay:
        ending = asyncio.run(asyncio.wait_for(dribble(relay.port, b"", b"EHLO " + b"a" * 60 + b".test\r\n"), BOUND))
        assert ending == "421 4.4.2 Minimum data rate not met, closing connection"
        assert relay.wait_event("session_closed", reason="min_data_rate")["reply"].startswith("421 4.4.2")


def test_time_before_the_first_byte_is_not_counted(tmp_path: Path) -> None:
    """A client that thinks (or waits for us) between commands is not slow: only how fast it
    sends once it sends."""
    with RecordingSink() as sink, Relay(relay_config(tmp_path, sink)) as relay:
        async def pauses() -> list[bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            replies = [await reader.readline()]
            for command in (b"EHLO thinker.test\r\n", b"NOOP\r\n"):
                await asyncio.sleep(2.0)           # longer than the grace, before the command
                writer.write(command)
                while True:
                    line = await reader.readline()
                    replies.append(line)
                    if line[3:4] != b"-":
                        break
            writer.close()
            return replies
        replies = asyncio.run(asyncio.wait_for(pauses(), BOUND))
    assert replies[-1].startswith(b"250 ") and not any(r.startswith(b"421") for r in replies)
