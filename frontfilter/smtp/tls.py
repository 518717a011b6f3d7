"""Inbound TLS: the server's certificate as an `ssl.SSLContext` that a reload can replace.

Guarantees: TLS 1.2 at least (`tls.min_version` may raise it to 1.3); Python's server defaults
for everything else, which are modern (forward-secret AEAD suites first, no SSLv3/RC4/3DES),
plus no compression (CRIME) and no renegotiation. Clients are not asked for certificates.
The certificate file may hold the whole chain (leaf first), as Let's Encrypt's fullchain.pem.

Reload (SIGHUP) builds a new context in a worker thread and swaps it in: sessions already in TLS
keep theirs; every handshake that starts afterwards (new connections, a later STARTTLS) uses the
new one. A certificate that does not load is refused with its reason and the old one stays.

Bounds: a handshake that takes longer than `HANDSHAKE_TIMEOUT` is abandoned (the connection
is closed and counted as `tls_failed`), so a client that opens TLS and stalls holds nothing.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from frontfilter.config import TlsConfig, TlsVersion
from frontfilter.units import SECONDS

HANDSHAKE_TIMEOUT = 30 * SECONDS   # a real client finishes in well under a second

_VERSIONS = {TlsVersion.V1_2: ssl.TLSVersion.TLSv1_2, TlsVersion.V1_3: ssl.TLSVersion.TLSv1_3}


class CertificateProblem(Exception):
    """The certificate or key could not be loaded; the text says why (for the administrator),
    `key` names the config key of the file at fault (tls.cert_file when it is not known)."""

    def __init__(self, text: str, key: str = "tls.cert_file"):
        super().__init__(text)
        self.key = key


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """A server context from the configured files. Reads files: call it off the event loop."""
    assert config.cert_file is not None and config.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.verify_mode = ssl.CERT_NONE
    for key, path in (("tls.cert_file", config.cert_file), ("tls.key_file", config.key_file)):
        try:                                            # OpenSSL's errors do not name the file
            with open(path, "rb"):
                pass
        except OSError as error:
            raise CertificateProblem(f"{path}: {_os_reason(error)}", key) from None
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except ssl.SSLError as error:
        # KEY_VALUES_MISMATCH: both read, the key is not the certificate's.
        key = "tls.key_file" if error.reason == "KEY_VALUES_MISMATCH" else "tls.cert_file"
        raise CertificateProblem(f"cannot load certificate {config.cert_file} with key "
                                 f"{config.key_file}: {error.reason or error}", key) from None
    except OSError as error:
        raise CertificateProblem(f"cannot read certificate or key: {error.strerror or error}") from None
    return context


def _os_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)


def read_certificate(path: Path) -> tuple[dict[str, str], float | None]:
    """The first certificate in a PEM file, read once: its subject and expiry for the log line
    ({} if unknown) and its expiry as Unix time for the metric (None if unknown). Reads the
    file: call it off the event loop.

    The subject reads as RFC 4514 writes it (`CN=mx1.example.org,O=Example`), the expiry as
    OpenSSL prints it (`Jun  1 12:00:00 2030 GMT`).
    """
    # Imported here: 15 MiB per worker process, for one log line at start and on SIGHUP, and
    # only where a certificate is configured.
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        subject = certificate.subject.rfc4514_string()
        expiry = certificate.not_valid_after_utc
    except Exception:  # informative only: server_context() says what is wrong with the file
        return {}, None
    return ({"subject": subject, "not_after": f"{expiry:%b} {expiry.day:2d} {expiry:%H:%M:%S %Y} GMT"},
            expiry.timestamp())


class ServerCertificate:
    """The current inbound context. `context` is read at every handshake; `replace` swaps it."""

    def __init__(self, config: TlsConfig, context: ssl.SSLContext):
        self.config = config
        self.context = context

    def replace(self, context: ssl.SSLContext) -> None:
        self.context = context


def tls_version(ssl_object: object) -> str:
    """`TLSv1.3` etc., for the metric label (a small fixed set)."""
    version = getattr(ssl_object, "version", None)
    return (version() if callable(version) else None) or "unknown"
