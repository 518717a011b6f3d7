"""Opening a session in process: an exception while admitting a client never leaves it hanging."""

from __future__ import annotations

import asyncio
from typing import Any

from frontfilter.config import HostPort, ListenerConfig, ServerConfig, TlsMode
from frontfilter.smtp.door import FrontDoor
from frontfilter.smtp.limits import ConnectionLimits
from frontfilter.smtp.session import SmtpSession

READ_TIMEOUT = 10.0


class BrokenHandler:
    """A handler whose admission step fails, as a rule engine bug would."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def admit(self, session: Any) -> None:
        session.state = object()
        raise RuntimeError("rule engine exploded")

    async def session_closed(self, session: Any) -> None:
        self.closed.set()

    def forget(self, session: Any) -> None:
        pass

    def queue_id_of(self, session: Any) -> None:
        return None


async def _scenario() -> tuple[bytes, bytes, int]:
    handler = BrokenHandler()
    door = FrontDoor(limits=ConnectionLimits(max_connections=10, max_per_ip=10, rate_per_ip=0, rate_window=60))
    listener = ListenerConfig(address=HostPort("127.0.0.1", 0), name="test", tls=TlsMode.NONE)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SmtpSession(handler, listener, door, ServerConfig(hostname="mx.test")),
        "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        first = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        rest = await asyncio.wait_for(reader.read(), READ_TIMEOUT)     # then closed
        await asyncio.wait_for(handler.closed.wait(), READ_TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    return first, rest, door.limits.total


def test_exception_while_admitting_answers_421_closes_and_frees_the_slot() -> None:
    first, rest, open_slots = asyncio.run(_scenario())
    assert first == b"421 4.3.0 Service not available, try again later\r\n"
    assert rest == b""
    assert open_slots == 0
