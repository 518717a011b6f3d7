"""Asynchronous DNS for the reputation checks: the configured resolvers, a TTL cache, deadlines.

Built on dnspython's `dns.asyncresolver` (already in our dependency tree through
email-validator, pure Python, maintained, and it takes resolvers with their own ports). Why not
aiodns: it wraps c-ares, a C library whose per-server ports and error mapping are harder to pin
down, and it would be a second DNS stack next to the one email-validator already brings.

Guarantees:
- Every lookup ends by its deadline (a `time.monotonic()` value) with an `Outcome`: an answer,
  "no such name", "no such record", or a failure (timeout, SERVFAIL, refused, no resolver). A
  failure is a value, never an exception, so a check can report it as a fact (`dns.error`).
- Answers are cached for their TTL (capped by `dns.max_ttl`), "no such name / record" for
  `dns.negative_ttl`; failures are not cached, so a resolver that comes back is used at once.
  Concurrent lookups of one name share one query.
- Worker threads (SPF, whose library does blocking DNS) use the same resolver, cache and
  deadlines through `lookup_blocking`, which hands the query to the event loop.

Bounds: `dns.cache_size` entries (least recently used dropped first); names longer than
`MAX_NAME` are not asked (RFC 1035 §2.3.4: 255 octets).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from frontfilter import observe
from frontfilter.config import DnsConfig

if TYPE_CHECKING:
    import dns.asyncresolver

# dnspython is imported by the first resolver that is set up (`Resolver.prepare`, at start when
# a check that asks DNS is configured): a relay with no DNS check does not carry it (3 MiB).

MAX_NAME = 253            # characters of a name in text form without the final dot (RFC 1035)
ATTEMPT_TIMEOUT = 2.0     # seconds per resolver per try, inside the lookup's deadline
# The query ends by its deadline itself (dnspython's lifetime); a caller waits this much longer
# so that the query's own outcome (and its count) wins over the caller's backstop timeout.
DEADLINE_GRACE = 0.25


class Outcome(enum.Enum):
    ANSWER = "answer"
    NXDOMAIN = "nxdomain"     # the name does not exist (a DNSBL's "not listed")
    NODATA = "nodata"         # the name exists, not with this record type
    TIMEOUT = "timeout"       # no answer by the deadline
    ERROR = "error"           # SERVFAIL, REFUSED, no resolver configured or reachable

    @property
    def failed(self) -> bool:
        return self in (Outcome.TIMEOUT, Outcome.ERROR)


@dataclass(frozen=True)
class Lookup:
    outcome: Outcome
    records: tuple[Any, ...] = ()     # dnspython rdata objects of the answer
    detail: str = ""                  # for logs: why it failed

    @property
    def failed(self) -> bool:
        return self.outcome.failed


class Resolver:
    """One per running relay (and one per `frontfilter scan --dns`); safe to share across tasks."""

    def __init__(self, config: DnsConfig, clock: Any = time.monotonic):
        self.config = config
        self._clock = clock
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._setup_error = ""
        self._cache: OrderedDict[tuple[str, str], tuple[float, Lookup]] = OrderedDict()
        self._cache_lock = threading.Lock()          # worker threads read it too
        self._inflight: dict[tuple[str, str], asyncio.Task[Lookup]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- the async side ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Set the resolver up now (at start, off the message path): dnspython is imported and
        /etc/resolv.conf read; a setup failure is logged once, here."""
        self._get_resolver()

    def _forget(self, key: tuple[str, str], _task: object) -> None:
        self._inflight.pop(key, None)

    async def lookup(self, name: str, rdtype: str, deadline: float) -> Lookup:
        """Records of `rdtype` ("A", "TXT", ...) at `name` (absolute, no search list)."""
        self._loop = asyncio.get_running_loop()
        name = name.rstrip(".").lower()
        kind = rdtype.upper()
        if not name or len(name) > MAX_NAME:
            return Lookup(Outcome.NXDOMAIN, detail="not a valid name")
        key = (name, kind)
        cached = self._cached(key)
        if cached is not None:
            observe.dns_query("cached")
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._query(name, kind, deadline))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        remaining = deadline - self._clock()
        if remaining <= 0:
            return Lookup(Outcome.TIMEOUT, detail="deadline passed")
        try:
            # shield: one caller giving up must not cancel the query another caller waits for.
            return await asyncio.wait_for(asyncio.shield(task), remaining + DEADLINE_GRACE)
        except TimeoutError:
            return Lookup(Outcome.TIMEOUT, detail="deadline passed")

    async def _query(self, name: str, kind: str, deadline: float) -> Lookup:
        import dns.exception
        import dns.name
        import dns.rdatatype
        import dns.resolver

        resolver = self._get_resolver()
        if resolver is None:
            result = Lookup(Outcome.ERROR, detail=self._setup_error)
            observe.dns_query(result.outcome.value)
            return result
        lifetime = max(0.001, deadline - self._clock())
        ttl = self.config.negative_ttl
        try:
            answer = await resolver.resolve(dns.name.from_text(name), dns.rdatatype.from_text(kind), search=False,
                                            raise_on_no_answer=False, lifetime=lifetime)
        except dns.resolver.NXDOMAIN:
            result = Lookup(Outcome.NXDOMAIN)
        except dns.exception.Timeout:
            result = Lookup(Outcome.TIMEOUT, detail=f"no answer within {lifetime:.1f}s")
        except dns.resolver.NoNameservers as error:   # SERVFAIL / REFUSED from every resolver
            result = Lookup(Outcome.ERROR, detail=_short(error))
        except (dns.exception.DNSException, OSError) as error:
            result = Lookup(Outcome.ERROR, detail=_short(error))
        else:
            if answer.rrset is None:
                result = Lookup(Outcome.NODATA)
            else:
                result = Lookup(Outcome.ANSWER, tuple(answer.rrset))
                ttl = min(float(answer.rrset.ttl), self.config.max_ttl)
        observe.dns_query(result.outcome.value)
        if not result.failed and ttl > 0:
            self._store((name, kind), result, ttl)
        return result

    def _get_resolver(self) -> dns.asyncresolver.Resolver | None:
        if self._resolver is not None or self._setup_error:
            return self._resolver
        import dns.asyncresolver
        import dns.exception
        import dns.nameserver

        try:
            if self.config.resolvers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(r.host, r.port)
                                        for r in self.config.resolvers]
            else:
                resolver = dns.asyncresolver.Resolver()     # /etc/resolv.conf
        except (dns.exception.DNSException, OSError) as error:
            self._setup_error = f"no resolver: {_short(error)}"
            observe.warning("dns_setup_failed", detail=self._setup_error)
            return None
        resolver.timeout = ATTEMPT_TIMEOUT
        resolver.cache = None     # ours: it also keeps negative answers, and worker threads share it
        self._resolver = resolver
        return resolver

    # ---- the cache -----------------------------------------------------------------------------

    def _cached(self, key: tuple[str, str]) -> Lookup | None:
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            expires, result = entry
            if expires <= self._clock():
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return result

    def _store(self, key: tuple[str, str], result: Lookup, ttl: float) -> None:
        if self.config.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[key] = (self._clock() + ttl, result)
            self._cache.move_to_end(key)
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)

    # ---- the blocking side (worker threads) ----------------------------------------------------

    def lookup_blocking(self, name: str, rdtype: str, deadline: float) -> Lookup:
        """For worker threads: the same lookup, run on the event loop that owns this resolver."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return Lookup(Outcome.ERROR, detail="resolver not started")
        remaining = deadline - self._clock()
        if remaining <= 0:
            return Lookup(Outcome.TIMEOUT, detail="deadline passed")
        future = asyncio.run_coroutine_threadsafe(self.lookup(name, rdtype, deadline), loop)
        try:
            return future.result(remaining + 1.0)   # lookup() itself ends by the deadline
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()
            return Lookup(Outcome.TIMEOUT, detail="deadline passed")

    def bind(self) -> None:
        """Remember the running loop (call from it) so worker threads can use `lookup_blocking`."""
        self._loop = asyncio.get_running_loop()


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ---- `frontfilter check`: does each resolver answer? -------------------------------------------

CHECK_TIMEOUT = 2.0     # per resolver: a resolver that takes longer fails every check anyway


def unanswering_resolvers(config: DnsConfig, probe_name: str) -> list[str]:
    """Each configured resolver (or /etc/resolv.conf's) asked for `probe_name` A once: the ones
    that do not answer, or answer REFUSED or SERVFAIL, with why. NOERROR and NXDOMAIN are
    answers. Blocking: for `frontfilter check`, never the relay."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.resolver

    if config.resolvers:
        servers = [(str(r.host), r.port) for r in config.resolvers]
    else:
        try:
            servers = [(str(address), 53) for address in dns.resolver.Resolver().nameservers]
        except (dns.exception.DNSException, OSError) as error:
            return [f"/etc/resolv.conf: {_short(error)}"]
    problems = []
    for host, port in servers:
        query = dns.message.make_query(probe_name, "A")
        try:
            answer = dns.query.udp(query, host, port=port, timeout=CHECK_TIMEOUT)
        except dns.exception.Timeout:
            problems.append(f"{host}:{port}: no answer within {CHECK_TIMEOUT:g}s")
            continue
        except (dns.exception.DNSException, OSError) as error:
            problems.append(f"{host}:{port}: {_short(error)}")
            continue
        if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            problems.append(f"{host}:{port}: answered {dns.rcode.to_text(answer.rcode())} for {probe_name}")
    return problems
