"""MAIL, RCPT and DATA to the backend: the command lines, and a message's bytes as few times as
they can be passed over.

Our envelope addresses are already addr-specs, read by our SMTP side; the plain ones, nearly
all, get their angle brackets directly, the rest go through aiosmtplib's `quote_address` (a
stdlib header parse: 30 µs; tests/delivery/test_wire.py compares both on generated addresses).

What frontfilter forwards is already CRLF-only — DATA refuses bare CR and LF, the rewriter
writes CRLF — so dot-stuffing is one `bytes.replace` (a regex pass for line ends and one for
leading dots cost a fifth of the relay's CPU on 100 KB mail, bench/README.md). A message that
carries that as its type (`model.CrlfText`) is not counted again, and one known to have no
dotted line (`model.DotFreeText`) is not searched for them; any other is, and one that is
somehow not CRLF-clean has its line ends made CRLF first rather than reach the backend with
bare line ends. A big message mapped from its spill file (`mapped.SpilledMessage`) is both.

A big message is written a slice at a time, each once the transport has room
(`SmtpClient.drain`): written whole, what the socket did not take at once was copied into the
transport's buffer, a second copy of a 25 MB message.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from aiosmtplib.email import quote_address

from frontfilter.delivery.client import BadReply, Reply, SmtpClient, SmtpError
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


def mail_command(sender: str, options: Sequence[str], encoding: str) -> bytes:
    """MAIL FROM with `options` (ESMTP parameters already chosen for this backend)."""
    return b" ".join([b"MAIL FROM:" + path(sender, encoding), *(o.encode("ascii") for o in options)])


def rcpt_command(recipient: str, encoding: str) -> bytes:
    return b"RCPT TO:" + path(recipient, encoding)


# Messages up to this size go out with their end mark in one write (one send system call).
JOIN_BELOW = 256 * 1024
# A bigger message is written a slice at a time, each once the transport has room.
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
        return False            # not one that DATA checked: its line ends are made CRLF
    if len(message) > COUNT_INLINE_BELOW:
        return await asyncio.to_thread(crlf_clean, message)
    return crlf_clean(message)


def crlf_clean(message: bytes) -> bool:
    crlf = message.count(b"\r\n")
    return message.count(b"\n") == crlf and message.count(b"\r") == crlf


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")


def _normalized(head: bytes, message: MessageBytes) -> bytes:
    """`head` + `message` as sent when they are not CRLF-clean: every line end CRLF, a CRLF
    at the end, dotted lines stuffed."""
    whole = _LINE_ENDS.sub(b"\r\n", head + bytes(message))
    return _stuffed(whole if whole.endswith(b"\r\n") else whole + b"\r\n")


async def send_data(smtp: SmtpClient, message: MessageBytes, head: bytes = b"") -> Reply:
    """DATA, then `send_message`: the backend's final reply, or its refusal of DATA."""
    start = await smtp.command(b"DATA")
    if start.code == 354:
        return await send_message(smtp, message, head)
    return refusal_of_data(smtp, start)


def refusal_of_data(smtp: SmtpClient, start: Reply) -> Reply:
    """DATA's reply when it was not 354. Anything but a refusal there (a 250 to DATA) would
    count a message as delivered that was never sent: the connection is not SMTP as we know it."""
    if start.code >= 400:
        return start
    smtp.close()
    raise BadReply(f"DATA answered {start.code}, not 354")


async def send_message(smtp: SmtpClient, message: MessageBytes, head: bytes = b"") -> Reply:
    """After DATA's 354: `head` and the message (each stuffed), the end mark; the backend's
    reply. `head` is header fields to go on top (`decision.Decision.head`): sent first, never
    joined to a big message in memory. Raises SmtpError when the connection broke with no
    reply; a reply that came before the end (552: too big) is the answer."""
    if await _whole_crlf_lines(head, message):
        # Each piece starts a line (the head ends with CRLF), so each is stuffed on its own.
        stuffed = message if isinstance(message, (DotFreeText, SpilledMessage)) else \
            _stuffed(message if isinstance(message, bytes) else bytes(message))
        stuffed_head = _stuffed(head) if head else b""
    else:       # joined, made CRLF and stuffed in one go; off the loop when big (a mapping's pages)
        stuffed, stuffed_head = (await asyncio.to_thread(_normalized, head, message)
                                 if len(head) + len(message) > COUNT_INLINE_BELOW else _normalized(head, message)), b""
    last = stuffed or stuffed_head
    end = b".\r\n" if last.endswith(b"\r\n") or not last else b"\r\n.\r\n"
    smtp.expect_reply()
    try:
        if len(stuffed) <= JOIN_BELOW:      # one send, not two or three: the copy costs less
            smtp.write(stuffed_head + stuffed + end)
        else:
            if stuffed_head:
                smtp.write(stuffed_head)
            async for piece in slices_off_the_loop(stuffed, WRITE_SLICE):
                smtp.write(piece)
                await smtp.drain()
            if not smtp.has_reply:      # refused before the end (552): no end mark, it would be answered too
                smtp.write(end)
    except SmtpError:
        pass            # the backend may have said why before it closed: its reply is read
    answered_early = smtp.has_reply      # before the end mark was written, or it broke off
    reply = await smtp.read()
    if answered_early:
        smtp.close()    # it may answer the end mark too: never to be paired with a next command
    return reply
