"""MAIL, RCPT and DATA to the backend without aiosmtplib's second passes over what we send.

`aiosmtplib.SMTP.mail()` and `rcpt()` read each address again with the stdlib header parser
(`email.utils.parseaddr`, 30 µs: 3 % of the event loop in the bench profile) to put it in
angle brackets. Our envelope addresses are already addr-specs, read by our SMTP side; the plain
ones, nearly all, get their brackets directly, the rest still go through aiosmtplib's
`quote_address` (tests/delivery/test_wire.py compares both on generated addresses).

`aiosmtplib.SMTP.data()` runs two regex substitutions over the whole message (line ends, then
leading dots) before writing it: a fifth of the relay's CPU on 100 KB mail in the bench profile
(bench/README.md). What frontfilter forwards is already CRLF-only — DATA refuses bare CR and LF,
the rewriter writes CRLF — so dot-stuffing is one `bytes.replace`. A message that carries that
as its type (`model.CrlfText`) is not counted again, and one known to have no dotted line
(`model.DotFreeText`) is not searched for them; any other is, and one that is somehow not
CRLF-clean takes aiosmtplib's own path, which normalises it, rather than reach the backend with
bare line ends. A big message mapped from its spill file (`mapped.SpilledMessage`) is both.

A big message is written a slice at a time, each once the transport has sent the one before
(`_write_in_slices`): written whole, what the socket did not take at once was copied into the
transport's buffer, a second copy of a 25 MB message.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import cast

import aiosmtplib
from aiosmtplib import (SMTPDataError, SMTPRecipientRefused, SMTPResponse, SMTPSenderRefused,
                        SMTPServerDisconnected, SMTPTimeoutError)
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol

from frontfilter.model import PLAIN_ADDRESS, CrlfText, DotFreeText
from frontfilter.mapped import MappedText, MessageBytes, SpilledMessage, slices_off_the_loop

# A plain address (nearly every one) is what aiosmtplib's `quote_address` leaves unchanged;
# anything else (quoted local parts, address literals, the odd character) still goes through it.
_PLAIN = re.compile(PLAIN_ADDRESS)


def path(address: str, encoding: str = "ascii") -> bytes:
    """`<address>` for MAIL FROM and RCPT TO, as aiosmtplib's `quote_address` makes it: the
    same ValueError for an address that could smuggle a parameter onto the command line, the
    same UnicodeEncodeError where `encoding` cannot carry it (ASCII without SMTPUTF8)."""
    if _PLAIN.fullmatch(address):
        return b"<" + address.encode(encoding) + b">"
    return quote_address(address).encode(encoding)


async def send_mail(smtp: aiosmtplib.SMTP, sender: str, options: Sequence[str], encoding: str) -> SMTPResponse:
    """`smtp.mail(sender, options=..., encoding=...)` on a connection that has had its EHLO."""
    response = await smtp.execute_command(b"MAIL", b"FROM:" + path(sender, encoding),
                                          *(o.encode("ascii") for o in options), timeout=smtp.timeout)
    if response.code != 250:
        raise SMTPSenderRefused(response.code, response.message, sender)
    return response


async def send_rcpt(smtp: aiosmtplib.SMTP, recipient: str, encoding: str) -> SMTPResponse:
    """`smtp.rcpt(recipient, encoding=...)` on a connection that has had its EHLO."""
    response = await smtp.execute_command(b"RCPT", b"TO:" + path(recipient, encoding),
                                          timeout=smtp.timeout)
    if response.code not in (250, 251):
        raise SMTPRecipientRefused(response.code, response.message, recipient)
    return response


# Messages up to this size go out with their end mark in one write (one send system call).
JOIN_BELOW = 256 * 1024
# A bigger message is written a slice at a time (`_write_in_slices`).
WRITE_SLICE = 1024 * 1024
# A message not known CRLF-clean is counted on the event loop up to this size, else in a thread.
COUNT_INLINE_BELOW = 256 * 1024


def _stuffed(text: bytes) -> bytes:
    """RFC 5321 §4.5.2: a dot before every line that starts with one."""
    stuffed = text.replace(b"\r\n.", b"\r\n..") if b"\r\n." in text else text
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


async def _whole_crlf_lines(head: bytes, message: MessageBytes) -> bool:
    """Both pieces CRLF-only, the head (`content.rewrite.header_fields`: whole folded lines)
    ending with its CRLF. A message typed so is not counted again; a big one is counted off the
    event loop (three counts: 80 ms for 25 MB here)."""
    if head and not (head.endswith(b"\r\n") and crlf_clean(head)):
        return False
    if isinstance(message, (CrlfText, SpilledMessage)):
        return True
    if isinstance(message, MappedText):
        return False            # not one that DATA checked: aiosmtplib's path normalises it
    if len(message) > COUNT_INLINE_BELOW:
        return await asyncio.to_thread(crlf_clean, message)
    return crlf_clean(message)


def crlf_clean(message: bytes) -> bool:
    crlf = message.count(b"\r\n")
    return message.count(b"\n") == crlf and message.count(b"\r") == crlf


async def _write_in_slices(protocol: SMTPProtocol, data: MessageBytes, timeout: float | None) -> bool:
    """`protocol.write(data)` a WRITE_SLICE at a time, each written once the transport has
    sent the one before; False when the connection closed first (the backend may have said
    why: the caller reads its reply). A big message is then never copied whole into the
    transport's buffer (what the socket does not take at once is copied there), and one read
    through a mapping is sliced in a thread, its pages dropped behind (`slices_off_the_loop`).

    aiosmtplib's flow control (`drain`) is private to it, so the transport's public buffer
    size is watched: a wait of 1 ms, doubling to 50 ms, bounded by the client's `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async for piece in slices_off_the_loop(data, WRITE_SLICE):
        if not protocol.is_connected:
            return False
        # The transport itself (what protocol.write does, once open): it takes a view.
        cast(asyncio.WriteTransport, protocol.transport).write(piece)
        pause = 0.001
        while protocol.is_connected \
                and cast(asyncio.WriteTransport, protocol.transport).get_write_buffer_size() > WRITE_SLICE:
            if deadline is not None and loop.time() > deadline:
                raise SMTPTimeoutError("Timed out writing the message")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
    return protocol.is_connected


