"""Server-side TLS over memory buffers (`ssl.MemoryBIO`): ciphertext in, plaintext out.

The session shell puts one under the SMTP core for implicit TLS and after STARTTLS. Owning the
buffers (rather than asyncio's `loop.start_tls`) lets the shell hand the TLS layer the bytes it
already holds — a ClientHello that arrived in the same read as the PROXY header — through
public `ssl` API only, and keeps the switch to TLS synchronous: nothing the client sends after
our `220` can be read as plaintext.
"""

from __future__ import annotations

import ssl

READ_SIZE = 64 * 1024
# Ciphertext that may wait for the rest of its record: one record is at most 16 KiB of
# plaintext plus its overhead (RFC 8446 §5.2), so more than this waiting is not TLS.
MAX_PENDING = 64 * 1024


class TlsClosed(Exception):
    """The client ended the TLS session (close_notify)."""


class TlsLayer:
    def __init__(self, context: ssl.SSLContext):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshaken = False

    def receive(self, data: bytes) -> bytes:
        """Take ciphertext; return the plaintext it completes (b"" during the handshake).

        Raises ssl.SSLError when the handshake or a record fails or ciphertext piles up past
        MAX_PENDING, TlsClosed on close_notify. What the TLS layer must send in return is in
        `outgoing()`."""
        self._incoming.write(data)
        if not self.handshaken:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshaken = True
        chunks = []
        while True:
            try:
                chunk = self.ssl_object.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise TlsClosed() from None
            if not chunk:      # read() says close_notify this way once the handshake is done
                raise TlsClosed()
            chunks.append(chunk)
        if self._incoming.pending > MAX_PENDING:
            raise ssl.SSLError("more ciphertext waiting than a TLS record holds")
        return b"".join(chunks)

    def encrypt(self, data: bytes) -> bytes:
        self.ssl_object.write(data)
        return self._outgoing.read()

    def outgoing(self) -> bytes:
        return self._outgoing.read()

    def close(self) -> bytes:
        """The close_notify to send, when the handshake was done (b"" otherwise)."""
        if not self.handshaken:
            return b""
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLError, ssl.SSLWantReadError):
            pass    # the client's close_notify is not waited for (RFC 8446 §6.1 allows it)
        return self._outgoing.read()

    @property
    def version(self) -> str:
        return self.ssl_object.version() or "unknown"
