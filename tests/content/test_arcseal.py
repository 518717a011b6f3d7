"""content/arcseal.py: the sealing key is checked when read; a seal verifies as a receiver checks
it (dkimpy's arc_verify, the public key from a dict standing in for DNS); a chain that came
with the message is continued; a message that cannot be sealed says why instead of raising."""

from __future__ import annotations

import base64
from collections.abc import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from frontfilter.content.arcseal import SIGNED_FIELDS, KeyProblem, SealingKey, read_key, seal

AUTHSERV_ID = "mx.test"
MESSAGE = (b"From: Alice <alice@example.net>\r\nTo: bob@example.org\r\nSubject: lunch\r\n"
           b"Date: Mon, 03 Mar 2025 10:00:00 +0000\r\nMessage-ID: <lunch@example.net>\r\n\r\n"
           b"Noon?\r\n")
OURS = b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=example.net\r\n"


def rsa_pem(bits: int, form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
            password: bytes | None = None) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, form, encryption)


def small_pem() -> bytes:
    """A 512-bit RSA key (cryptography will not generate one this small), made of the two
    largest primes below 2**256: 2**256 - 189 and 2**256 - 357."""
    p, q, e = 2**256 - 189, 2**256 - 357, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())


@pytest.fixture(scope="module")
def key() -> SealingKey:
    return read_key(rsa_pem(2048), "seal1", "edge.example.org")


def dns_of(*keys: SealingKey) -> Callable[..., bytes | None]:
    """What DNS would answer for each key's record: dkimpy's dnsfunc."""
    records = {f"{k.record_name}.".encode(): k.record.encode() for k in keys}
    return lambda name, timeout=5: records.get(name)


# ---- the key ----------------------------------------------------------------------------------

def test_openssl_genrsa_pkcs8_and_the_older_pkcs1_form_are_both_read() -> None:
    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        loaded = read_key(rsa_pem(1024, form), "s", "example.org")
        assert loaded.bits == 1024 and loaded.pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
        assert loaded.record.startswith("v=DKIM1; k=rsa; p=")
        serialization.load_der_public_key(base64.b64decode(loaded.public))     # p= is SubjectPublicKeyInfo
    assert read_key(rsa_pem(1024), "s", "example.org").record_name == "s._domainkey.example.org"


@pytest.mark.parametrize(("pem", "problem"), [
    (b"not a key\n", "not a private key in PEM form"),
    (rsa_pem(1024, password=b"secret"), "the key is encrypted"),
    (small_pem(), "a 512-bit RSA key: from 1024 to 4096 bits, 2048 recommended"),
    (ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
     "not an RSA key"),
])
def test_a_key_that_cannot_seal_is_refused_with_the_reason(pem: bytes, problem: str) -> None:
    with pytest.raises(KeyProblem) as refused:
        read_key(pem, "s", "example.org")
    assert str(refused.value).startswith(problem)


def test_the_key_text_is_not_in_its_repr(key: SealingKey) -> None:
    assert b"PRIVATE" in key.pem and "PRIVATE" not in repr(key)


# ---- the seal ---------------------------------------------------------------------------------

def test_a_sealed_message_verifies_as_a_receiver_checks_it(key: SealingKey) -> None:
    outgoing = OURS + MESSAGE
    done = seal(outgoing, key, AUTHSERV_ID, timestamp=1741000000)
    assert done.sealed and done.instance == 1 and done.describe() == "sealed i=1"
    assert done.fields.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=edge.example.org; s=seal1;")
    assert b"\r\nARC-Authentication-Results: i=1; mx.test;\r\n spf=pass smtp.mailfrom=example.net\r\n" in done.fields
    assert done.fields.endswith(b"\r\n") and b"\n" not in done.fields.replace(b"\r\n", b"")
    cv, sets, reason = dkim.arc_verify(done.fields + outgoing, dnsfunc=dns_of(key))
    assert (cv, reason) == (dkim.CV_Pass, "success"), sets
    # Anything changed after us breaks it: the receiver can tell.
    tampered = done.fields + outgoing.replace(b"Noon?", b"Never")
    assert dkim.arc_verify(tampered, dnsfunc=dns_of(key))[0] == dkim.CV_Fail


def test_the_message_signature_covers_what_a_reader_sees(key: SealingKey) -> None:
    done = seal(OURS + MESSAGE, key, AUTHSERV_ID)
    signature = done.fields.split(b"ARC-Message-Signature:")[1].split(b"ARC-Authentication-Results:")[0]
    signed = [name.strip() for name in
              b"".join(signature.split()).split(b"h=")[1].split(b";")[0].split(b":")]
    assert signed[:8] == [b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id"]
    assert signed == [*SIGNED_FIELDS, b"from"]       # From twice: one added on top breaks it
    assert b"authentication-results" not in signed and b"received" not in signed
    second_from = done.fields + b"From: mallory@example.com\r\n" + OURS + MESSAGE
    assert dkim.arc_verify(second_from, dnsfunc=dns_of(key))[0] == dkim.CV_Fail


def test_a_chain_that_came_with_the_message_is_continued(key: SealingKey) -> None:
    upstream = read_key(rsa_pem(1024), "list", "lists.example.net")
    first = seal(b"Authentication-Results: lists.example.net; dkim=pass header.d=example.net\r\n" + MESSAGE,
                 upstream, "lists.example.net")
    arrived = first.fields + b"Authentication-Results: lists.example.net; dkim=pass header.d=example.net\r\n" + MESSAGE
    ours = b"Authentication-Results: mx.test; arc=pass smtp.remote-ip=192.0.2.1\r\n"
    done = seal(ours + arrived, key, AUTHSERV_ID)
    assert done.instance == 2 and b"ARC-Seal: i=2; cv=pass;" in done.fields
    assert dkim.arc_verify(done.fields + ours + arrived, dnsfunc=dns_of(key, upstream))[0] == dkim.CV_Pass


def test_a_chain_we_did_not_judge_is_not_continued(key: SealingKey) -> None:
    upstream = read_key(rsa_pem(1024), "list", "lists.example.net")
    arrived = seal(b"Authentication-Results: lists.example.net; none\r\n" + MESSAGE, upstream,
                   "lists.example.net").fields + MESSAGE
    done = seal(OURS + arrived, key, AUTHSERV_ID)      # OURS has no arc= result
    assert not done.sealed and done.fields == b""
    assert done.describe() == ("not sealed: the message came with an ARC chain and our "
                               "Authentication-Results has no arc= result for it")


def test_without_a_field_of_ours_nothing_is_sealed(key: SealingKey) -> None:
    someone_else = b"Authentication-Results: mx.elsewhere.example; spf=pass\r\n"
    done = seal(someone_else + MESSAGE, key, AUTHSERV_ID)
    assert done.describe() == "not sealed: no Authentication-Results field of ours that could be read"


def test_a_message_dkimpy_refuses_gives_a_reason_not_an_exception(key: SealingKey) -> None:
    # Our field claims a chain passed, but the message has none: dkimpy raises ParameterError.
    done = seal(b"Authentication-Results: mx.test; arc=pass\r\n" + MESSAGE, key, AUTHSERV_ID)
    assert not done.sealed and done.problem.startswith("ParameterError: ")
