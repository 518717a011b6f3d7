"""SMTP AUTH: PLAIN (RFC 4616) and LOGIN, checked against the users file, slowed and locked out.

Who may relay: a client that authenticated here may send to any domain (`policy.may_relay`
reads `SessionFacts.auth_user`). So AUTH is guarded as the door it is:
- offered only inside TLS and only on listeners with `auth` set (the protocol checks both);
- each check runs scrypt in a worker thread (`AUTH_THREADS` at most at once, which also bounds
  the memory scrypt takes: 32 MiB per check at the default cost), never on the event loop;
- an unknown user costs the same scrypt as a known one (a random hash of the same cost), so
  timing does not tell which names exist;
- every failure waits `auth.failure_delay` before its `535 5.7.8` (a tarpit: guessing gets slow);
- past `auth.max_failures` failures from one client address (an IPv6 /64) within
  `auth.lockout_time`, AUTH from there is refused with `454 4.7.0` for `lockout_time`, without
  looking at the credentials, so guessing during a lockout learns nothing. The lock is checked
  again once the credentials are in and once their check is done: an exchange that was already
  under way in another session from there when the lock fell is refused the same way.

Log lines name the user only when it exists in the users file: a password typed into the user
field is never written to the log. Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import secrets
from base64 import b64decode
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable

from frontfilter import observe, reply
from frontfilter.config import AuthConfig
from frontfilter.model import Peer
from frontfilter.smtp.passwd import DEFAULT_LOG2_N, DEFAULT_P, DEFAULT_R, HASH_BYTES, SALT_BYTES, ScryptHash
from frontfilter.reply import Reply
from frontfilter.smtp.limits import AuthLockout

AUTH_THREADS = 2            # scrypt checks at once: 2 cores here, 32 MiB each
MECHANISMS = ("PLAIN", "LOGIN")
LOGIN_USER_CHALLENGE = "Username:"     # RFC-less but universal (draft-murchison-sasl-login)
LOGIN_PASSWORD_CHALLENGE = "Password:"

# Sends a 334 challenge (the text before base64) and returns the client's answer line, the
# session's refusal of that line (too long), or None when the client went away: the SMTP
# session's side of an exchange.
Challenge = Callable[[str], Awaitable[str | Reply | None]]


class Result(enum.Enum):
    """Label values of `frontfilter_auth_attempts_total{result}`."""

    SUCCESS = "success"
    FAILURE = "failure"          # wrong user or password
    LOCKED_OUT = "locked_out"    # refused without a check: too many failures from there
    MALFORMED = "malformed"      # bad base64, wrong PLAIN layout, aborted with "*"


class Authenticator:
    """Shared by all listeners of a relay: the users and the lockout table."""

    def __init__(self, config: AuthConfig, users: dict[str, ScryptHash],
                 lockout: AuthLockout | None = None):
        self.config = config
        self.users = users
        self.lockout = lockout or AuthLockout(max_failures=config.max_failures,
                                              lockout_time=config.lockout_time)
        self._executor = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="auth")
        # Checked instead of a real hash for unknown users: same cost, never matches.
        self._decoy = ScryptHash(DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P,
                                 secrets.token_bytes(SALT_BYTES), secrets.token_bytes(HASH_BYTES))

    def replace_users(self, users: dict[str, ScryptHash]) -> None:
        self.users = users

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def authenticate(self, challenge: Challenge, client: Peer, mechanism: str,
                           initial: str | None) -> tuple[str | None, Reply | None]:
        """Run one AUTH exchange. Returns (user if authenticated, the reply to send, or None
        when the client went away during the exchange)."""
        where = str(client)
        if self.lockout.locked(client.ip):
            observe.auth_attempt(Result.LOCKED_OUT.value, where, mechanism)
            return None, reply.AUTH_LOCKED_OUT
        credentials = await _exchange(challenge, mechanism, initial)
        if credentials is None:
            observe.auth_attempt(Result.MALFORMED.value, where, mechanism)
            return None, None
        if isinstance(credentials, Reply):
            observe.auth_attempt(Result.MALFORMED.value, where, mechanism)
            return None, credentials
        user, password = credentials
        known = user if user is not None and user in self.users else None
        if self.lockout.locked(client.ip):   # locked while the client typed (LOGIN challenges)
            observe.auth_attempt(Result.LOCKED_OUT.value, where, mechanism)
            return None, reply.AUTH_LOCKED_OUT
        hashed = self.users[known] if known is not None else self._decoy
        loop = asyncio.get_running_loop()
        matched = await loop.run_in_executor(self._executor, hashed.matches, password)
        if self.lockout.locked(client.ip):
            # Other sessions from this address crossed the threshold while this check waited
            # for a thread: its answer is withheld too, or parallel sessions would keep guessing
            # (and could be told "right") past max_failures.
            observe.auth_attempt(Result.LOCKED_OUT.value, where, mechanism)
            return None, reply.AUTH_LOCKED_OUT
        if matched and known is not None:
            observe.auth_attempt(Result.SUCCESS.value, where, mechanism, user=known)
            return known, reply.AUTH_OK
        locked = self.lockout.failed(client.ip)
        observe.auth_attempt(Result.FAILURE.value, where, mechanism, user=known,
                             unknown_user=known is None, locked_out=locked)
        await asyncio.sleep(self.config.failure_delay)
        return None, reply.AUTH_INVALID


async def _exchange(challenge: Challenge, mechanism: str,
                    initial: str | None) -> tuple[str | None, bytes] | Reply | None:
    """(user, password) from the client; a Reply for a malformed or aborted exchange; None
    when the client went away."""
    if mechanism == "PLAIN":
        blob = _decode(initial) if initial is not None else await _challenge(challenge, "")
        if blob is None or isinstance(blob, Reply):
            return blob
        parts = blob.split(b"\0")
        if len(parts) != 3:
            return reply.AUTH_MALFORMED
        authzid, user, password = parts
        if authzid and authzid != user:   # acting for someone else: not offered here, so
            return None, b""                # it counts as a failure, never as a success
        return _name(user), password
    if mechanism == "LOGIN":
        user_blob = _decode(initial) if initial is not None else await _challenge(challenge, LOGIN_USER_CHALLENGE)
        if user_blob is None or isinstance(user_blob, Reply):
            return user_blob
        secret = await _challenge(challenge, LOGIN_PASSWORD_CHALLENGE)
        if secret is None or isinstance(secret, Reply):
            return secret
        return _name(user_blob), secret
    return reply.AUTH_UNKNOWN_MECHANISM


async def _challenge(challenge: Challenge, text: str) -> bytes | Reply | None:
    answer = await challenge(text)
    if answer is None or isinstance(answer, Reply):
        return answer
    if answer == "*":        # RFC 4954 §4: the client cancels the exchange
        return reply.AUTH_ABORTED
    try:
        return b64decode(answer.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return reply.AUTH_MALFORMED


def _decode(text: str) -> bytes | Reply:
    if text == "=":          # RFC 4954 §4: "=" is an empty initial response
        return b""
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return reply.AUTH_MALFORMED


def _name(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
