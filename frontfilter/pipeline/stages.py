"""The decision pipeline: one method per SMTP stage, each returning the `Reply` to send.

Order at each stage: bounds and protocol facts first (cheap, fixed), then relay policy (with
domain-bound relaying: policy.may_send_as, may_relay_out_as), then the reputation facts that
stage's rules read (DNS lists, SPF, greylisting: reputation.checks, each under its deadline),
then the administrator's rules for that stage, then (RCPT, DATA) the backend. Every refusal is logged
with its reason; every accepted or refused message at end of DATA gets exactly one `message`
log line, keyed by the queue id the client saw.

Fail closed, in time (STYLE habit 5): inspection and rules run in a worker thread under
`inspection.timeout`; a timeout answers `451 4.3.0`, an exception `451 4.3.0` — never a 250.
The walk gets its own deadline a little earlier, checked between parts, archive members and
blocks, so a slow message stops its own thread rather than hold it past the timeout.
Before them, with `[antivirus]`, the raw message is scanned by clamd on the event loop (async,
bounded by `antivirus.timeout` and `antivirus.concurrency`); a failed scan is `on_error`'s.
In sync mode 250 is sent only after the backend accepted the message (see delivery.backend); in
queue mode only after it is durably in the spool (delivery.spool), and a full spool answers
`452 4.3.1` — at MAIL when it can tell already, else at end of DATA.

Who owns what: the SMTP edge (`smtp/`) owns the wire and per-connection bounds; this module owns
decisions; `delivery/` owns talking to the backend; `observe` owns logs and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from frontfilter import observe, policy, reply
from frontfilter.antivirus.clamd import ClamdClient
from frontfilter.antivirus.result import ScanResult
from frontfilter.config import Config, ConfigError, OnError, QuarantineOutcome
from frontfilter.content import authresults
from frontfilter.content.limits import InspectionLimits
from frontfilter.content import sniff
from frontfilter.content.scratch import Scratch
from frontfilter.content.sniff import KnownTypes, NotKnown, TypeCache
from frontfilter.delivery import safeio
from frontfilter.delivery.backend import BackendReply, BackendSession, Outcome
from frontfilter.delivery.quarantine import store as quarantine_store
from frontfilter.delivery.spool import Admission, Envelope, Reservation, Spool, Spooled
from frontfilter.delivery.verify import RecipientVerifier, Verdict as Verified
from frontfilter.delivery.xforward import ClientFacts
from frontfilter.model import EnvelopeFacts, Peer, SessionFacts, Stage, new_queue_id
from frontfilter.mapped import MappedText, MessageBytes
from frontfilter.pipeline.decision import Decision, decide
from frontfilter.pipeline.disposition import Disposition, queued, refusal
from frontfilter.pipeline.endofdata import Claim, Judged, decide_then_spool
from frontfilter.pipeline.sealing import Sealer
from frontfilter.policy.relay import Address
from frontfilter.policy.sendermap import SenderMap, SenderMapError, load_sender_map
from frontfilter.reply import Reply
from frontfilter.reputation.checks import NOT_CHECKED, Checks, ClientChecks, Found
from frontfilter.reputation.facts import CheckFacts
from frontfilter.rules.facts import Facts
from frontfilter.rules.engine import Rules
from frontfilter.rules.model import Action, Mode, Rule, Verdict

# Worker threads for inspection (and, in queue mode, the spool write: pipeline/endofdata.py). libmagic
# and big parses must not run on the event loop. Two per process: with more, the threads' Python
# work takes the GIL from the event loop and delivery falls behind (bench, 5 KB, one process,
# 6 interleaved runs each: 347 msgs/s delivered with 2 threads, 318 with 4); one process per
# core (server.workers) is how more cores are used.
INSPECTION_THREADS = 2
# Messages up to this size may be decided on the event loop (Pipeline._on_loop): a walk of 64 KiB
# of text takes well under a millisecond.
DECIDED_ON_LOOP_MAX = 64 * 1024
# The share of `inspection.timeout` the walk itself may use (its deadline): the rest is for the
# rules, the rewrite and the spool write that follow in the same thread.
WALK_SHARE_OF_TIMEOUT = 0.8

BACKEND_REFUSED_RECIPIENT = "Recipient address rejected by the next hop"
BACKEND_REFUSED_MESSAGE = "Message refused by the next hop"


@dataclass
class Transaction:
    queue_id: str
    sender: Address
    options: list[str]
    recipients: list[Address] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    refused_recipients: int = 0
    early: Action | None = None    # accept or discard taken by a rule before DATA
    carried: Verdict = field(default_factory=Verdict)   # headers and tags from earlier stages
    decision: Decision | None = None    # end of DATA: the content decision, once made
    found: Found = NOT_CHECKED          # end of DATA: DKIM, ARC and DMARC of the message as received


@dataclass
class SessionState:
    """Per connection: the facts the rules see and the backend conversation (sync mode)."""

    peer: Peer
    helo: str | None = None
    tls: bool = False
    auth_user: str | None = None
    txn: Transaction | None = None
    backend: BackendSession | None = None
    early: Action | None = None    # accept or discard taken by a rule at connect or HELO
    carried: Verdict = field(default_factory=Verdict)   # headers and tags from connect/HELO
    checks: ClientChecks = field(default_factory=ClientChecks)   # DNS lists, SPF, greylisting

    def facts(self) -> SessionFacts:
        return SessionFacts(peer=self.peer, helo=self.helo, tls=self.tls, auth_user=self.auth_user)

    def envelope(self) -> EnvelopeFacts:
        if self.txn is None:
            return EnvelopeFacts()
        return EnvelopeFacts(sender=self.txn.sender.text,
                             recipients=tuple(r.normalised for r in self.txn.recipients))


class RuleBook:
    """The active rule set. Swapped whole by a reload; a transaction reads it once per stage."""

    def __init__(self, rules: Rules | None):
        self.current = rules


class Pipeline:
    def __init__(self, config: Config, rulebook: RuleBook, spool: Spool | None = None,
                 verifier: RecipientVerifier | None = None):
        self.config = config
        self.rulebook = rulebook
        # Queue mode (store and forward) when a spool is given: 250 once the message is on
        # disk, a delivery worker takes it on. Without one: sync mode (backend mirrored).
        self.spool = spool
        self.verifier = verifier
        self.limits = InspectionLimits(**{
            f.name: getattr(config.inspection, f.name)
            for f in dataclasses.fields(InspectionLimits)})
        self.types = TypeCache(config.inspection.type_cache)
        # Past the size where DATA goes to a file, so does a decoded archive being read.
        spill = config.limits.data_spill_size
        self.scratch = Scratch(spill, config.spool.dir) if spill else None
        self._executor = ThreadPoolExecutor(INSPECTION_THREADS, thread_name_prefix="inspect")
        self.antivirus = ClamdClient.from_config(config.antivirus) if config.antivirus else None
        self.on_scan_error = config.antivirus.on_error if config.antivirus else OnError.TEMPFAIL
        self.checks = Checks(config)          # reputation: DNS lists, SPF, greylisting
        self.senders: SenderMap | None = None  # relay.sender_map, see load_sender_map
        self.authserv_id = config.server.authserv_id or config.server.hostname    # RFC 8601
        self.sealer: Sealer | None = None     # [arc]: set by the service once the key loads

    async def prepare(self) -> None:
        """At start, in the process that serves: what the first message would otherwise wait
        for (libmagic's database, content/sniff.py)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, sniff.prepare)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.checks.close()

    async def load_sender_map(self, reload: bool = False) -> None:
        """relay.sender_map: at start a map that does not load is a ConfigError (the relay does
        not start with AUTH users unbound); on reload it is logged and the old map stays."""
        path = self.config.relay.sender_map
        if path is None:
            return
        try:
            self.senders = await asyncio.to_thread(load_sender_map, path)
        except SenderMapError as error:
            if not reload:
                raise ConfigError([f"{self.config.path}: relay.sender_map: {p}" for p in error.problems]) from None
            observe.credentials_refused("sender_map", error.problems, reload=True)
            return
        observe.credentials_loaded("sender_map", reload, file=str(path), logins=len(self.senders.addresses))

    # ---- stages ---------------------------------------------------------------------------

    async def connect(self, peer: Peer, tls: bool = False) -> tuple[SessionState, Reply | None]:
        """`peer` is the real client (after PROXY); `tls` is true on implicit-TLS listeners."""
        state = SessionState(peer=peer, tls=tls)
        self.checks.open(state.checks, peer)
        refusal = await self._rules(Stage.CONNECT, state)
        return state, refusal

    async def helo(self, state: SessionState, name: str) -> Reply | None:
        state.helo = name
        return await self._rules(Stage.HELO, state)

    async def mail(self, state: SessionState, address: str, options: Sequence[str],
                   max_size: int | None = None) -> Reply:
        smtputf8 = any(o.upper() == "SMTPUTF8" for o in options)
        declared = next((o.split("=", 1)[1] for o in options if o.upper().startswith("SIZE=")), "")
        if declared.isdigit() and max_size is not None and int(declared) > max_size:
            # RFC 1870 §6: refuse at MAIL what could never be accepted at DATA.
            self._refused(state, Stage.MAIL, reply.MESSAGE_TOO_BIG, f"declared SIZE {declared}", "size")
            return reply.MESSAGE_TOO_BIG
        parsed = policy.parse_sender(address, smtputf8)
        if isinstance(parsed, Reply):
            self._refused(state, Stage.MAIL, parsed, f"sender {address!r} malformed", "address")
            return parsed
        denied = policy.may_send_as(parsed, state.facts(), self.senders, policy.own_domains(self.config))
        if denied is not None:
            observe.sender_refused("login_mismatch")
            owned = "in relay.sender_map" if self.senders is not None else "the login's own address (no relay.sender_map)"
            self._refused(state, Stage.MAIL, denied,
                          f"sender {parsed.text!r} not {owned} for login {state.auth_user!r}", "sender_binding")
            return denied
        if self.spool is not None:
            # RFC 1870 §6.1 / RFC 3463 4.3.1: say "no room" before the client sends the body.
            room = self.spool.admit(int(declared) if declared.isdigit() else 0)
            if room is not Admission.OK:
                answer = reply.SPOOL_FULL if room is Admission.FULL else reply.INTERNAL_ERROR
                self._refused(state, Stage.MAIL, answer, f"spool {room.value}", "spool")
                return answer
        if self.spool is not None and self.spool.in_flow is not None:
            await self.spool.in_flow()      # the backends behind: wait a little (Worker.in_flow)
        await self.reset(state)
        state.txn = Transaction(queue_id=new_queue_id(), sender=parsed, options=list(options),
                                carried=state.carried)
        refusal = await self._rules(Stage.MAIL, state)
        if refusal is not None:
            state.txn = None
            return refusal
        return reply.SENDER_OK

    async def rcpt(self, state: SessionState, address: str) -> Reply:
        txn = state.txn
        if txn is None:
            return reply.BAD_SEQUENCE.with_text("Need MAIL command")
        if len(txn.recipients) >= self.config.server.max_recipients:
            self._refused(state, Stage.RCPT, reply.TOO_MANY_RECIPIENTS, "max_recipients", "recipient_limit")
            return reply.TOO_MANY_RECIPIENTS
        smtputf8 = any(o.upper() == "SMTPUTF8" for o in txn.options)
        parsed = policy.parse_recipient(address, smtputf8)
        if isinstance(parsed, Reply):
            self._refused(state, Stage.RCPT, parsed, f"recipient {address!r} refused by address policy", "address")
            return parsed
        denied = policy.may_relay(parsed, state.facts(), self.config)
        if denied is not None:
            self._refused(state, Stage.RCPT, denied, f"relay denied for {address!r}", "relay_denied")
            return denied
        denied = policy.may_relay_out_as(txn.sender, parsed, self.config)
        if denied is not None:
            observe.sender_refused("not_own_domain")
            self._refused(state, Stage.RCPT, denied,
                          f"relaying to {address!r} as {txn.sender.text!r}: not in relay.sender_domains", "sender_binding")
            return denied
        refusal = await self._rules(Stage.RCPT, state, recipient=parsed.normalised)
        if refusal is not None:
            return refusal
        if self.spool is None:
            answer = await self._backend_recipient(state, parsed)
        else:
            answer = await self._verify_recipient(state, parsed)
        if answer is not None:
            return answer
        txn.recipients.append(parsed)
        return reply.RECIPIENT_OK

    async def data(self, state: SessionState, raw: MessageBytes) -> Reply:
        txn = state.txn
        if txn is None or not txn.recipients:
            return reply.BAD_SEQUENCE.with_text("Need RCPT command")
        started = time.monotonic()
        try:
            answer = await self._data(state, txn, raw, started)
        except Exception:
            observe.internal_error("end of data", queue_id=txn.queue_id)
            await self._backend_reset(state)
            answer = reply.INTERNAL_ERROR
        finally:
            state.txn = None
        observe.stage_decided("data", time.monotonic() - started)
        if not answer.is_success:
            # The client (or its postmaster) quotes this id; it finds the one log line.
            answer = answer.with_text(f"{answer.text} [{txn.queue_id}]")
        return answer

    async def reset(self, state: SessionState) -> None:
        state.txn = None
        await self._backend_reset(state)

    async def close(self, state: SessionState) -> None:
        state.txn = None
        self.checks.end(state.checks)
        if state.backend is not None:
            backend, state.backend = state.backend, None
            await backend.close()

    # ---- end of DATA ----------------------------------------------------------------------

    async def _data(self, state: SessionState, txn: Transaction, raw: MessageBytes, started: float) -> Reply:
        if self._bypassed(state) is None:   # SPF for Received-SPF and data rules (reputation)
            await self.checks.gather(Stage.DATA, self.rulebook.current, state.checks, peer=state.peer,
                                     helo=state.helo, auth_user=state.auth_user, sender=txn.sender.text)
            # Before any change (a stripped part breaks the body hash), for the rules and the
            # Authentication-Results field.
            txn.found = await self.checks.authenticate(raw, state.checks, queue_id=txn.queue_id,
                                                       sender=txn.sender.text, helo=state.helo,
                                                       auth_user=state.auth_user)
        facts = Facts(stage=Stage.DATA, session=state.facts(), envelope=state.envelope(),
                      checks=self._check_facts(state))
        rules: Rules | None = self.rulebook.current
        assert rules is not None          # no session is admitted before a rule set loads
        trace = ([("Authentication-Results", self._authentication_results(state, txn))]
                 + self.checks.trace(state.checks, state.peer, txn.sender.text, state.helo)
                 + [("Received", self._received(state, txn))])
        log: dict[str, Any] = dict(client=str(state.peer), helo=state.helo, sender=txn.sender.text,
                   recipients=[r.normalised for r in txn.recipients], tls=state.tls,
                   auth_user=state.auth_user, **txn.found.log_fields())
        early = self._bypassed(state)
        if early is Action.DISCARD:
            await self._backend_reset(state)
            answer = queued(txn.queue_id)
            self._decided(txn, Disposition.DISCARDED, len(raw), answer, started, log, decided_by="early discard")
            return answer
        if early is Action.ACCEPT:
            rules = _NO_RULES
        # Scanned on the loop (it is I/O), before the rules that read it; not when an earlier
        # accept lifted the data rules, since nothing would read the verdict.
        scan = await self._scan(raw, txn.queue_id) if rules is not _NO_RULES else None
        if scan is not None:
            log["antivirus"] = scan.log_fields() | (
                {"on_error": self.on_scan_error.value} if scan.failed else {})
        # The walk stops itself a little before the pipeline stops waiting for it, so the
        # thread is free again and the rules answer the timeout (inspection-time), not a
        # thread nobody waits for.
        deadline = time.monotonic() + self.config.inspection.timeout * WALK_SHARE_OF_TIMEOUT
        judge = functools.partial(decide, raw, facts, rules, self.limits, trace, self.config.rules.soft_reject,
                                  txn.carried, antivirus=scan, on_error=self.on_scan_error,
                                  types=self.types, deadline=deadline, authserv_id=self.authserv_id,
                                  sealer=self.sealer, scratch=self.scratch)
        judged = await self._judge(state, txn, judge, len(raw), self._on_loop(judge, raw))
        observe.type_cache_lookups(*self.types.take_counts())
        if judged is None:
            await self._backend_reset(state)
            observe.inspection_limit("time")
            self._decided(txn, Disposition.TEMPFAILED, len(raw), reply.INSPECTION_TIMEOUT, started, log,
                          reason="inspection timeout")
            return reply.INSPECTION_TIMEOUT
        decision, spooled = judged
        txn.decision = decision
        verdict = decision.verdict
        self._count_verdict(decision)
        fired = [m.rule for m in verdict.matches]
        log.update(rules=fired, monitor=[m.rule for m in verdict.matches if m.mode is Mode.MONITOR],
                   stripped=_stripped_for_log(decision),
                   limits=sorted(limit.value for limit in decision.view.limits_exceeded),
                   ambiguities=sorted(a.value for a in decision.view.ambiguities),
                   uninspectable=sorted(r.value for r in decision.view.uninspectable),
                   inspect_ms=round((time.monotonic() - started) * 1000, 2))
        if decision.arc is not None:      # [arc]: "sealed i=N", or why not (pipeline/sealing.py)
            log["arc_seal"] = decision.arc.describe()

        disposition = Disposition.of_action(verdict.action)
        if disposition in (Disposition.REJECTED, Disposition.TEMPFAILED):
            await self._backend_reset(state)
            disposition, answer = refusal(verdict)
            self._decided(txn, disposition, len(raw), answer, started, log, decided_by=verdict.rule)
            return answer
        if disposition is Disposition.DISCARDED:
            await self._backend_reset(state)
            answer = queued(txn.queue_id)
            self._decided(txn, disposition, len(raw), answer, started, log, decided_by=verdict.rule)
            return answer
        if disposition is Disposition.QUARANTINED:
            await self._backend_reset(state)
            answer, failure = await self._quarantine(state, txn, raw, verdict)
            if failure is not None:     # no copy kept: the client keeps the message and retries
                self._decided(txn, Disposition.TEMPFAILED, len(raw), answer, started, log,
                              decided_by=verdict.rule, delivery=f"quarantine write failed: {failure}")
                return answer
            self._decided(txn, disposition, len(raw), answer, started, log, decided_by=verdict.rule)
            return answer

        forward_started = time.monotonic()
        if self.spool is not None:
            answer, delivery = self._spooled(txn, spooled)
        else:
            answer, delivery = await self._forward(state, txn, decision.head, decision.message)
        log.update(delivery=delivery, forwarded_size=len(decision.head) + len(decision.message),
                   forward_ms=round((time.monotonic() - forward_started) * 1000, 2))
        # Forwarded, or refused by the backend or the spool: the client's reply says which.
        self._decided(txn, Disposition.of_reply(answer), len(raw), answer, started, log, decided_by=verdict.rule)
        return answer

    async def _scan(self, raw: MessageBytes, queue_id: str) -> ScanResult | None:
        """clamd's verdict on the raw message, counted; None without [antivirus]."""
        if self.antivirus is None:
            return None
        result = await self.antivirus.scan(raw)
        observe.antivirus_scanned(result.status.value, result.seconds, queue_id, result.detail)
        return result

    def _on_loop(self, judge: Callable[..., Decision], raw: MessageBytes) -> Callable[[], Decision | None] | None:
        """The decision made on the event loop, for a small message whose parts are all cheap
        leaves of known types (sniff.KnownTypes); None from it when it met anything else.

        Why: with the GIL, an inspection thread runs no faster than the loop, and handing each
        message over to it and back cost 20 futex calls and 10 context switches (bench, 5 KB
        load, one worker: 65 futex calls and 32 switches per message with the thread, 45 and 22
        without it, and 15 % more messages a second). The thread stays for what may take long
        or block: libmagic, archives and documents, big messages, ARC sealing."""
        if (len(raw) > DECIDED_ON_LOOP_MAX or isinstance(raw, MappedText) or self.sealer is not None
                or self.config.inspection.type_cache <= 0):
            return None

        def on_loop() -> Decision | None:
            known = KnownTypes(self.types)
            try:
                decision = judge(types=known)
            except NotKnown:
                return None
            known.commit()
            return decision
        return on_loop

    async def _judge(self, state: SessionState, txn: Transaction, judge: Callable[[], Decision],
                     size: int, on_loop: Callable[[], Decision | None] | None = None
                     ) -> tuple[Decision, Spooled | Admission | None] | None:
        """The decision, on the loop (`on_loop`) or in an inspection thread, under
        `inspection.timeout` (None: too late). In queue mode the message to be forwarded is
        then spooled (endofdata): the second item is what the write did, or why there was no
        room for it."""
        loop = asyncio.get_running_loop()
        timeout = self.config.inspection.timeout
        if self.spool is None:
            decided = on_loop() if on_loop is not None else None
            if decided is not None:
                return decided, None
            try:
                return await asyncio.wait_for(loop.run_in_executor(self._executor, judge), timeout), None
            except TimeoutError:
                return None
        reservation = self.spool.reserve(size)
        claim = Claim()
        # A task of its own: it settles the reservation (a written message reaches the worker)
        # whatever becomes of this session's task.
        job = asyncio.ensure_future(decide_then_spool(judge, self._executor, claim, self.spool,
                                                      reservation, self._envelope(state, txn), on_loop))
        job.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait({job}, timeout=timeout)
        except asyncio.CancelledError:
            claim.abandon()       # the client is gone: no 250 was sent, nothing to write
            raise
        if not done and claim.abandon():
            return None
        outcome: Judged = await asyncio.shield(job)     # past the deadline only if writing
        return outcome.decision, outcome.spooled if isinstance(reservation, Reservation) else reservation

    def _envelope(self, state: SessionState, txn: Transaction) -> Envelope:
        """The spool's envelope; its size and arrival time are filled in when it is written."""
        return Envelope(
            id=txn.queue_id, sender=txn.sender.text,
            recipients=tuple(dict.fromkeys(r.normalised for r in txn.recipients)),
            arrived=0.0, size=0,
            options=tuple(o for o in txn.options if o.split("=", 1)[0].upper() in ("BODY", "SMTPUTF8")),
            client=str(state.peer), helo=state.helo or "", login=state.auth_user or "")

    async def _forward(self, state: SessionState, txn: Transaction, head: bytes, message: MessageBytes
                       ) -> tuple[Reply, str]:
        """Sync mode: the backend's own answer to the mirrored transaction decides."""
        backend = state.backend
        if backend is None or not backend.connected:
            return reply.BACKEND_UNAVAILABLE, "backend connection lost"
        result = await backend.send(message, head)
        if result.ok:
            return queued(txn.queue_id), result.describe()
        return self._backend_failure(result, BACKEND_REFUSED_MESSAGE), result.describe()

    @staticmethod
    def _spooled(txn: Transaction, spooled: Spooled | Admission | None) -> tuple[Reply, str]:
        """Queue mode: 250 only once the message is durably in the spool (STYLE habit 6)."""
        if isinstance(spooled, Spooled) and spooled.result is Admission.OK:
            return queued(txn.queue_id), f"spooled in {round(spooled.seconds * 1000, 2)} ms"
        if isinstance(spooled, Admission) or spooled is None:     # refused before the write
            room = spooled if isinstance(spooled, Admission) else Admission.FAILED
            answer = reply.SPOOL_FULL if room is Admission.FULL else reply.INTERNAL_ERROR
            return answer, f"spool {room.value}: spool limits"
        if spooled.result is Admission.FULL:
            return reply.SPOOL_FULL, f"spool full: {spooled.reason}"
        return reply.INTERNAL_ERROR, f"spool write failed: {spooled.reason}"

    async def _quarantine(self, state: SessionState, txn: Transaction, raw: MessageBytes,
                          verdict: Verdict) -> tuple[Reply, str | None]:
        """Hold the message and answer as `quarantine.then` says; the reply and, when no copy
        could be kept, why (the client is then told to retry)."""
        if self.config.quarantine.then is QuarantineOutcome.ACCEPT:
            answer = queued(txn.queue_id)
        else:
            answer = verdict.reply or reply.REJECTED
        failure = await self._hold(state, txn, raw, verdict, answer)
        return failure if failure is not None else (answer, None)

    async def _hold(self, state: SessionState, txn: Transaction, raw: MessageBytes, verdict: Verdict,
                    answer: Reply) -> tuple[Reply, str] | None:
        """The copy (delivery/quarantine/store.py: durably, readable by the daemon's user only,
        with its envelope, the rules' reasons and the part tree); None once it is kept, else
        the reply to send instead and why."""
        held = quarantine_store.held(
            self._envelope(state, txn), arrived=time.time(), auth_user=state.auth_user, tls=state.tls,
            rule=verdict.rule, reasons=verdict.explain(), reply=answer.wire, size=len(raw),
            parts=txn.decision.view.parts if txn.decision is not None else ())
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, quarantine_store.write, self.config.quarantine.dir, held, raw)
        except OSError as error:
            if safeio.is_disk_full(error):
                return reply.SPOOL_FULL, "disk full"
            return reply.INTERNAL_ERROR, f"{type(error).__name__}: {error.strerror or error}"
        except quarantine_store.QuarantineFormatError as error:     # an envelope too large to record
            return reply.INTERNAL_ERROR, str(error)
        return None

    def _count_verdict(self, decision: Decision) -> None:
        for match in decision.verdict.matches:
            observe.rule_matched(match.rule, match.action.value, match.mode.value)
        for limit in decision.view.limits_exceeded:
            observe.inspection_limit(limit.value)
        parts = {p.mime_path: p for p in decision.view.parts if not p.in_archive}
        for order in decision.stripped:
            part = parts.get(order.mime_path)
            observe.attachment_stripped(part.detected_type if part else "other")
        if decision.arc is not None:
            observe.arc_sealed(decision.arc.sealed)

    def _decided(self, txn: Transaction, disposition: Disposition, size: int, answer: Reply, started: float,
                 log: dict, **extra: object) -> None:
        """The one `message` log line and the message's metrics, for every end of DATA."""
        observe.message_decided(queue_id=txn.queue_id, verdict=disposition.value, size=size,
                                reply=answer.wire, ms=round((time.monotonic() - started) * 1000, 2),
                                **log, **extra)

    def _authentication_results(self, state: SessionState, txn: Transaction) -> str:
        """RFC 8601, on top: what the relay found about this message's client and sender."""
        found = self.checks.results(state.checks, txn.sender.text, state.helo, txn.found)
        if state.auth_user is not None:
            found.append(("auth", "pass", {"smtp.auth": state.auth_user}))
        return authresults.field_value(self.authserv_id, found)

    def _received(self, state: SessionState, txn: Transaction) -> str:
        # RFC 5321 §4.4; "with" keyword per RFC 3848 (ESMTPS, ESMTPA, ESMTPSA).
        protocol = "ESMTP" + ("S" if state.tls else "") + ("A" if state.auth_user else "")
        helo = _printable(state.helo or "unknown")
        recipient = f" for <{txn.recipients[0].normalised}>" if len(txn.recipients) == 1 else ""
        # One line; content.rewrite folds it.
        return (f"from {helo} ([{state.peer.ip}]) by {self.config.server.hostname} (frontfilter) "
                f"with {protocol} id {txn.queue_id}{recipient}; {_date_line(int(time.time()))}")

    # ---- rules at the early stages ----------------------------------------------------------

    async def _rules(self, stage: Stage, state: SessionState, recipient: str | None = None) -> Reply | None:
        rules = self.rulebook.current
        assert rules is not None          # no session is admitted before a rule set loads
        if self._bypassed(state) is not None:
            return None
        gathered = await self._gather(stage, state, rules, recipient)
        if gathered is not None or stage not in rules.stages:
            return gathered
        started = time.monotonic()
        facts = Facts(stage=stage, session=state.facts(), envelope=state.envelope(), recipient=recipient,
                      checks=self._check_facts(state, recipient))
        verdict = rules.evaluate(facts, soft_reject=self.config.rules.soft_reject)
        observe.stage_decided(stage.value, time.monotonic() - started)
        for match in verdict.matches:
            observe.rule_matched(match.rule, match.action.value, match.mode.value)
        monitored = [m.rule for m in verdict.matches if m.mode is Mode.MONITOR]
        if monitored:   # a rule on trial before DATA: its would-be decision goes to the log too
            observe.rules_monitored(str(state.peer), stage.value, monitored,
                                    state.txn.queue_id if state.txn else None)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL, Action.QUARANTINE):
            _, answer = refusal(verdict)        # before DATA there is nothing to keep: refused
            self._refused(state, stage, answer, f"rule {verdict.rule}", "rule",
                          rules=[m.rule for m in verdict.matches])
            return answer
        if verdict.headers or verdict.tags:
            holder = state.txn if state.txn is not None else state
            holder.carried = dataclasses.replace(
                holder.carried, headers=holder.carried.headers + verdict.headers,
                tags=holder.carried.tags + verdict.tags)
        if verdict.action in (Action.ACCEPT, Action.DISCARD) and stage is not Stage.RCPT:
            # Accept or discard before DATA: later rules do not run for this message (or, at
            # connect and HELO, this session). Not at RCPT: one recipient must not be able to
            # lift content filtering for all the others in the same message.
            if state.txn is not None:
                state.txn.early = verdict.action
            else:
                state.early = verdict.action
        return None

    async def _gather(self, stage: Stage, state: SessionState, rules: object,
                      recipient: str | None = None) -> Reply | None:
        """The reputation facts (DNS lists, SPF, greylisting) that this stage's rules read,
        each check under its own deadline. An error (say the greylist database is unwritable)
        answers 451 4.3.0: never a pass."""
        txn = state.txn
        try:
            await self.checks.gather(stage, rules, state.checks, peer=state.peer, helo=state.helo,
                                     auth_user=state.auth_user, sender=txn.sender.text if txn else None,
                                     recipient=recipient)
        except Exception:
            observe.internal_error(f"reputation checks at {stage.value}",
                                   queue_id=txn.queue_id if txn else None)
            self._refused(state, stage, reply.INTERNAL_ERROR, "reputation check failed", "check_failed")
            return reply.INTERNAL_ERROR
        return None

    def _check_facts(self, state: SessionState, recipient: str | None = None) -> CheckFacts:
        txn = state.txn
        return self.checks.facts(state.checks, sender=txn.sender.text if txn else None, helo=state.helo,
                                 recipient=recipient,
                                 recipients=tuple(r.normalised for r in txn.recipients) if txn else (),
                                 found=txn.found if txn else NOT_CHECKED)

    @staticmethod
    def _bypassed(state: SessionState) -> Action | None:
        return state.early or (state.txn.early if state.txn is not None else None)

    def _refused(self, state: SessionState, stage: Stage, answer: Reply, reason: str, kind: str,
                 rules: Sequence[str] = ()) -> None:
        queue_id = state.txn.queue_id if state.txn else None
        observe.command_refused(str(state.peer), stage.value, answer, reason, kind, queue_id, rules)

    # ---- the backend (sync mode: mirrored transaction) ----------------------------------------

    async def _verify_recipient(self, state: SessionState, recipient: Address) -> Reply | None:
        """Queue mode with backend.verify_recipients: a cached RCPT probe of the backend."""
        if self.verifier is None:
            return None
        checked = await self.verifier.verify(recipient.normalised)
        if checked.verdict is Verified.VALID:
            return None
        if checked.verdict is Verified.INVALID and checked.reply is not None:
            answer = self._backend_failure(checked.reply, BACKEND_REFUSED_RECIPIENT)
        else:
            answer = reply.BACKEND_UNAVAILABLE
        detail = checked.reply.describe() if checked.reply is not None else "no backend"
        self._refused(state, Stage.RCPT, answer,
                      f"recipient verification{' (cached)' if checked.cached else ''}: {detail}",
                      "unknown_recipient" if checked.verdict is Verified.INVALID else "backend")
        return answer

    async def _backend_recipient(self, state: SessionState, recipient: Address) -> Reply | None:
        txn = state.txn
        assert txn is not None
        if state.backend is None:
            state.backend = BackendSession(self.config.backend, self.config.server.hostname)
        backend = state.backend
        if not txn.recipients:   # the first recipient opens the backend transaction
            opened = await backend.begin(txn.sender.text, txn.options, ClientFacts(
                str(state.peer.ip), state.peer.port, state.helo, login=state.auth_user))
            if not opened.ok:
                answer = self._backend_failure(opened, BACKEND_REFUSED_RECIPIENT)
                self._refused(state, Stage.RCPT, answer, f"backend MAIL: {opened.describe()}", "backend")
                return answer
        result = await backend.add_recipient(recipient.normalised)
        if result.ok:
            return None
        txn.refused_recipients += 1
        answer = self._backend_failure(result, BACKEND_REFUSED_RECIPIENT)
        self._refused(state, Stage.RCPT, answer, f"backend RCPT: {result.describe()}",
                      "unknown_recipient" if result.code >= 500 else "backend")
        return answer

    async def _backend_reset(self, state: SessionState) -> None:
        if state.backend is not None:
            await state.backend.reset()

    @staticmethod
    def _backend_failure(result: BackendReply, text: str) -> Reply:
        """The backend's verdict in our words: its class and enhanced code, never its host."""
        if result.outcome is Outcome.TRANSIENT:
            # 4.4.x is the way there (connection, TLS, timeout): the next hop is unavailable,
            # it did not refuse anything.
            if result.code != 421 and result.enhanced and result.enhanced.startswith("4.") \
                    and not result.enhanced.startswith("4.4."):
                return Reply(result.code, result.enhanced, text)
            return reply.BACKEND_UNAVAILABLE
        code = result.code if 500 <= result.code < 600 else 554
        enhanced = result.enhanced if result.enhanced and result.enhanced.startswith("5.") else "5.0.0"
        return Reply(code, enhanced, text)


