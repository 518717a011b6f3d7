"""SPF (RFC 7208) of the envelope sender, and the Received-SPF header field that records it.

The evaluation is pyspf's (`spf` module): the reference implementation of RFC 7208 (it passes
the RFC's test suite) and the engine under policyd-spf, the Postfix policy service this feature
is modelled on. Writing our own would mean re-doing macros, include/redirect, the 10-lookup and
void-lookup limits, and their many corner cases.

pyspf does blocking DNS, so each evaluation runs in a worker thread (at most `spf.concurrency`
at once), and its DNS goes through our resolver (`Resolver.lookup_blocking`): the configured
resolvers, the shared cache, and this evaluation's deadline. That plumbing replaces pyspf's
module-level `DNSLookup` hook once, at import; the hook reads which resolver and deadline to
use from a context variable set by the thread running the evaluation, and falls back to
pyspf's own lookup for any other caller.

Guarantees: `check` answers by `spf.timeout` (RFC 7208 §4.6.4 asks for at least 20 s); a
timeout, a DNS failure or an unexpected error in the library is `temperror`, never `pass`.
Mail with the null sender is checked by its HELO name (RFC 7208 §2.4), as `identity=helo`.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from frontfilter import observe
from frontfilter.config import SpfConfig
from frontfilter.model import IPAddress
from frontfilter.reputation.facts import SpfResult, domain_of
from frontfilter.reputation.resolver import Outcome, Resolver

with warnings.catch_warnings():
    # pyspf 2.0.14 has regex strings with invalid escapes: a DeprecationWarning (SyntaxWarning
    # from 3.12) when its source is compiled. Harmless, and not ours to fix here.
    warnings.simplefilter("ignore")
    import spf as pyspf

_CURRENT: contextvars.ContextVar[tuple[Resolver, float] | None] = contextvars.ContextVar(
    "frontfilter_spf_resolver", default=None)
_PYSPF_LOOKUP = pyspf.DNSLookup


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    """pyspf's DNS hook: ((name, type), value) pairs, as its dnspython driver returns them."""
    current = _CURRENT.get()
    if current is None:
        return _PYSPF_LOOKUP(name, qtype, strict, timeout)
    resolver, deadline = current
    if qtype == "SPF":
        return []   # RR type 99 is obsolete (RFC 7208 §3.1); pyspf asks only in "harsh" mode
    lookup = resolver.lookup_blocking(name, qtype, deadline)
    if lookup.failed:
        raise pyspf.TempError(f"DNS {lookup.outcome.value} for {name} {qtype}")
    if lookup.outcome is not Outcome.ANSWER:
        return []
    values: list[Any] = []
    for rdata in lookup.records:
        if qtype in ("A", "AAAA"):
            values.append(rdata.address)
        elif qtype == "MX":
            values.append((rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))
        elif qtype == "PTR":
            values.append(rdata.target.to_text(omit_final_dot=True))
        elif qtype == "TXT":
            values.append(tuple(rdata.strings))
    return [((name, qtype), value) for value in values]


pyspf.DNSLookup = _lookup


@dataclass(frozen=True)
class SpfOutcome:
    result: SpfResult
    identity: str            # "mailfrom", or "helo" for the null sender
    domain: str              # the domain whose policy was evaluated
    explanation: str = ""    # pyspf's, for the log

    @property
    def dns_failed(self) -> bool:
        return self.result is SpfResult.TEMPERROR


class SpfChecker:
    def __init__(self, resolver: Resolver, config: SpfConfig, receiver: str):
        self.resolver = resolver
        self.config = config
        self.receiver = receiver
        self._executor = ThreadPoolExecutor(config.concurrency, thread_name_prefix="spf")

    async def check(self, ip: IPAddress, sender: str, helo: str | None) -> SpfOutcome:
        started = time.monotonic()
        deadline = started + self.config.timeout
        identity, domain = ("mailfrom", domain_of(sender)) if sender else ("helo", (helo or "").lower())
        if not domain:
            outcome = SpfOutcome(SpfResult.NONE, identity, domain, "no domain to check")
        else:
            self.resolver.bind()
            # The domain as DNS knows it (lower case, A-labels); the local part as sent (%{l}).
            checked = f"{sender.rpartition('@')[0]}@{domain}" if sender else ""
            work = asyncio.get_running_loop().run_in_executor(
                self._executor, _evaluate, self.resolver, deadline, str(ip), checked, helo or "",
                self.receiver)
            try:
                # The thread's own DNS ends by the deadline; this bound covers a busy pool too.
                outcome = await asyncio.wait_for(work, self.config.timeout + 1.0)
            except TimeoutError:
                outcome = SpfOutcome(SpfResult.TEMPERROR, identity, domain, "evaluation timed out")
            outcome = SpfOutcome(outcome.result, identity, domain, outcome.explanation)
        observe.spf_checked(outcome.result.value, time.monotonic() - started)
        return outcome

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _evaluate(resolver: Resolver, deadline: float, ip: str, sender: str, helo: str,
              receiver: str) -> SpfOutcome:
    token = _CURRENT.set((resolver, deadline))
    try:
        remaining = max(0.001, deadline - time.monotonic())
        query = pyspf.query(i=ip, s=sender, h=helo, receiver=receiver, timeout=remaining,
                            querytime=remaining)
        result, _code, explanation = query.check()
    except Exception as error:   # a bug or an input pyspf did not foresee: never a pass
        observe.warning("spf_library_error", detail=f"{type(error).__name__}: {error}"[:200])
        return SpfOutcome(SpfResult.TEMPERROR, "", "", "library error")
    finally:
        _CURRENT.reset(token)
    try:
        return SpfOutcome(SpfResult(str(result).lower()), "", "", str(explanation)[:200])
    except ValueError:
        return SpfOutcome(SpfResult.PERMERROR, "", "", f"unknown result {result!r}")


# ---- Received-SPF (RFC 7208 §9.1) ------------------------------------------------------------

_COMMENTS = {
    SpfResult.PASS: "domain of {who} designates {ip} as permitted sender",
    SpfResult.FAIL: "domain of {who} does not designate {ip} as permitted sender",
    SpfResult.SOFTFAIL: "domain of transitioning {who} does not designate {ip} as permitted sender",
    SpfResult.NEUTRAL: "{ip} is neither permitted nor denied by domain of {who}",
    SpfResult.NONE: "domain of {who} does not designate permitted sender hosts",
    SpfResult.TEMPERROR: "error in processing during lookup of {who}",
    SpfResult.PERMERROR: "permanent error in processing domain of {who}",
}
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")  # RFC 5322


def received_spf(outcome: SpfOutcome, receiver: str, ip: IPAddress, sender: str,
                 helo: str | None) -> str:
    """The field's value. Client-supplied parts (sender, HELO) are quoted or replaced so that
    they can neither close the comment nor add a key=value pair of their own."""
    who = _comment_text(sender or f"postmaster@{helo or 'unknown'}")
    comment = _COMMENTS[outcome.result].format(who=who, ip=ip)
    pairs = [("client-ip", str(ip)), ("envelope-from", sender or "<>"),
             ("helo", helo or "unknown"), ("receiver", receiver), ("identity", outcome.identity)]
    fields = "; ".join(f"{key}={_kv_value(value)}" for key, value in pairs)
    return f"{outcome.result.value} ({_comment_text(receiver)}: {comment}) {fields};"


def _comment_text(text: str) -> str:
    return "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "?" for c in text)[:255]


def _kv_value(text: str) -> str:
    text = "".join(c if 31 < ord(c) < 127 else "?" for c in text)[:255]
    if _DOT_ATOM.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
