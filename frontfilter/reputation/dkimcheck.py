"""DKIM signatures (RFC 6376) and the ARC chain (RFC 8617) of a message as it was received.

Checked before the relay changes anything (a stripped part breaks the body hash): the results
go into the relay's Authentication-Results field, the rule facts (`dkim.result`, `dkim.domain`,
`arc.result`) and DMARC's alignment (reputation.dmarc).

The verification is dkimpy's, the reference Python implementation (it also seals ARC for the
relay). The key lookups are ours: every key the signatures and ARC sets name is asked first,
all at once, through the relay's resolver (its servers, cache and deadlines) under
`dkim.timeout`; then dkimpy verifies in a worker thread, its DNS hook reading those answers. So
the thread never waits on the network, and a key that could not be looked up is told apart from
a signature that does not verify: `temperror`, retried by the sender, not `fail` (dkimpy alone
reports both as "does not verify").

Bounds: the first `dkim.max_signatures` DKIM signatures (top down) are verified, the rest
ignored (RFC 6376 §6.1 lets a verifier limit them); ARC sets beyond dkimpy's 50 make the chain
fail; keys shorter than `dkim.min_key_bits` are `permerror` (RFC 8301: at least 1024 bits).
Nothing here raises on a hostile message: a library error is `permerror` for that signature.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util

from frontfilter import observe
from frontfilter.config import DkimConfig
from frontfilter.reputation.facts import ArcResult, DkimResult, normalise_domain
from frontfilter.reputation.resolver import Outcome, Resolver
from frontfilter.mapped import MessageBytes, as_bytes, release_pages

SIGNATURE = b"dkim-signature"
ARC_FIELDS = (b"arc-seal", b"arc-message-signature")
_SIGNED = re.compile(rb"(?im)^(?:dkim-signature|arc-seal)[ \t]*:")
_ARC_SEAL = re.compile(rb"(?im)^arc-seal[ \t]*:")
_BODY_HASH = "body hash mismatch"


@dataclass(frozen=True)
class Signature:
    """One DKIM signature and what became of it."""

    domain: str                  # d=, normalised ("" when the signature has none)
    selector: str                # s=
    result: DkimResult
    detail: str = ""             # why, when not a pass
    prefix: str = ""             # the first characters of b=: which signature (RFC 6008 header.b)


@dataclass(frozen=True)
class Verified:
    signatures: tuple[Signature, ...] = ()
    arc: ArcResult = ArcResult.NONE  # the chain the message came with (none: no ARC set)
    arc_detail: str = ""
    key_lookup_failed: bool = False

    @property
    def result(self) -> DkimResult:
        """The message's result: a pass wins; then fail, temperror, permerror (RFC 8601 §2.7.1
        lets a verifier report one result per signature; rules and DMARC want the best)."""
        found = {s.result for s in self.signatures}
        for result in (DkimResult.PASS, DkimResult.FAIL, DkimResult.TEMPERROR, DkimResult.PERMERROR):
            if result in found:
                return result
        return DkimResult.NONE

    @property
    def passed_domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.domain for s in self.signatures if s.result is DkimResult.PASS and s.domain))


class DkimVerifier:
    def __init__(self, resolver: Resolver, config: DkimConfig):
        self.resolver = resolver
        self.config = config
        self._executor = ThreadPoolExecutor(config.concurrency, thread_name_prefix="dkim")

    async def verify(self, raw: MessageBytes, header: bytes, queue_id: str) -> Verified:
        """Every signature of `raw` (whose header block is `header`, facts.header_of) and its
        ARC chain checked, by `dkim.timeout` (the thread's work included)."""
        started = time.monotonic()
        if not _SIGNED.search(header):              # the common case: nothing signed, no parse
            observe.not_signed(ArcResult.NONE.value)
            return Verified()
        deadline = started + self.config.timeout
        try:
            fields = dkim.rfc822_parse(header + b"\r\n")[0]
        except dkim.DKIMException as error:
            return self._unreadable(str(error), header, started, queue_id)
        signatures = [value for name, value in fields if name.lower() == SIGNATURE][:self.config.max_signatures]
        arc_sets = [value for name, value in fields if name.lower() in ARC_FIELDS]
        arc_keys = frozenset(name for value in arc_sets if (name := _key_name(value)))
        names = arc_keys | {name for value in signatures if (name := _key_name(value))}
        answers = dict(zip(names, await asyncio.gather(*(self._key(name, deadline) for name in names))))
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, _verify_all, raw, len(signatures), arc_keys if arc_sets else None, answers,
            self.config.min_key_bits)
        try:
            verified = await asyncio.wait_for(work, max(0.001, deadline - time.monotonic()) + 1.0)
        except TimeoutError:
            verified = Verified(tuple(Signature("", "", DkimResult.TEMPERROR, "verification timed out")
                                      for _ in signatures), ArcResult.FAIL if arc_sets else ArcResult.NONE,
                                "verification timed out")
        return self._logged(verified, queue_id, started)

    @staticmethod
    def _logged(verified: Verified, queue_id: str, started: float) -> Verified:
        observe.dkim_verified(queue_id, verified.result.value, verified.passed_domains,
                              [f"{s.domain}/{s.selector}: {s.result.value} {s.detail}".strip()
                               for s in verified.signatures if s.result is not DkimResult.PASS],
                              verified.arc.value, verified.arc_detail, time.monotonic() - started)
        return verified

    def _unreadable(self, why: str, header: bytes, started: float, queue_id: str) -> Verified:
        """A header block dkimpy cannot read: no signature of it can verify."""
        chain = ArcResult.FAIL if _ARC_SEAL.search(header) else ArcResult.NONE
        return self._logged(Verified((Signature("", "", DkimResult.PERMERROR, why[:200]),), chain,
                                     why[:200]), queue_id, started)

    async def _key(self, name: str, deadline: float) -> _Key:
        lookup = await self.resolver.lookup(name, "TXT", deadline)
        if lookup.failed:
            return _Key(None, failed=True, detail=f"key lookup: {lookup.detail or lookup.outcome.value}")
        if lookup.outcome is not Outcome.ANSWER or not lookup.records:
            return _Key(None, detail="no key published")
        # One TXT record is the key (RFC 6376 §3.6.2.2: its strings are joined); as dkimpy's
        # own lookup does, the first is taken when a name has several.
        return _Key(b"".join(lookup.records[0].strings))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Key:
    record: bytes | None
    failed: bool = False
    detail: str = ""


