"""The users file for SMTP AUTH: one `name:hash` per line, hashes in scrypt (stdlib `hashlib`).

Format, one user per line (`#` comments and blank lines are kept as they are):

    alice@example.org:$scrypt$ln=15,r=8,p=1$<salt, base64>$<hash, base64>

The hash field is the PHC string format (`$scrypt$ln=…,r=…,p=…$salt$hash`, unpadded standard
base64), so a file can be checked or produced with other tools that speak it. `frontfilter passwd
FILE USER` writes it; the relay reads it at start and on SIGHUP.

Guarantees: passwords are compared in constant time (`hmac.compare_digest`); a malformed line is
an error naming the file and line, never a skipped user; parameters outside sane bounds are
refused on load, so a hand-edited file cannot make one AUTH attempt cost seconds of CPU or a
gigabyte of memory. The file is rewritten atomically (temp file, fsync, rename, fsync the dir).

Pure: no asyncio, no logging. scrypt is CPU- and memory-heavy by design (about 50 ms and 32 MiB
per check at the default cost): callers on an event loop run `verify` in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

# scrypt cost. N = 2**15, r = 8, p = 1 needs 128 * r * N = 32 MiB and ~50 ms per check here:
# the interactive-login cost recommended by the scrypt paper, affordable on a small DMZ host
# that runs at most AUTH_THREADS checks at once (smtp/auth.py).
DEFAULT_LOG2_N = 15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# What a users file may ask for: beyond this one check costs more than a second or 1 GiB.
MAX_LOG2_N = 20
MAX_R = 16
MAX_P = 4
MAX_NAME = 256          # octets; longer names are not user names
MAX_PASSWORD = 1024     # octets; scrypt takes any length, the bound keeps AUTH input small

_PHC = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


class UsersFileError(Exception):
    """Problems in a users file, each `FILE:LINE: problem`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ScryptHash:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def encode(self) -> str:
        return (f"$scrypt$ln={self.log2_n},r={self.r},p={self.p}"
                f"${_b64(self.salt)}${_b64(self.digest)}")

    def matches(self, password: bytes) -> bool:
        candidate = _scrypt(password, self.salt, self.log2_n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


def hash_password(password: bytes, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R,
                  p: int = DEFAULT_P) -> ScryptHash:
    salt = secrets.token_bytes(SALT_BYTES)
    return ScryptHash(log2_n, r, p, salt, _scrypt(password, salt, log2_n, r, p, HASH_BYTES))


def parse_hash(text: str) -> ScryptHash:
    match = _PHC.match(text.strip())
    if not match:
        raise ValueError("not an scrypt hash ($scrypt$ln=…,r=…,p=…$salt$hash)")
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (1 <= log2_n <= MAX_LOG2_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise ValueError(f"scrypt parameters out of bounds (ln<={MAX_LOG2_N}, r<={MAX_R}, p<={MAX_P})")
    salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return ScryptHash(log2_n, r, p, salt, digest)


def check_name(name: str) -> str | None:
    """The problem with a user name, or None. Names are compared exactly, case included."""
    if not name:
        return "user name is empty"
    try:
        # A name from the command line that is not UTF-8 arrives with surrogate escapes: it
        # could be neither written to the file nor typed by a mail program.
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "user name must be UTF-8"
    if len(name.encode("utf-8")) > MAX_NAME:
        return f"user name longer than {MAX_NAME} octets"
    if ":" in name or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name):
        return "user name must not contain ':', spaces or control characters"
    return None


def check_password(password: bytes) -> str | None:
    if not password:
        return "password is empty"
    if len(password) > MAX_PASSWORD:
        return f"password longer than {MAX_PASSWORD} octets"
    if b"\n" in password or b"\r" in password or b"\0" in password:
        return "password must not contain line breaks or NUL"
    return None


def parse_users(text: str, label: str) -> dict[str, ScryptHash]:
    """name -> hash. Raises UsersFileError listing every bad line."""
    users: dict[str, ScryptHash] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, encoded = stripped.partition(":")
        where = f"{label}:{number}"
        problem = check_name(name) if sep else "expected name:hash"
        if problem is None and name in users:
            problem = f"user {name!r} appears twice"
        if problem is None:
            try:
                users[name] = parse_hash(encoded)
            except ValueError as error:
                problem = str(error)
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if problems:
        raise UsersFileError(problems)
    return users


def load_users(path: Path) -> dict[str, ScryptHash]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise UsersFileError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError([f"{path}: cannot read: {getattr(error, 'strerror', None) or error}"]) from None
    return parse_users(text, str(path))


def set_user(path: Path, name: str, hashed: ScryptHash | None) -> bool:
    """Add or replace `name` (or remove it when `hashed` is None). True if the user existed.

    Other lines, comments included, are kept in place. The file is created with mode 0600.
    """
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        lines = ["# frontfilter SMTP AUTH users: name:scrypt-hash. Manage with `frontfilter passwd`."]
    parse_users("\n".join(lines), str(path))     # refuse to rewrite a file we do not understand
    existed = False
    kept = []
    for line in lines:
        if line.strip().partition(":")[0] == name and not line.strip().startswith("#"):
            existed = True
            if hashed is not None:
                kept.append(f"{name}:{hashed.encode()}")
            continue
        kept.append(line)
    if hashed is not None and not existed:
        kept.append(f"{name}:{hashed.encode()}")
    _write_atomically(path, ("\n".join(kept) + "\n").encode("utf-8"))
    return existed


def _write_atomically(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    # hashlib refuses more than 32 MiB by default; allow what these parameters need, plus slack.
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
