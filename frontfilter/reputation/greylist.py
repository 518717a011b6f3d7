"""Greylisting: the first delivery attempt of an unknown triplet is refused for a while.

A triplet is (client network, envelope sender, recipient), the client network being the /24
(IPv4) or /64 (IPv6) of the client, so that a sending farm retrying from a neighbouring address
is recognised (postgrey's --lookup-by-subnet). Real MTAs retry; most spam software does not.

States of a triplet, as postgrey keeps them:
- unknown, or forgotten: recorded now -> NEW (the rule answers 451 4.7.1);
- seen less than `delay` ago -> EARLY (still new);
- seen `delay` or more ago, retried within `retry_window` -> PASSED (not new from now on);
- passed before -> KNOWN; its last use is refreshed, and it is forgotten after `expiry` unused.
Clients in `whitelist_networks` and senders in `whitelist_domains` (or their subdomains) are
never greylisted and never recorded.

Storage: one SQLite database (in WAL mode) shared by every worker process of the host. Each
check is one short `BEGIN IMMEDIATE` transaction, so concurrent processes serialise on SQLite's
lock (waiting at most `BUSY_TIMEOUT`) instead of deadlocking on a read-to-write upgrade. The
state is on disk at commit: a restart forgets nothing. Triplets are stored hashed (SHA-256 of
the normalised triplet): the file is not an address book of who writes to whom.
Sender addresses are normalised (lower case, `+tag` and BATV `prvs=...=` removed, digit runs
folded to `#`) so that VERP and tagged bounce addresses, new at each retry, still match.

Blocking: callers on an event loop run `check` in a worker thread (see `checks.Greylisting`).
Time is wall-clock time (it must mean the same after a restart), injectable for tests.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from frontfilter.config import GreylistConfig
from frontfilter.model import IPAddress
from frontfilter.reputation.facts import domain_of

BUSY_TIMEOUT = 5.0            # seconds to wait for another process's transaction
CLEANUP_INTERVAL = 3600.0     # seconds between sweeps of expired triplets
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    key BLOB PRIMARY KEY,          -- sha256(client net, sender, recipient), first 16 bytes
    first_seen REAL NOT NULL,      -- wall-clock seconds
    last_seen REAL NOT NULL,
    passed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS triplets_last_seen ON triplets (last_seen);
"""


class Verdict(enum.Enum):
    NEW = "new"                  # first seen now: greylisted
    EARLY = "early"              # retried before the delay: still greylisted
    PASSED = "passed"            # retried after the delay: passes, and is remembered
    KNOWN = "known"              # passed before
    WHITELISTED = "whitelisted"  # network or sender domain on a whitelist: not recorded

    @property
    def is_new(self) -> bool:
        return self in (Verdict.NEW, Verdict.EARLY)


def client_net(ip: IPAddress, config: GreylistConfig) -> str:
    prefix = config.ipv4_prefix if ip.version == 4 else config.ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


_BATV = re.compile(r"^prvs=[^=]*=", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def normalise_sender(sender: str) -> str:
    if not sender:
        return "<>"
    local, _, domain = sender.rpartition("@")
    local = _BATV.sub("", local.lower()).split("+", 1)[0]
    return f"{_DIGITS.sub('#', local)}@{domain_of(sender)}"


class Greylist:
    """The triplet store. Thread-safe (one connection, used under a lock); one per process."""

    def __init__(self, config: GreylistConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._next_cleanup = 0.0

    def whitelisted(self, ip: IPAddress, sender: str) -> bool:
        if any(ip in network for network in self.config.whitelist_networks):
            return True
        domain = domain_of(sender)
        return bool(domain) and any(domain == d or domain.endswith("." + d)
                                    for d in self.config.whitelist_domains)

    def check(self, ip: IPAddress, sender: str, recipient: str) -> Verdict:
        """Record this attempt and say whether its triplet is still greylisted."""
        if self.whitelisted(ip, sender):
            return Verdict.WHITELISTED
        key = hashlib.sha256("\0".join((client_net(ip, self.config), normalise_sender(sender),
                                        recipient.lower())).encode("utf-8", "surrogateescape")).digest()[:16]
        with self._lock:
            db = self._connect()
            now = self._clock()
            db.execute("BEGIN IMMEDIATE")
            try:
                verdict = self._record(db, key, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if now >= self._next_cleanup:
                self._cleanup(db, now)
        return verdict

    def _record(self, db: sqlite3.Connection, key: bytes, now: float) -> Verdict:
        config = self.config
        row = db.execute("SELECT first_seen, last_seen, passed FROM triplets WHERE key = ?",
                         (key,)).fetchone()
        if row is not None and self._expired(row, now):
            row = None
        if row is None:
            db.execute("INSERT OR REPLACE INTO triplets (key, first_seen, last_seen, passed) "
                       "VALUES (?, ?, ?, 0)", (key, now, now))
            return Verdict.NEW
        first_seen, _last_seen, passed = row
        if passed:
            db.execute("UPDATE triplets SET last_seen = ? WHERE key = ?", (now, key))
            return Verdict.KNOWN
        if now - first_seen < config.delay:
            db.execute("UPDATE triplets SET last_seen = ? WHERE key = ?", (now, key))
            return Verdict.EARLY
        db.execute("UPDATE triplets SET passed = 1, last_seen = ? WHERE key = ?", (now, key))
        return Verdict.PASSED

    def _expired(self, row: tuple[float, float, int], now: float) -> bool:
        first_seen, last_seen, passed = row
        if passed:
            return now - last_seen > self.config.expiry
        return now - first_seen > self.config.delay + self.config.retry_window

    def _cleanup(self, db: sqlite3.Connection, now: float) -> None:
        self._next_cleanup = now + CLEANUP_INTERVAL
        config = self.config
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM triplets WHERE (passed = 1 AND last_seen < ?) "
                       "OR (passed = 0 AND first_seen < ?)",
                       (now - config.expiry, now - config.delay - config.retry_window))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        path = Path(self.config.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")      # readers never block the writer, and back
            db.execute("PRAGMA synchronous=NORMAL")    # WAL + NORMAL: durable across a crash of ours
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"greylist database {path} has schema {version}, "
                                            f"this version knows {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def probe(self) -> None:
        """Open (creating it if need be) and close the database: at start, so that a database
        that cannot be opened stops the relay instead of deferring every message at RCPT.
        Closed again: the connection of a worker is opened in the worker, after any fork."""
        with self._lock:
            self._connect()
            if self._db is not None:
                self._db.close()
                self._db = None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
