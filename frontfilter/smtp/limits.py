"""Connection limits and failed-AUTH lockout: counters per client address, like Postfix's anvil.

Pure: no I/O, no asyncio; time comes from an injectable clock, so every bound is tested without
sleeping. One instance of each is shared by all listeners of a running relay; they live as long
as the process (a restart forgets them, as anvil does).

Bounds and why:
- `max_connections`: sessions at once, all clients. Past it a new client gets `421 4.7.0`.
- `max_connections_per_ip`: sessions at once from one client. One address hogging the relay
  is an attack or a broken client; a real MTA opens a handful (Postfix defaults to 50 for a
  process limit of 100; ours is the config's).
- `connection_rate_per_ip` per `rate_window`: new sessions from one client. Reconnect loops and
  dictionary attacks reconnect fast; so do a large provider's outbound pool and a mailing list
  host, one message or a few per connection, which is why it is off unless configured.
- `TRACKED_ADDRESSES_MAX`: how many client addresses the rate and lockout tables remember.
  Past it the oldest entries are dropped: memory stays bounded under a spoofed-source flood,
  at the cost of forgetting the oldest offenders first.
- IPv6 clients are counted per /64 (`IPV6_PREFIX`): one host commonly holds a whole /64, so
  counting single addresses would let it take 2**64 slots.

- With several workers, `max_connections_per_ip` holds for the service (the count is shared:
  smtp/shared_counts.py); `max_connections` and the rate are each worker's.

A limit of 0 means "no limit". Clients in the exempt networks (the relay's trusted networks)
are never refused by the per-address limits; the total still counts them.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from frontfilter.model import IPAddress
from frontfilter.smtp.shared_counts import SharedCounts

IPV6_PREFIX = 64
TRACKED_ADDRESSES_MAX = 100_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Clock = Callable[[], float]


def client_key(ip: IPAddress) -> IPAddress | Network:
    """What the per-address counters count: the address, or its /64 for IPv6."""
    if ip.version == 6:
        return ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False)
    return ip


class Limit(enum.Enum):
    """Which limit refused a connection (the `limit` field of the log line)."""

    TOTAL = "total"
    PER_IP = "per_ip"
    RATE = "rate"


class ConnectionLimits:
    def __init__(self, *, max_connections: int, max_per_ip: int, rate_per_ip: int,
                 rate_window: float, exempt: Iterable[Network] = (), clock: Clock = time.monotonic,
                 shared: SharedCounts | None = None):
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.rate_per_ip = rate_per_ip
        self.rate_window = rate_window
        self._exempt = tuple(exempt)
        self._clock = clock
        self.total = 0
        self._open: dict[object, int] = {}
        self._recent: OrderedDict[object, deque[float]] = OrderedDict()
        # Several workers: the per-address count is the service's (smtp/shared_counts.py).
        self._shared = shared

    def acquire(self, ip: IPAddress) -> Limit | None:
        """Take a slot for a new session from `ip`: None if admitted, else the limit it hit.

        Every admitted session must be given back with `release(ip)`.
        """
        if self.max_connections and self.total >= self.max_connections:
            return Limit.TOTAL
        exempt = any(ip in network for network in self._exempt)
        key = client_key(ip)
        bucket = self._shared.bucket(key) if self._shared is not None else None
        if not exempt:
            if self.max_per_ip and self._sessions_of(key, bucket) >= self.max_per_ip:
                return Limit.PER_IP
            if self.rate_per_ip and not self._note_arrival(key):
                return Limit.RATE
        self.total += 1
        self._open[key] = self._open.get(key, 0) + 1
        if self._shared is not None and bucket is not None:
            self._shared.add(bucket, 1)
        return None

    def _sessions_of(self, key: object, bucket: int | None) -> int:
        if self._shared is not None and bucket is not None:
            return self._shared.count(bucket)
        return self._open.get(key, 0)

    def release(self, ip: IPAddress) -> None:
        key = client_key(ip)
        if self._shared is not None and key in self._open:
            self._shared.add(self._shared.bucket(key), -1)
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        self.total = max(0, self.total - 1)

    def _note_arrival(self, key: object) -> bool:
        """Record an arrival; False (not recorded) when the window is already full."""
        now = self._clock()
        arrivals = self._recent.get(key)
        if arrivals is None:
            arrivals = self._recent[key] = deque()
            _bound(self._recent)
        else:
            self._recent.move_to_end(key)
        while arrivals and arrivals[0] <= now - self.rate_window:
            arrivals.popleft()
        if len(arrivals) >= self.rate_per_ip:
            return False
        arrivals.append(now)
        return True


class AuthLockout:
    """Failed AUTH per client address: past `max_failures` within `lockout_time`, locked out
    until `lockout_time` has passed since the failure that crossed the threshold.

    A success does not reset the count: with one valid account an attacker could otherwise
    keep guessing the passwords of others.
    """

    def __init__(self, *, max_failures: int, lockout_time: float, clock: Clock = time.monotonic):
        self.max_failures = max_failures
        self.lockout_time = lockout_time
        self._clock = clock
        self._failures: OrderedDict[object, deque[float]] = OrderedDict()
        self._locked_until: OrderedDict[object, float] = OrderedDict()

    def locked(self, ip: IPAddress) -> bool:
        key = client_key(ip)
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._locked_until[key]
        self._failures.pop(key, None)
        return False

    def failed(self, ip: IPAddress) -> bool:
        """Record a failure. True when this failure locks the address out."""
        if not self.max_failures:
            return False
        key = client_key(ip)
        now = self._clock()
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque()
            _bound(self._failures)
        else:
            self._failures.move_to_end(key)
        while failures and failures[0] <= now - self.lockout_time:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self.max_failures:
            self._locked_until[key] = now + self.lockout_time
            self._locked_until.move_to_end(key)
            _bound(self._locked_until)
            failures.clear()
            return True
        return False


def _bound(table: OrderedDict) -> None:
    while len(table) > TRACKED_ADDRESSES_MAX:
        table.popitem(last=False)
