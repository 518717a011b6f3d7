"""Listening sockets -> `SmtpSession` protocols sharing one handler and one front door.

Binds every listener's address (IPv4 and IPv6; an IPv6 socket is v6-only so `[::]` and
`0.0.0.0` can both be listed). Sockets may also come from systemd socket activation, in the
order the listeners are configured. Each listener gets its own protocol factory, carrying its
role (TLS mode, AUTH, PROXY); everything else — handler, limits, certificate — is shared.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from frontfilter.config import Config, HostPort, ListenerConfig
from frontfilter.smtp.door import FrontDoor
from frontfilter.smtp.handler import Handler
from frontfilter.smtp.session import SmtpSession

LISTEN_BACKLOG = 512   # pending connections the kernel queues for us (capped by somaxconn)


def protocol_factory(config: Config, handler: Handler, listener: ListenerConfig,
                     door: FrontDoor) -> Callable[[], SmtpSession]:
    def make() -> SmtpSession:
        return SmtpSession(handler, listener, door, config.server)

    return make


def bind(address: HostPort) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP spelt out: accepted sockets inherit it, and asyncio turns Nagle off only on
    # sockets that say TCP (uvloop does it for all). With Nagle on, a multi-line reply such as
    # EHLO's waits for the client's delayed ACK: 40 ms per session.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_servers(config: Config, handler: Handler, door: FrontDoor,
                        bound: list[tuple[ListenerConfig, socket.socket]]) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    return [await loop.create_server(protocol_factory(config, handler, listener, door), sock=sock)
            for listener, sock in bound]
