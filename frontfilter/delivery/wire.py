"""Sending a message after DATA without aiosmtplib's second pass over it.

`aiosmtplib.SMTP.data()` runs two regex substitutions over the whole message (line ends, then
leading dots) before writing it: a fifth of the relay's CPU on 100 KB mail in the bench profile
(bench/README.md). What frontfilter forwards is already CRLF-only — DATA refuses bare CR and LF,
the rewriter writes CRLF — so dot-stuffing is one `bytes.replace`. A message that is somehow not
CRLF-clean takes aiosmtplib's own path, which normalises it, rather than reach the backend with
bare line ends.
"""

from __future__ import annotations

import aiosmtplib
from aiosmtplib import SMTPDataError, SMTPResponse, SMTPServerDisconnected, SMTPTimeoutError


def crlf_clean(message: bytes) -> bool:
    crlf = message.count(b"\r\n")
    return message.count(b"\n") == crlf and message.count(b"\r") == crlf


async def send_data(smtp: aiosmtplib.SMTP, message: bytes) -> SMTPResponse:
    """DATA, the stuffed message, the end mark; the server's final reply (raises like `smtp.data`).

    Each wait is bounded by the client's own timeout, as in `smtp.data`."""
    if smtp.protocol is None or not crlf_clean(message):
        return await smtp.data(message)
    timeout = smtp.timeout
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    start = await smtp.execute_command(b"DATA", timeout=timeout)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPServerDisconnected("Connection lost")
    try:
        protocol.write(stuffed)
        protocol.write(b".\r\n" if stuffed.endswith(b"\r\n") or not stuffed else b"\r\n.\r\n")
        response = await protocol.read_response(timeout=timeout)
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()    # as smtp.data() does: a half-read reply must not pair with the next command
        raise
    if response.code != 250:
        raise SMTPDataError(response.code, response.message)
    return response
