"""XFORWARD: the backend learns who the real client was (Postfix's XFORWARD_README).

Behind frontfilter, the backend sees the DMZ host as every message's client: its logs, its
milters and its spam filter lose the client's address and HELO. A backend that trusts us
(Postfix: `smtpd_authorized_xforward_hosts`) advertises XFORWARD in its EHLO reply; then, with
`backend.forward_client` (default true), each transaction is preceded by
`XFORWARD ADDR=... PORT=... NAME=[UNAVAILABLE] HELO=... PROTO=... SOURCE=REMOTE`, sending only
the attributes the backend lists. A backend that does not advertise it is never sent it.

Values are xtext (RFC 1891 §5): `+`, `=`, controls and non-ASCII as `+XX`. Each command stays
under XFORWARD_LINE_MAX (Postfix's limit is 512 octets a line); what does not fit goes in the
next. NAME is `[UNAVAILABLE]`: the relay does not look up clients' reverse DNS names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiosmtplib

XFORWARD_LINE_MAX = 500
UNAVAILABLE = "[UNAVAILABLE]"


@dataclass(frozen=True)
class ClientFacts:
    """What the relay knew about the client of a message (the spool's envelope keeps it)."""

    address: str                  # an IP address (the real client's, after PROXY)
    port: int | None = None
    helo: str | None = None
    protocol: str = "ESMTP"       # SMTP (HELO), ESMTP (EHLO)

    @classmethod
    def from_peer(cls, peer: str, helo: str | None) -> ClientFacts | None:
        """From "ip:port" or "[v6]:port" as the envelope and the logs write it."""
        host, _, port = peer.rpartition(":")
        if not host:
            return None
        return cls(host.strip("[]"), int(port) if port.isdigit() else None, helo or None)


def xtext(value: str) -> str:
    return "".join(c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
                   for c in value)


def commands(client: ClientFacts, offered: Iterable[str]) -> list[str]:
    """The XFORWARD lines for `client`, with only the attributes the backend `offered`."""
    wanted = {name.upper() for name in offered}
    attributes = [("ADDR", client.address), ("PORT", str(client.port) if client.port else None),
                  ("NAME", UNAVAILABLE), ("HELO", client.helo), ("PROTO", client.protocol),
                  ("SOURCE", "REMOTE")]
    lines: list[str] = []
    line = "XFORWARD"
    for name, value in attributes:
        if value is None or name not in wanted:
            continue
        item = f" {name}={xtext(value)[:255]}"
        if len(line) + len(item) > XFORWARD_LINE_MAX and line != "XFORWARD":
            lines.append(line)
            line = "XFORWARD"
        line += item
    if line != "XFORWARD":
        lines.append(line)
    return lines


def offered(smtp: aiosmtplib.SMTP) -> Sequence[str]:
    """The attributes the backend lists after XFORWARD in its EHLO reply ([] if it does not)."""
    if not smtp.supports_extension("xforward"):
        return []
    return smtp.esmtp_extensions.get("xforward", "").split()


async def send(smtp: aiosmtplib.SMTP, client: ClientFacts | None, timeout: float) -> None:
    """Before MAIL: tell the backend who the client was, if it asks to be told. Raises like
    any command (an error reply, a lost connection): the transaction is then not begun."""
    if client is None:
        return
    for line in commands(client, offered(smtp)):
        response = await smtp.execute_command(line.encode("ascii"), timeout=timeout)
        if response.code >= 400:
            raise aiosmtplib.SMTPResponseException(response.code, response.message)