class _NoRules:
    """The rule set seen by a message that an earlier `accept` let through."""

    stages: frozenset[Stage] = frozenset()

    def evaluate(self, facts: Facts, *, soft_reject: bool = False) -> Verdict:
        return Verdict()

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[Rule]:
        return iter(())


_NO_RULES = _NoRules()


def _retrieve(job: asyncio.Future[Any]) -> None:
    """A job nobody may await any more (abandoned at its deadline): its error is not news."""
    if not job.cancelled():
        job.exception()


def _stripped_for_log(decision: Decision) -> list[dict[str, object]]:
    """Each stripped MIME part: where, by which rule, its detected type and file name."""
    parts = {p.mime_path: p for p in decision.view.parts if not p.in_archive}
    return [{"part": o.mime_path, "rule": o.rule,
             "type": parts[o.mime_path].detected_type if o.mime_path in parts else None,
             "filename": parts[o.mime_path].filename if o.mime_path in parts else None}
            for o in decision.stripped]


def _printable(text: str) -> str:
    return "".join(c if 32 < ord(c) < 127 and c not in "()[]" else "?" for c in text)[:255]


@functools.lru_cache(maxsize=1)
def _date_line(second: int) -> str:
    """RFC 5322 date of `second` in local time, as Received headers carry it; made once per
    second (the stdlib's formatting took 20 µs a message)."""
    return formatdate(second, localtime=True)
