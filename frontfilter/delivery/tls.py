"""TLS to the backend: the client context and the STARTTLS step, for every backend connection.

Used by `delivery.backend` (sync mode) and by anything else that opens an aiosmtplib connection
to a backend (the queue worker): build the context once with `client_context(config)` (it reads
the CA and client-certificate files: call it off the event loop, or at start-up), then after
`connect()` call `await secure(smtp, config, server)`, then EHLO again (RFC 3207 §4.2: what
was learnt before TLS is forgotten).

`backend.tls` decides, as Postfix's `smtp_tls_security_level` does:
- `none`: plain SMTP.
- `opportunistic` ("may"): STARTTLS when the backend offers it, certificate not checked (an
  unverified channel still beats plaintext against a passive listener); not offered: plain.
- `required` ("secure"): STARTTLS or no delivery; the certificate must chain to `tls_ca_file`
  (default: the system's CAs) and carry `tls_verify_name` (default: the host in
  `backend.servers`, a name or an IP address). Any failure is transient (4xx, retried): a
  misconfigured backend certificate delays mail, it never sends it in the clear.

A client certificate (`tls_cert_file` + `tls_key_file`) is presented when configured.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from frontfilter.config import BackendConfig, BackendTls, HostPort

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class BackendTlsError(Exception):
    """TLS to the backend could not be set up as configured (a transient failure)."""


# One context per backend config, built once: the files are read at start-up (and on reload),
# never per connection. Replaced whole by `reload_client_context`.
_contexts: dict[BackendConfig, ssl.SSLContext | None] = {}


def client_context(config: BackendConfig) -> ssl.SSLContext | None:
    """The context for `config`, built on first use. None when `tls = "none"`.

    Raises ValueError naming the key and file when a CA or client certificate cannot be loaded.
    """
    if config not in _contexts:
        _contexts[config] = build_client_context(config)
    return _contexts[config]


def reload_client_context(config: BackendConfig) -> None:
    """Read the files again (SIGHUP: a renewed client certificate or CA). On error the old
    context stays and ValueError says why. Reads files: call it off the event loop."""
    _contexts[config] = build_client_context(config)


def build_client_context(config: BackendConfig) -> ssl.SSLContext | None:
    if config.tls is BackendTls.NONE:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MIN_VERSION
    if config.tls is BackendTls.REQUIRED:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            if config.tls_ca_file is not None:
                context.load_verify_locations(cafile=config.tls_ca_file)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"backend.tls_ca_file: cannot load {config.tls_ca_file}: "
                             f"{getattr(error, 'reason', None) or getattr(error, 'strerror', None) or error}") from None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.tls_cert_file is not None:
        try:
            context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"backend.tls_cert_file: cannot load {config.tls_cert_file} with "
                             f"{config.tls_key_file}: "
                             f"{getattr(error, 'reason', None) or getattr(error, 'strerror', None) or error}") from None
    return context


async def secure(smtp: aiosmtplib.SMTP, config: BackendConfig, server: HostPort) -> str | None:
    """STARTTLS on a connected client as `config.tls` says; returns the TLS version or None.

    Raises BackendTlsError (required but not offered, or the handshake or verification
    failed) and aiosmtplib's errors for a connection that broke; the caller closes `smtp`.
    """
    context = client_context(config)
    if context is None:
        return None
    await smtp.ehlo()
    if not smtp.supports_extension("starttls"):
        if config.tls is BackendTls.REQUIRED:
            raise BackendTlsError("backend does not offer STARTTLS and backend.tls = \"required\"")
        return None
    try:
        await smtp.starttls(tls_context=context, server_hostname=config.tls_verify_name or server.host)
    except aiosmtplib.SMTPResponseException as error:     # e.g. 454: TLS not available now
        if config.tls is BackendTls.REQUIRED:
            raise BackendTlsError(f"STARTTLS refused: {error.code} {error.message}") from None
        return None                                        # opportunistic: go on in plain text
    except ssl.SSLCertVerificationError as error:
        raise BackendTlsError(f"certificate not verified: {error.verify_message}") from None
    except ssl.SSLError as error:
        raise BackendTlsError(f"TLS handshake failed: {error.reason or error}") from None
    ssl_object = smtp.get_transport_info("ssl_object")
    return str(ssl_object.version()) if ssl_object is not None else "unknown"