def _tags(value: bytes) -> Mapping[bytes, bytes]:
    try:
        return dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return {}


def _key_name(value: bytes) -> str:
    """`selector._domainkey.domain` of a signature or ARC field, "" when it names none."""
    tags = _tags(value)
    selector, domain = tags.get(b"s", b""), tags.get(b"d", b"")
    if not selector or not domain:
        return ""
    try:
        return f"{selector.decode('ascii')}._domainkey.{domain.decode('ascii')}".lower()
    except UnicodeDecodeError:
        return ""


def _verify_all(raw: MessageBytes, count: int, arc_keys: frozenset[str] | None, answers: dict[str, _Key],
                min_key_bits: int) -> Verified:
    """In a worker thread: each signature, then the ARC chain (`arc_keys`: the keys its sets
    name; None: the message has none), with the keys looked up. dkimpy parses the message
    once: its chain is checked on the same parse."""
    def dnsfunc(name: Any, timeout: float = 0) -> bytes | None:
        key = answers.get(name.decode("ascii", "replace").rstrip(".").lower() if isinstance(name, bytes)
                          else str(name).rstrip(".").lower())
        if key is None or key.failed:
            raise dkim.DnsTimeoutError(key.detail if key else "key not looked up")
        return key.record

    try:
        # dkimpy parses bytes only: a big message kept in its spill file is read into memory
        # here, for as long as the check lasts, and its pages dropped from the mapping.
        signer = dkim.DKIM(as_bytes(raw), minkey=min_key_bits)
        release_pages(raw)
    except Exception as error:      # a message dkimpy cannot read: no signature of it verifies
        why = f"{type(error).__name__}: {error}"[:200]
        return Verified(tuple(Signature("", "", DkimResult.PERMERROR, why) for _ in range(count)),
                        ArcResult.NONE if arc_keys is None else ArcResult.FAIL, why)
    values = [value for name, value in signer.headers if name.lower() == SIGNATURE]
    signatures = tuple(_verify_one(signer, index, value, dnsfunc, answers) for index, value in enumerate(values[:count]))
    if arc_keys is None:
        return Verified(signatures, ArcResult.NONE, "", any(s.result is DkimResult.TEMPERROR for s in signatures))
    failed = [answers[name].detail for name in arc_keys if answers[name].failed]
    # RFC 8617 §5.2: a chain that cannot be validated fails; the log says it was the lookup.
    arc_result, arc_detail = (ArcResult.FAIL, failed[0]) if failed else _verify_arc(signer, dnsfunc, min_key_bits)
    return Verified(signatures, arc_result, arc_detail,
                    any(s.result is DkimResult.TEMPERROR for s in signatures) or bool(failed))


