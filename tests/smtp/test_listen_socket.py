"""The listening sockets frontfilter binds: what every accepted connection inherits from them."""

from __future__ import annotations

import asyncio
import socket

from frontfilter.config import HostPort
from frontfilter.smtp.server import bind

READ_TIMEOUT = 10.0


async def _nodelay_of_accepted() -> int:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    listening = bind(HostPort("127.0.0.1", 0))
    server = await loop.create_server(Probe, sock=listening)
    try:
        _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, READ_TIMEOUT)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_accepted_connections_send_small_replies_at_once_on_the_plain_asyncio_loop() -> None:
    # uvloop is an optional extra. Without it, Nagle's algorithm held the second line of every
    # multi-line reply (EHLO's) until the client's delayed ACK: 40 ms per session.
    assert asyncio.run(_nodelay_of_accepted()) != 0