async def send_data(smtp: aiosmtplib.SMTP, message: MessageBytes, head: bytes = b"") -> SMTPResponse:
    """DATA, `head` and the message (each stuffed), the end mark; the server's final reply
    (raises like `smtp.data`). `head` is header fields to go on top (`decision.Decision.head`):
    sent first, never joined to a big message in memory.

    Each wait is bounded by the client's own timeout, as in `smtp.data`."""
    if smtp.protocol is None or not await _whole_crlf_lines(head, message):
        return await smtp.data(head + message)     # aiosmtplib normalises the line ends
    timeout = smtp.timeout
    # Each piece starts a line (the head ends with CRLF), so each is stuffed on its own.
    stuffed = message if isinstance(message, (DotFreeText, SpilledMessage)) else \
        _stuffed(message if isinstance(message, bytes) else bytes(message))
    stuffed_head = _stuffed(head) if head else b""
    start = await smtp.execute_command(b"DATA", timeout=timeout)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPServerDisconnected("Connection lost")
    last = stuffed or stuffed_head
    end = b".\r\n" if last.endswith(b"\r\n") or not last else b"\r\n.\r\n"
    reply: asyncio.Future[SMTPResponse] | None = None
    try:
        if len(stuffed) <= JOIN_BELOW:      # one send, not two or three: the copy costs less
            protocol.write(stuffed_head + stuffed + end)
        else:
            if stuffed_head:
                protocol.write(stuffed_head)
            # The reply is awaited from the first slice on: aiosmtplib drops what a server says
            # while no reply is awaited, and a backend that refuses the message before its end
            # (552: too big) and closes must be heard, not taken for a lost connection.
            reply = asyncio.ensure_future(protocol.read_response(timeout=timeout))
            if await _write_in_slices(protocol, stuffed, timeout):
                protocol.write(end)
        response = await (reply if reply is not None else protocol.read_response(timeout=timeout))
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()    # as smtp.data() does: a half-read reply must not pair with the next command
        raise
    finally:
        if reply is not None:
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()       # seen: its failure, if any, is the one raised above
    if response.code != 250:
        raise SMTPDataError(response.code, response.message)
    return response
