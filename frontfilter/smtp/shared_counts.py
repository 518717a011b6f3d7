"""Sessions per client address, counted across the workers of one relay.

With `server.workers` > 1 each worker takes its own connections; a per-worker count would let
one address open `limits.max_connections_per_ip` sessions in every worker. So the count lives
in memory the workers share: an anonymous shared mapping the supervisor makes before it forks
(inherited by every worker, gone with the service), one row of counters per worker slot.

- Each worker writes only its own row (no lock to take, none left held by a worker that
  dies); a client's count is the sum of its bucket over the rows. The supervisor zeroes the
  row of a worker that ended: its sessions ended with it.
- A client key (an IPv4 address or an IPv6 /64, limits.client_key) is hashed, with a secret
  drawn at start, into one of `BUCKETS` counters. Two addresses in one bucket share a count:
  with 65,536 buckets and a secret no client knows, rare and not something a client can aim
  for; at worst such a client is refused a little early, never let in past its limit.
"""

from __future__ import annotations

import hashlib
import mmap
import os

BUCKETS = 65536
MAX_COUNT = 0xFFFF                 # an unsigned short per bucket and worker
SLOT_ENV = "FRONTFILTER_WORKER_SLOT"   # process/supervisor.py sets it in each worker


class SharedCounts:
    def __init__(self, rows: int):
        self.rows = rows
        self._memory = mmap.mmap(-1, rows * BUCKETS * 2)     # anonymous and shared across fork
        self._counts = memoryview(self._memory).cast("H")
        self._secret = os.urandom(16)
        self.row = 0                                       # this process's row (its worker slot)

    def bucket(self, key: object) -> int:
        digest = hashlib.blake2b(str(key).encode(), key=self._secret, digest_size=4).digest()
        return int.from_bytes(digest, "big") % BUCKETS

    def count(self, bucket: int) -> int:
        """Sessions of this bucket's clients now, in every worker."""
        counts = self._counts
        return sum(counts[row * BUCKETS + bucket] for row in range(self.rows))

    def add(self, bucket: int, delta: int) -> None:
        index = self.row * BUCKETS + bucket
        self._counts[index] = max(0, min(MAX_COUNT, self._counts[index] + delta))

    def clear_row(self, row: int) -> None:
        """A worker ended (the supervisor): its sessions are gone."""
        self._counts[row * BUCKETS:(row + 1) * BUCKETS] = memoryview(bytes(BUCKETS * 2)).cast("H")


_shared: SharedCounts | None = None


def create(rows: int) -> SharedCounts:
    """In the supervisor, before the workers are forked."""
    global _shared
    _shared = SharedCounts(rows)
    return _shared


def for_this_worker() -> SharedCounts | None:
    """In a worker: the service's shared counts, writing this worker's row; None when the relay
    runs as one process (its own counts are the service's)."""
    slot = os.environ.get(SLOT_ENV)
    if _shared is None or slot is None:
        return None
    _shared.row = int(slot)
    return _shared