def _verify_one(signer: dkim.DKIM, index: int, value: bytes, dnsfunc: Any, answers: dict[str, _Key]) -> Signature:
    tags = _tags(value)
    domain = normalise_domain(tags.get(b"d", b"").decode("ascii", "replace"))
    selector = tags.get(b"s", b"").decode("ascii", "replace")
    prefix = re.sub(rb"\s+", b"", tags.get(b"b", b""))[:8].decode("ascii", "replace")
    key = answers.get(_key_name(value))
    if key is not None and key.failed:
        return Signature(domain, selector, DkimResult.TEMPERROR, key.detail, prefix)
    if key is not None and key.record is None:
        return Signature(domain, selector, DkimResult.PERMERROR, key.detail, prefix)
    try:
        verified = signer.verify(index, dnsfunc=dnsfunc)
    except dkim.ValidationError as error:
        # A body that is not the one signed is a failed signature; a missing tag or an expired
        # signature is one that cannot be evaluated (RFC 6376 §6.1.1).
        failed = _BODY_HASH in str(error)
        return Signature(domain, selector, DkimResult.FAIL if failed else DkimResult.PERMERROR,
                         _BODY_HASH if failed else str(error)[:200], prefix)
    except dkim.DKIMException as error:       # malformed, key unusable or too small
        return Signature(domain, selector, DkimResult.PERMERROR, str(error)[:200], prefix)
    except Exception as error:     # a message dkimpy did not foresee: never a pass
        return Signature(domain, selector, DkimResult.PERMERROR, f"{type(error).__name__}: {error}"[:200], prefix)
    if verified:
        return Signature(domain, selector, DkimResult.PASS, "", prefix)
    return Signature(domain, selector, DkimResult.FAIL, "signature does not verify", prefix)


def _verify_arc(parsed: dkim.DKIM, dnsfunc: Any, min_key_bits: int) -> tuple[ArcResult, str]:
    chain = dkim.ARC(None, minkey=min_key_bits)
    chain.headers, chain.body = parsed.headers, parsed.body      # what set_message would parse again
    try:
        status, _sets, reason = chain.verify(dnsfunc=dnsfunc)
    except Exception as error:     # dkimpy raises on some malformed sets: a failed chain
        return ArcResult.FAIL, f"{type(error).__name__}: {error}"[:200]
    if status == dkim.CV_Pass:
        return ArcResult.PASS, ""
    if status == dkim.CV_None:
        return ArcResult.NONE, ""
    return ArcResult.FAIL, str(reason)[:200]
