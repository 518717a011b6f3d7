"""ARC sealing (RFC 8617): the three fields that let the next hop trust what this relay found.

When the relay changes a message (strips a part, adds a field), the sender's DKIM signature no
longer verifies, and a DMARC check after us may refuse mail that was fine when it arrived. An
ARC set — ARC-Authentication-Results (our Authentication-Results, copied), ARC-Message-Signature
(over the message as it leaves us) and ARC-Seal (over the chain) — signed with our key under
`SELECTOR._domainkey.DOMAIN`, lets a receiver that trusts our domain believe the results we
recorded before the change. The signing is dkimpy's (`dkim.arc_sign`), the reference Python
implementation of RFC 8617.

Guarantees:
- `seal` is pure: bytes and a loaded key in, the fields (CRLF, to go on top) or why not out. It
  never raises: a message dkimpy cannot seal is forwarded unsealed by the caller, as it would
  have been without [arc] — a seal adds trust, it never stands between a message and delivery.
- The chain's status (cv=) is what our own Authentication-Results field says (`arc=pass|fail`
  when the message came with a chain; none without one); dkimpy reads it from the field whose
  authserv-id is ours. Nothing is sealed when a chain arrived and our field has no arc= result
  (a chain cannot be continued without judging it), nor past RFC 8617 §4.2.1's 50 sets.
- `read_key` accepts an RSA private key of MIN_KEY_BITS to MAX_KEY_BITS bits in PEM (PKCS#1 or
  PKCS#8, unencrypted) and hands dkimpy the PKCS#1 form it reads; anything else is a
  `KeyProblem` saying what is wrong, for the caller to name the file and key.

Bounds:
- MIN_KEY_BITS = 1024, MAX_KEY_BITS = 4096: RFC 8301 §3.2, verifiers must accept keys from
  1024 to 4096 bits; outside them a receiver may refuse our seal. RECOMMENDED_KEY_BITS = 2048
  (the same section: signers SHOULD use at least 2048).
- The message is signed whole (dkimpy holds it parsed, and its canonical body, at once): a
  25 MB message takes about a second and a few copies of its size. `[arc] seal = "changed"`
  (the default) seals only the messages that need it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field


MIN_KEY_BITS = 1024
MAX_KEY_BITS = 4096
RECOMMENDED_KEY_BITS = 2048

# The fields ARC-Message-Signature covers (h=), lower-case. What a reader sees as the message:
# originator, recipients, subject, date and ids, threading, list fields, and the MIME fields
# that say how to read the body. A name listed but absent is signed as absent, so adding it
# later breaks the signature (RFC 6376 §5.4): nobody after us adds a From or a Subject.
# Not listed: Authentication-Results (RFC 8617 §4.1.2: later hops may remove them), trace fields
# (Received, Return-Path: added by every hop), DKIM-Signature (dkimpy refuses to sign it; its
# verdict is in our Authentication-Results), and the relay's own X-Frontfilter-* fields.
SIGNED_FIELDS: tuple[bytes, ...] = (
    b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id",
    b"in-reply-to", b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
    b"content-id", b"content-description", b"content-disposition",
    b"resent-date", b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-message-id",
    b"list-id", b"list-help", b"list-unsubscribe", b"list-unsubscribe-post", b"list-subscribe",
    b"list-post", b"list-owner", b"list-archive",
)
# From twice: a second From added on top (a forged one shown by some readers) breaks the seal.
_SIGNED = SIGNED_FIELDS + (b"from",)

_INSTANCE = re.compile(rb"\bi\s*=\s*(\d+)")
_ARC_SEAL = re.compile(rb"(?im)^arc-seal\s*:")


class KeyProblem(ValueError):
    """A sealing key that cannot be used; the text says why, without naming the file."""


@dataclass(frozen=True)
class SealingKey:
    selector: str
    domain: str
    bits: int
    public: str                            # base64 SubjectPublicKeyInfo: the record's p=
    pem: bytes = field(repr=False)         # PKCS#1, unencrypted: what dkimpy reads

    @property
    def record_name(self) -> str:
        """Where the public key is published (RFC 6376 §3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record(self) -> str:
        """The TXT record's text (RFC 6376 §3.6.1)."""
        return f"v=DKIM1; k=rsa; p={self.public}"


# dkimpy and cryptography are imported where a key is read or a message sealed: a relay without
# [arc] does not carry them (8 MiB per process, bench/README.md "Memory of a worker").

def read_key(pem: bytes, selector: str, domain: str) -> SealingKey:
    """The key in `pem`, checked; raises KeyProblem."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:             # cryptography: "Password was not given but private key is encrypted"
        raise KeyProblem("the key is encrypted: give it unencrypted, readable by the service only") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyProblem("not a private key in PEM form (make one with: openssl genrsa 2048)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyProblem("not an RSA key: ARC seals are signed with rsa-sha256 here (dkimpy's only one)")
    bits = key.key_size
    if not MIN_KEY_BITS <= bits <= MAX_KEY_BITS:
        raise KeyProblem(f"a {bits}-bit RSA key: from {MIN_KEY_BITS} to {MAX_KEY_BITS} bits, "
                         f"{RECOMMENDED_KEY_BITS} recommended (RFC 8301 §3.2)")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    return SealingKey(selector=selector, domain=domain, bits=bits,
                      public=base64.b64encode(public).decode("ascii"), pem=pkcs1)


@dataclass(frozen=True)
class Seal:
    """What `seal` did: the ARC set to put on top (instance `instance`), or why there is none."""

    fields: bytes = b""
    instance: int = 0
    problem: str = ""

    @property
    def sealed(self) -> bool:
        return bool(self.fields)

    def describe(self) -> str:
        """For the message's log line."""
        return f"sealed i={self.instance}" if self.sealed else f"not sealed: {self.problem}"


def seal(message: bytes, key: SealingKey, authserv_id: str, timestamp: int | None = None) -> Seal:
    """The ARC set for `message` (exactly as it is forwarded, our Authentication-Results on
    top), signed with `key`; or, when dkimpy cannot seal it, why. `timestamp`: t=, default now."""
    import dkim

    try:
        fields = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(), key.pem,
                               authserv_id.encode(), include_headers=list(_SIGNED), timestamp=timestamp)
    except Exception as error:      # dkimpy's errors, and its parser's on hostile input: see above
        return Seal(problem=f"{type(error).__name__}: {error}"[:200])
    if not fields:
        return Seal(problem=_why_nothing(message))
    found = _INSTANCE.search(fields[0])
    return Seal(fields=b"".join(f if f.endswith(b"\r\n") else f + b"\r\n" for f in fields),
                instance=int(found.group(1)) if found else 0)


def _why_nothing(message: bytes) -> str:
    """dkimpy returns no set, without saying why, in two cases (dkim.ARC.sign)."""
    end = message.find(b"\r\n\r\n")
    if _ARC_SEAL.search(message[:end] if end >= 0 else message):
        return "the message came with an ARC chain and our Authentication-Results has no arc= result for it"
    return "no Authentication-Results field of ours that could be read"
