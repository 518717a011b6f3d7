"""XFORWARD and XCLIENT: the backend learns who the real client was (Postfix's XFORWARD_README,
XCLIENT_README).

Behind frontfilter, the backend sees the DMZ host as every message's client: its logs, its
milters and its spam filter lose the client's address and HELO. A backend that trusts us says
so in its EHLO reply; then, with `backend.forward_client` (default true), each transaction is
preceded by what it offers:

- XFORWARD (Postfix: `smtpd_authorized_xforward_hosts`), preferred: `XFORWARD ADDR=... PORT=...
  NAME=[UNAVAILABLE] HELO=... PROTO=... SOURCE=REMOTE`. It changes the backend's logs and what
  its filters see, not its access decisions: made for a content filter in front.
- XCLIENT (`smtpd_authorized_xclient_hosts`), when XFORWARD is not offered: the same facts and
  the AUTH login (`LOGIN=`), and the backend then decides as if the real client had connected
  (its own access rules apply to it: that is what an administrator turns it on for). It
  answers with a new greeting, so the relay says EHLO again before MAIL. Its attributes last
  for the connection (a connection carries several messages): every attribute the backend
  lists is sent for every message, `[UNAVAILABLE]` where not known, so nothing of one message's
  client is left over for the next.

Only the attributes the backend lists are sent; a backend that offers neither is sent nothing.
Values are xtext (RFC 1891 §5): `+`, `=`, controls and non-ASCII as `+XX`; an IPv6 address is
`IPV6:`-prefixed, as both READMEs ask. Each command stays under LINE_MAX (Postfix's limit is
512 octets a line); what does not fit goes in the next. NAME is `[UNAVAILABLE]`: the relay does
not look up clients' reverse DNS names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from frontfilter.delivery.client import Refused, SmtpClient, expect

LINE_MAX = 500
UNAVAILABLE = "[UNAVAILABLE]"
XCLIENT_OK = (220, 250)        # 220: the new greeting (Postfix 2.x said 250)


@dataclass(frozen=True)
class ClientFacts:
    """What the relay knew about the client of a message (the spool's envelope keeps it)."""

    address: str                  # an IP address (the real client's, after PROXY)
    port: int | None = None
    helo: str | None = None
    protocol: str = "ESMTP"       # SMTP (HELO), ESMTP (EHLO)
    login: str | None = None      # the AUTH login (XCLIENT only: XFORWARD has no attribute for it)

    @classmethod
    def from_peer(cls, peer: str, helo: str | None, login: str | None = None) -> ClientFacts | None:
        """From "ip:port" or "[v6]:port" as the envelope and the logs write it."""
        host, _, port = peer.rpartition(":")
        if not host:
            return None
        return cls(host.strip("[]"), int(port) if port.isdigit() else None, helo or None, login=login or None)

    @property
    def wire_address(self) -> str:
        return f"IPV6:{self.address}" if ":" in self.address else self.address


def xtext(value: str) -> str:
    # surrogateescape: a HELO name or login that was not UTF-8 goes out as the bytes the client
    # sent (encoded strictly, it made the message bounce as "non-ASCII sender").
    return "".join(c if "!" <= c <= "~" and c not in "+=" else
                   "".join(f"+{b:02X}" for b in c.encode("utf-8", "surrogateescape")) for c in value)


def commands(client: ClientFacts, offered: Iterable[str]) -> list[str]:
    """The XFORWARD lines for `client`, with only the attributes the backend `offered`."""
    return _lines("XFORWARD", [
        ("ADDR", client.wire_address), ("PORT", str(client.port) if client.port else None),
        ("NAME", UNAVAILABLE), ("HELO", client.helo), ("PROTO", client.protocol), ("SOURCE", "REMOTE")], offered)


def xclient_commands(client: ClientFacts, offered: Iterable[str]) -> list[str]:
    """The XCLIENT lines for `client`: every attribute the backend `offered` that we know of,
    `[UNAVAILABLE]` for the rest (they outlive the message on this connection)."""
    return _lines("XCLIENT", [
        ("ADDR", client.wire_address), ("PORT", str(client.port) if client.port else UNAVAILABLE),
        ("NAME", UNAVAILABLE), ("HELO", client.helo or UNAVAILABLE), ("PROTO", client.protocol),
        ("LOGIN", client.login or UNAVAILABLE)], offered)


def _clip(encoded: str, most: int = 255) -> str:
    """At most `most` characters of xtext, never ending inside a `+XX` escape (Postfix
    refuses the line: 501)."""
    cut = encoded[:most]
    plus = cut.rfind("+", len(cut) - 2)
    return cut[:plus] if plus >= 0 and len(encoded) > most else cut


def _lines(verb: str, attributes: list[tuple[str, str | None]], offered: Iterable[str]) -> list[str]:
    wanted = {name.upper() for name in offered}
    lines: list[str] = []
    line = verb
    for name, value in attributes:
        if value is None or name not in wanted:
            continue
        item = f" {name}={_clip(xtext(value))}"
        if len(line) + len(item) > LINE_MAX and line != verb:
            lines.append(line)
            line = verb
        line += item
    if line != verb:
        lines.append(line)
    return lines


def offered(smtp: SmtpClient, extension: str = "xforward") -> Sequence[str]:
    """The attributes the backend lists after XFORWARD (or XCLIENT) in its EHLO reply ([] if
    it does not offer it)."""
    if not smtp.supports(extension):
        return []
    return smtp.extensions.get(extension, "").split()


def pipelined(smtp: SmtpClient, client: ClientFacts | None) -> list[bytes]:
    """The XFORWARD lines for a backend that offers it, to go out in one write with MAIL
    (Postfix's client pipelines them so too); [] for one that does not (`send` sees to
    XCLIENT, which cannot be pipelined: the backend greets anew after it)."""
    if client is None:
        return []
    attributes = offered(smtp)
    return [line.encode("ascii") for line in commands(client, attributes)] if attributes else []


async def send(smtp: SmtpClient, client: ClientFacts | None, timeout: float) -> bool:
    """Before MAIL: tell the backend who the client was, if it asks to be told. True when that
    was XCLIENT: the connection now speaks as that client for good (Postfix then judges even
    a next XCLIENT by the client's address, which it does not authorise), so it must not carry
    another message or a recipient probe. Raises like any command (Refused for an error
    reply, SmtpError for a lost connection): the transaction is then not begun."""
    if client is None:
        return False
    xforward = offered(smtp)
    if xforward:
        for line in commands(client, xforward):
            reply = await smtp.command(line.encode("ascii"), timeout)
            if reply.code >= 400:
                raise Refused(reply)
        return False
    lines = xclient_commands(client, offered(smtp, "xclient"))
    for line in lines:
        expect(await smtp.command(line.encode("ascii"), timeout), *XCLIENT_OK)
    if lines:
        # The backend started over as if the client had just connected: greet it again (the
        # name is the relay's own; the client's HELO went in the XCLIENT line).
        expect(await smtp.ehlo(smtp.helo_name), 250)
    return bool(lines)
