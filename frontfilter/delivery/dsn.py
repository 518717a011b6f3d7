"""Delivery status notifications (RFC 3464): the bounce a sender gets for recipients given up on.

Pure: envelope and recipient states in, message bytes out (no I/O, no clock of its own).

The DSN is a `multipart/report; report-type=delivery-status` (RFC 6522) with three parts: a
short human explanation, the `message/delivery-status` fields (one block per failed recipient:
Final-Recipient, Action: failed, Status, Diagnostic-Code), and the original message's header
section as `text/rfc822-headers` — headers only, so a bounce never carries the content back out
(and stays small). Internationalised addresses use RFC 6533's `message/global-delivery-status`
and `utf-8` address type, and the DSN is then sent with SMTPUTF8.

What is never in a DSN (it goes to an outside sender): the backend's host name or its free text. The
Diagnostic-Code carries the backend's reply code and enhanced status, with our generic words.
It is sent from the null sender (`MAIL FROM:<>`, RFC 5321 §4.5.5) so it can never bounce back,
and never for a message that itself had the null sender. `Auto-Submitted: auto-replied`
(RFC 3834) keeps autoresponders quiet.

Bounds: at most MAX_RETURNED_HEADER_BYTES of the original header section are returned to a
sender in our own domains (policy.own_domains). A sender outside them may be forged — the bounce then goes to an
innocent third party (backscatter), with whatever the attacker wrote in the headers — so it
gets only the fields that identify the message (IDENTIFYING_FIELDS), each on one line of at
most MAX_FIELD_TO_OUTSIDE octets.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from email.utils import format_datetime, localtime
from datetime import datetime, timezone

from frontfilter.delivery.spool import Envelope, RecipientState
from frontfilter.mapped import MessageBytes

# The original header section, returned for the sender to recognise the message; a crafted
# message with megabytes of headers does not get them mirrored back.
MAX_RETURNED_HEADER_BYTES = 64 * 1024
MAX_LINE = 998          # RFC 5322 §2.1.1
# What a bounce to an outside sender returns: enough to recognise the message, no more.
IDENTIFYING_FIELDS = (b"date", b"from", b"to", b"subject", b"message-id")
MAX_FIELD_TO_OUTSIDE = 256

REFUSED_TEXT = "refused by the next hop"
EXPIRED_TEXT = "could not be delivered in time"
EXPIRED_STATUS = "4.4.7"        # RFC 3463: delivery time expired


def _date(timestamp: float) -> str:
    return format_datetime(localtime(datetime.fromtimestamp(timestamp, timezone.utc)))


def _address_type(address: str) -> str:
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def _status(recipient: RecipientState, expired: bool) -> str:
    if expired:
        return EXPIRED_STATUS
    if recipient.enhanced and recipient.enhanced[0] in "45":
        return recipient.enhanced
    return "5.0.0" if recipient.code >= 500 or recipient.code == 0 else "4.0.0"


def _diagnostic(recipient: RecipientState, expired: bool) -> str:
    code = recipient.code or (451 if expired else 554)
    enhanced = recipient.enhanced or _status(recipient, expired)
    return f"smtp; {code} {enhanced} {EXPIRED_TEXT if expired else REFUSED_TEXT}"


def original_headers(message: MessageBytes, added: bytes = b"") -> bytes:
    """The header section of `added` + `message` (the fields frontfilter put on top, kept
    apart: see `decision.Decision.head`), bounded, ending with CRLF. Only the start of the
    message is read: the header section cannot reach further."""
    start = added + message[:MAX_RETURNED_HEADER_BYTES + 4]
    end = start.find(b"\r\n\r\n")
    header = start if end < 0 else start[:end + 2]
    if len(header) > MAX_RETURNED_HEADER_BYTES:
        cut = header.rfind(b"\r\n", 0, MAX_RETURNED_HEADER_BYTES)
        header = header[:cut + 2] if cut > 0 else b""
    return header


def identifying_headers(message: MessageBytes, added: bytes = b"") -> bytes:
    """The IDENTIFYING_FIELDS of the original header section, in their order, each unfolded
    onto one line and cut to MAX_FIELD_TO_OUTSIDE octets; at most one of each."""
    kept: dict[bytes, bytes] = {}
    for field in _unfolded_fields(original_headers(message, added)):
        name = field.split(b":", 1)[0].strip().lower()
        if name in IDENTIFYING_FIELDS and name not in kept:
            kept[name] = field[:MAX_FIELD_TO_OUTSIDE]
    return b"".join(field + b"\r\n" for field in kept.values())


def _unfolded_fields(section: bytes) -> list[bytes]:
    fields: list[bytes] = []
    for line in section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        elif line:
            fields.append(line)
    return fields


def build_dsn(*, dsn_id: str, hostname: str, envelope: Envelope, message: MessageBytes,
              failed: Sequence[RecipientState], expired: Collection[str],
              now: float, added: bytes = b"", outside: bool = False) -> tuple[bytes, bool]:
    """The DSN message (CRLF line ends) and whether it needs SMTPUTF8 to be sent.

    `expired` names the failed recipients that were given up on for time (not refused);
    `outside`: the sender is not in our own domains, so only identifying fields go back."""
    if not failed:
        raise ValueError("a DSN needs at least one failed recipient")
    utf8 = not envelope.sender.isascii() or any(not r.address.isascii() for r in failed)
    boundary = f"{dsn_id}/{hostname}/{secrets.token_hex(6)}"
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    timed_out = [r.address in expired for r in failed]
    if all(timed_out):
        reason = "it could not be delivered within the time this relay keeps mail"
    elif any(timed_out):
        reason = "it was refused, or could not be delivered in time"
    else:
        reason = "the next hop refused it permanently"

    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{envelope.sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {_date(now)}",
        f"Message-ID: <{dsn_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {'8bit' if utf8 else '7bit'}",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        f"be delivered to one or more recipients: {reason}.",
        "",
        *[f"<{r.address}>: {_diagnostic(r, r.address in expired).removeprefix('smtp; ')}"
          for r in failed],
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        f"Content-Type: {status_type}",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Frontfilter-Queue-ID: {envelope.id}",
        f"Arrival-Date: {_date(envelope.arrived)}",
    ]
    for recipient in failed:
        lines += [
            "",
            f"Final-Recipient: {_address_type(recipient.address)}",
            "Action: failed",
            f"Status: {_status(recipient, recipient.address in expired)}",
            f"Diagnostic-Code: {_diagnostic(recipient, recipient.address in expired)}",
            f"Last-Attempt-Date: {_date(recipient.at or now)}",
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered message headers",
        f"Content-Type: {'message/global-headers' if utf8 else 'text/rfc822-headers'}",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = identifying_headers(message, added) if outside else original_headers(message, added)
    body = head + headers + tail
    return b"\r\n".join(line[:MAX_LINE] for line in body.split(b"\r\n")), utf8
