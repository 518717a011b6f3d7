"""Authentication-Results (RFC 8601): the field the relay adds, and forged ones it removes.

The backend trusts an `Authentication-Results` field that names the relay's authserv-id
(`server.authserv_id`, default `server.hostname`): it says what the relay found (SPF, whether
the client authenticated, the DNS lists). A field from outside that claims that authserv-id
would be trusted the same way, so every such field in the message as received is removed
before the message goes on (RFC 8601 §5); fields of other authserv-ids are left alone (they
are another host's claims, and nobody downstream trusts them because of us).

Pure: bytes in, bytes out. The header block is read as the backend reads it: up to the first
empty line, fields begun by a line that does not start with white space.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from frontfilter.mapped import MessageBytes, as_bytes

FIELD = b"authentication-results"
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")
_NAMED = re.compile(rb"(?i)authentication-results")


def remove_claims(raw: MessageBytes, authserv_id: str) -> MessageBytes:
    """`raw` without the Authentication-Results fields that claim `authserv_id`."""
    end = raw.find(b"\r\n\r\n")
    header = raw[:end + 2] if end >= 0 else as_bytes(raw)
    if not _NAMED.search(header):          # the common case: one search, no copy
        return raw
    ours = authserv_id.lower().encode()
    kept: list[bytes] = []
    removed = False
    for field in _fields(header):
        name, colon, value = field.partition(b":")
        if colon and name.strip().lower() == FIELD and _authserv_id(value) == ours:
            removed = True
            continue
        kept.append(field)
    if not removed:
        return raw
    return b"".join(kept) + (raw[end + 2:] if end >= 0 else b"")


def _fields(header: bytes) -> list[bytes]:
    """Each field with its continuation lines, CRLFs kept."""
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _authserv_id(value: bytes) -> bytes:
    """The authserv-id a field's value starts with: before the first `;`, comments and folding
    whitespace aside, lower-cased."""
    head = _COMMENT.sub(b" ", value.split(b";", 1)[0])
    words = head.split()
    return words[0].lower() if words else b""


def field_value(authserv_id: str, methods: Sequence[tuple[str, str, Mapping[str, str]]]) -> str:
    """The value of the field the relay adds: its authserv-id, then each method's result and
    properties, or `none` when no method was evaluated. Property values come from clients
    (a sender's domain, a login): printable ASCII only, and a value that is not a token or an
    address (a list of DNS list names, a signature's `b=` prefix) is a quoted string, as the
    RFC's grammar asks: a parser that meets a bare comma stops reading the field there (ARC
    sealing reads it this way)."""
    results = [" ".join([f"{method}={result}", *(f"{key}={_value(value)}" for key, value in properties.items())])
               for method, result, properties in methods]
    return "; ".join([authserv_id, *(results or ["none"])])


# RFC 2045 token (RFC 8601 §2.2 value), and the [local-part "@"] domain-name form of pvalue.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_ADDRESS = re.compile(r"(?:[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]*@)?[0-9A-Za-z](?:[0-9A-Za-z.-]*[0-9A-Za-z])?")


def _value(text: str) -> str:
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:255] or "?"
    if _TOKEN.fullmatch(text) or _ADDRESS.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
