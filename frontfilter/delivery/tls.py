"""TLS to the backend: the client context and the STARTTLS step, for every backend connection.

Every connection to a backend (sync mode's `delivery.backend`, the queue's `delivery.forward`)
is opened by `connect(config, server, helo_name)`: connect, `secure` (STARTTLS as configured),
then EHLO again (RFC 3207 §4.2: what was learnt before TLS is forgotten). Build the context
once with `client_context(config)` (it reads the CA and client-certificate files: call it off
the event loop, or at start-up).

`backend.tls` decides, as Postfix's `smtp_tls_security_level` does:
- `none`: plain SMTP.
- `opportunistic` ("may"): STARTTLS when the backend offers it, certificate not checked (an
  unverified channel still beats plaintext against a passive listener); not offered: plain.
  A handshake that fails (no shared protocol or cipher: an old backend) or that the backend
  breaks off is followed at once by a new connection to the same backend in plain text, as
  Postfix's `may` does (RETRY_AS_PLAINTEXT in its smtp client): otherwise such a backend
  would get no mail at all, and the queue would bounce it in the end. Logged each time.
- `required` ("secure"): STARTTLS or no delivery; the certificate must chain to `tls_ca_file`
  (default: the system's CAs) and carry `tls_verify_name` (default: the host in
  `backend.servers`, a name or an IP address). Any failure is transient (4xx, retried): a
  misconfigured backend certificate delays mail, it never sends it in the clear.

A client certificate (`tls_cert_file` + `tls_key_file`) is presented when configured.
"""

from __future__ import annotations

import asyncio
import ssl

from frontfilter import observe
from frontfilter.config import BackendConfig, BackendTls, Config, ConfigError, HostPort
from frontfilter.delivery.client import ConnectionLost, Reply, SmtpClient, expect

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class BackendTlsError(Exception):
    """TLS to the backend could not be set up as configured (a transient failure)."""


class TlsHandshakeFailed(BackendTlsError):
    """STARTTLS was accepted but no TLS session came of it: the connection is unusable."""


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


async def load_client_context(config: Config) -> None:
    """At start: the backend's CA and client-certificate files, read off the event loop.
    Raises ConfigError naming file and key: a relay that cannot reach its backend as
    configured does not start."""
    try:
        await asyncio.to_thread(client_context, config.backend)
    except ValueError as error:
        raise ConfigError([f"{config.path}: {error}"]) from None


async def reload_backend_tls(config: Config) -> None:
    """SIGHUP: read the backend TLS files again; what fails to load is logged and the previous
    context stays in use."""
    try:
        await asyncio.to_thread(reload_client_context, config.backend)
    except ValueError as error:
        observe.credentials_refused("backend_tls", [str(error)], reload=True)


def backend_tls_problems(config: Config) -> list[str]:
    """What `load_client_context` would refuse, without starting anything (`frontfilter check`)."""
    try:
        build_client_context(config.backend)
    except ValueError as error:
        return [f"{config.path}: {error}"]
    return []


async def secure(smtp: SmtpClient, config: BackendConfig, server: HostPort, helo_name: str) -> str | None:
    """STARTTLS on a connected client as `config.tls` says; returns the TLS version or None.

    Raises BackendTlsError (required but not offered, or the handshake or verification
    failed) and the client's errors for a connection that broke; the caller closes `smtp`.
    """
    context = client_context(config)
    if context is None:
        return None
    expect(await smtp.ehlo(helo_name), 250)
    if not smtp.supports("starttls"):
        if config.tls is BackendTls.REQUIRED:
            raise BackendTlsError("backend does not offer STARTTLS and backend.tls = \"required\"")
        return None
    try:
        reply = await smtp.starttls(context, config.tls_verify_name or server.host)
    except ssl.SSLCertVerificationError as error:
        raise BackendTlsError(f"certificate not verified: {error.verify_message}") from None
    except ssl.SSLError as error:
        raise TlsHandshakeFailed(f"TLS handshake failed: {error.reason or error}") from None
    except (ConnectionLost, ConnectionError) as error:
        raise TlsHandshakeFailed(f"TLS handshake broken off: {error}") from None
    if reply.code != 220:                                  # e.g. 454: TLS not available now
        if config.tls is BackendTls.REQUIRED:
            raise BackendTlsError(f"STARTTLS refused: {reply.code} {reply.message}")
        return None                                        # opportunistic: go on in plain text
    return smtp.tls_version


async def connect(config: BackendConfig, server: HostPort, helo_name: str
                  ) -> tuple[SmtpClient, str | None, Reply]:
    """A client connected to `server`, secured as `config.tls` says and greeted with EHLO:
    (client, TLS version or None, the EHLO reply). Raises what `secure` and the client raise
    (Refused for a greeting or EHLO that is not a welcome); the client is closed then. An
    opportunistic handshake failure is not raised: the same server is tried once more without
    STARTTLS."""
    try:
        return await _connect(config, server, helo_name, tls=True)
    except TlsHandshakeFailed as error:
        if config.tls is not BackendTls.OPPORTUNISTIC:
            raise
        observe.backend_tls_plaintext(str(server), str(error))
    return await _connect(config, server, helo_name, tls=False)


async def _connect(config: BackendConfig, server: HostPort, helo_name: str, tls: bool
                   ) -> tuple[SmtpClient, str | None, Reply]:
    smtp = await SmtpClient.connect(server.host, server.port, config.timeout, config.connect_timeout)
    try:
        tls_version = await secure(smtp, config, server, helo_name) if tls else None
        reply = expect(await smtp.ehlo(helo_name), 250)
    except BaseException:
        smtp.close()
        raise
    return smtp, tls_version, reply
