"""The delivery worker: takes spooled messages to the backends, retries, gives up, bounces.

How it runs: an in-memory index of the spool (id → next attempt), filled by a scan at start,
by every message the pipeline spools, and kept honest by a re-scan every `spool.scan_interval`
(changes made by `frontfilter queue` or by another process show up there: a state file whose
inode or mtime changed is re-read; a message gone from disk is dropped). Due messages are
attempted, at most `backend.concurrency` at once.

One attempt (`_attempt`): lock the message (flock on its `.msg`: a message is never attempted
twice at once, across processes too), send it to the pending recipients only, then record each
recipient's fate (the typed outcome alone decides, never the reply's text):
- delivered → done; permanent (5xx) → failed now; transient → retried later, with exponential
  backoff from `retry_min` to `retry_max`, ± `retry_jitter`, the last try at `max_lifetime`;
  past it, still-pending recipients fail as expired (4.4.7).
- Failed recipients get one DSN (RFC 3464, delivery.dsn) to the sender — not for the null
  sender — written to the spool *before* the new state, and delivered like any message.
- Nothing pending: removed if all were delivered, else moved to the dead-letter directory.

Crash semantics (docs/spool.md): the state is written after the backend answered. A crash in
between repeats the attempt: recipients delivered then are delivered again (the only
duplicates), a DSN written then may be sent twice. Nothing acknowledged is ever dropped.

Shutdown: no new attempts; attempts in flight get until the deadline, then their network part
is cancelled (the message stays spooled, its state unchanged).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from frontfilter import observe
from frontfilter.config import Config, SpoolConfig
from frontfilter.delivery import dsn, safeio
from frontfilter.delivery.backend import BackendReply, Outcome
from frontfilter.delivery.forward import Attempt, Forwarder
from frontfilter.delivery.xforward import ClientFacts
from frontfilter.delivery.spool import (
    NO_STATE, Admission, DeliveryState, Envelope, Message, Spool, StateStamp, Status, open_message,
    read_state_file, remove_delivered, scan, state_stamp)
from frontfilter.model import new_queue_id
from frontfilter.mapped import MappedText, MessageBytes
from frontfilter.policy.relay import own_domains
from frontfilter.reputation.facts import domain_of

BACKOFF_FACTOR = 2
# After the deadline, cancelled attempts get this long to put their message back.
CANCEL_GRACE_SECONDS = 5.0
# Keep "we removed this" marks this long so a scan that listed the file just before is ignored.
GONE_MEMORY_SECONDS = 60.0
# Messages just written by this process wait for a free delivery slot in memory, still locked
# (no reopening, no re-reading); past this many they are let go and taken from disk later.
READY_MAX = 256
# Delivered messages are removed in batches (one thread hop and one directory fsync each).
# A batch of fewer than REMOVAL_BATCH waits this long for others to join (under load nearly
# every batch held one): a hop and a journal commit cost more than the wait. The messages stay
# locked meanwhile, so nothing else can deliver them again; a crash in between means at most
# a second delivery, never a loss.
REMOVAL_GATHER = 0.005
# In-flow control (Worker.in_flow): new mail waits at MAIL while this many times
# `backend.concurrency` messages wait in line for their first attempt.
IN_FLOW_LINE = 8
# A message just written waits this long before its attempt may start (Worker._spooled), so
# that its client's 250 leaves first.
HAND_OVER_DELAY = 0.001
REMOVAL_BATCH = 8


def retry_delay(attempts: int, config: SpoolConfig, rand: float) -> float:
    """Seconds until the next try after `attempts` failed ones; `rand` uniform in [0, 1)."""
    exponent = min(max(attempts - 1, 0), 64)
    base = min(config.retry_max, config.retry_min * BACKOFF_FACTOR ** exponent)
    return base * (1 + config.retry_jitter * (2 * rand - 1))


@dataclass
class Applied:
    """What one attempt changed: whose fate was settled, and what happens to the message next."""

    delivered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)        # permanent now
    expired: list[int] = field(default_factory=list)       # transient for too long
    deferred: list[int] = field(default_factory=list)


def apply_attempt(envelope: Envelope, state: DeliveryState, pending: Sequence[int],
                  results: Sequence[BackendReply], now: float, config: SpoolConfig,
                  rand: float) -> Applied:
    """Fold an attempt's per-recipient replies into the state (pure; mutates `state`)."""
    applied = Applied()
    for index, reply in zip(pending, results, strict=True):
        recipient = state.recipients[index]
        recipient.code, recipient.enhanced = reply.code, reply.enhanced or ""
        recipient.detail, recipient.at = reply.describe(), now
        if reply.outcome is Outcome.OK:
            recipient.status = Status.DELIVERED
            applied.delivered.append(index)
        elif reply.outcome is Outcome.PERMANENT:
            recipient.status = Status.FAILED
            applied.failed.append(index)
        else:
            applied.deferred.append(index)
    state.attempts += 1
    state.last_attempt = now
    expires = envelope.arrived + config.max_lifetime
    if applied.deferred and now >= expires:
        for index in applied.deferred:
            state.recipients[index].status = Status.FAILED
        applied.expired, applied.deferred = applied.deferred, []
    elif applied.deferred:
        # The last try falls on the expiry time itself, not a whole backoff after it.
        state.next_attempt = min(now + retry_delay(state.attempts, config, rand), expires)
    return applied


@dataclass
class _Entry:
    id: str
    next_attempt: float
    arrived: float
    size: int
    state: StateStamp            # the state file as last seen (spool.state_stamp)
    added: float                     # monotonic: tells entries newer than a scan's listing


class Worker:
    def __init__(self, config: Config, spool: Spool, forwarder: Forwarder,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random):
        self.config = config
        self.spool = spool
        self.forwarder = forwarder
        self._clock = clock
        self._rand = rand
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._active: dict[str, asyncio.Task[None]] = {}
        self._sending: dict[str, asyncio.Future[Attempt]] = {}
        self._gone: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._scan_problem: str | None = None     # why the last spool scan failed, if it did
        self._oldest_age = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: collections.deque[Message] = collections.deque()
        self._removals: list[tuple[Message, asyncio.Future[OSError | None]]] = []
        self._removing = False
        self._line_moved = asyncio.Event()     # set whenever a ready message starts its attempt
        self._wake_soon = False                # a wake-up of the dispatcher is due (_spooled)
        spool.on_spooled = self._spooled
        spool.in_flow = self.in_flow

    @property
    def concurrency(self) -> int:
        return self.config.backend.concurrency

    # ---- life --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.rescan()
        self._tasks = [asyncio.create_task(self._dispatch()), asyncio.create_task(self._rescan_loop())]

    async def stop(self, deadline: float) -> int:
        """Stop attempting; wait for attempts in flight until `deadline` (monotonic), then cut
        them. Returns how many were cut (their messages stay spooled, state unchanged)."""
        self._stopping = True
        self._wake.set()
        self._line_moved.set()          # nobody waits at MAIL for a worker that has stopped
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._ready:               # stays spooled: the next start delivers it
            self._ready.popleft().close()
        cut = 0
        active = list(self._active.values())
        if active:
            _, late = await asyncio.wait(active, timeout=max(0.0, deadline - time.monotonic()))
            if late:
                cut = len(late)
                for sending in list(self._sending.values()):
                    sending.cancel()
                await asyncio.wait(late, timeout=CANCEL_GRACE_SECONDS)
        await self.forwarder.close()
        return cut

    # ---- in-flow control ---------------------------------------------------------------

    def _line_too_long(self) -> bool:
        return len(self._ready) >= IN_FLOW_LINE * self.concurrency and not self._stopping

    async def in_flow(self) -> None:
        """At MAIL, in the session: while IN_FLOW_LINE times `backend.concurrency` messages
        wait for their first attempt, wait for that line to shorten, `backend.in_flow_delay` at
        most, then go on (never a refusal: a backend slower than the clients delays them).

        Postfix's in_flow_delay. Taking mail faster than the backends take it only grows the
        spool: past READY_MAX messages go to disk and are read back for their attempt, and the
        spool's files are created anew instead of reused (delivery/spares.py). On the bench's
        5 KB load (one worker) the spool grew by 200 messages a second without it; with it the
        line stays short and a message costs 15-20 % less CPU."""
        delay = self.config.backend.in_flow_delay
        if delay <= 0 or not self._line_too_long():
            return
        began = time.monotonic()
        ended = "delay"
        try:
            ended = await self._wait_for_the_line(began + delay)
        finally:       # counted too when the session ends meanwhile (the wait is cancelled)
            observe.in_flow_waited(time.monotonic() - began, ended)

    async def _wait_for_the_line(self, deadline: float) -> str:
        """"moved" once the line is short enough, "delay" at `deadline`."""
        while self._line_too_long():
            left = deadline - time.monotonic()
            if left <= 0:
                return "delay"
            self._line_moved.clear()
            try:
                await asyncio.wait_for(self._line_moved.wait(), left)
            except TimeoutError:
                # Looked at again, not taken as the end: uvloop's timers run on the loop's
                # cached millisecond clock and may fire a little before `deadline`.
                continue
        return "moved"

    # ---- the index ---------------------------------------------------------------------

    def _spooled(self, message: Message) -> None:
        """A message just written by this process (client mail or a DSN), handed over locked
        and in memory: attempted at once when a slot is free, else next in line; only when
        too many wait does it go back to disk, to be reopened when its turn comes."""
        envelope = message.envelope
        assert envelope is not None
        entry = _Entry(envelope.id, envelope.arrived, envelope.arrived, message.size, NO_STATE, time.monotonic())
        self._entries[entry.id] = entry
        observe.spool_state(len(self._entries), self._oldest_age)
        mapped = isinstance(message.body, MappedText)
        if self._stopping:
            message.close()
        elif mapped and len(self._active) < self.concurrency:
            # A big message in its spill file is attempted from it at once when it can be:
            # in line it would go back to disk, and be read back whole for its attempt.
            self._active[entry.id] = asyncio.create_task(self._attempt(entry, message))
        elif not mapped and len(self._ready) < READY_MAX:
            # In line even when a slot is free, and the dispatcher woken a moment later: this
            # runs as the write's future completes, before the session that waits for it has
            # answered its client; an attempt started here went first and put its round trip
            # to the backend before the client's 250 (strace, one idle message: 0.6 ms).
            # A big message in its spill file waits on disk instead: a mapping held is a
            # descriptor and the file's room on disk, neither counted for up to READY_MAX.
            self._ready.append(message)
            if not self._wake_soon:
                self._wake_soon = True
                asyncio.get_running_loop().call_later(HAND_OVER_DELAY, self._wake_dispatcher)
        else:
            message.close()
            self._reschedule(entry, entry.next_attempt)
            self._wake.set()

    def _wake_dispatcher(self) -> None:
        self._wake_soon = False
        self._wake.set()

    def _put(self, entry: _Entry) -> None:
        self._entries[entry.id] = entry
        heapq.heappush(self._heap, (entry.next_attempt, entry.id))

    def _drop(self, queue_id: str) -> None:
        if self._entries.pop(queue_id, None) is not None:
            self._gone[queue_id] = time.monotonic()
            self.spool.forget(queue_id)
            observe.spool_state(len(self._entries), self._oldest_age if self._entries else 0.0)

    def _reschedule(self, entry: _Entry, when: float, state: StateStamp | None = None) -> None:
        entry.next_attempt = when
        if state is not None:
            entry.state = state
        heapq.heappush(self._heap, (when, entry.id))

    async def rescan(self) -> None:
        """Re-read the spool directory and reconcile the index with it."""
        started = time.monotonic()
        known = {e.id: e.state for e in self._entries.values()}
        items, hints = await asyncio.to_thread(self._scan, known)
        for queue_id, item in items.items():
            if queue_id in self._active or self._gone.get(queue_id, 0.0) >= started:
                continue
            entry = self._entries.get(queue_id)
            hint = hints.get(queue_id)
            if entry is None:
                when = hint[0] if hint else item.mtime
                self._put(_Entry(queue_id, when, item.mtime, item.size, item.state, started))
            elif item.state != entry.state and hint is not None:
                self._reschedule(entry, hint[0], hint[1])        # changed by someone else
        for queue_id, entry in list(self._entries.items()):
            if queue_id not in items and queue_id not in self._active and entry.added < started:
                self._drop(queue_id)
                observe.spool_removed_elsewhere(queue_id)
        horizon = time.monotonic() - GONE_MEMORY_SECONDS
        self._gone = {k: v for k, v in self._gone.items() if v > horizon}
        self.spool.set_contents({e.id: e.size for e in self._entries.values()})
        oldest = min((e.arrived for e in self._entries.values()), default=None)
        self._oldest_age = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        observe.spool_state(len(self._entries), self._oldest_age)
        self._wake.set()

    def _scan(self, known: dict[str, StateStamp]) -> tuple[dict, dict[str, tuple[float, StateStamp]]]:
        layout = self.spool.layout
        # First, and whatever becomes of the scan: a delivered message's bytes do not linger.
        self.spool.spares.empty_idle()
        items = scan(layout)
        hints = {}
        for queue_id, item in items.items():
            if item.state != NO_STATE and known.get(queue_id) != item.state:
                hint = read_state_file(layout, queue_id)
                if hint is not None:
                    hints[queue_id] = hint
        try:
            self.spool.refresh_free_space()
        except OSError:
            pass
        return items, hints

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.spool.scan_interval)
            try:
                await self.rescan()
                await self.forwarder.prune()
            except OSError as error:
                # The spool directory itself is gone or unreadable: say so once, not at every
                # scan (/readyz reports it meanwhile), and say when it is back.
                problem = f"{error.filename or 'spool'}: {error.strerror or error}"
                if problem != self._scan_problem:
                    observe.spool_scan_failed(problem)
                    self._scan_problem = problem
                continue
            except Exception:
                observe.internal_error("spool scan")
                continue
            if self._scan_problem is not None:
                observe.spool_scan_recovered(self._scan_problem)
                self._scan_problem = None

    # ---- dispatch ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            now = self._clock()
            while self._ready and len(self._active) < self.concurrency:
                message = self._ready.popleft()
                entry = self._entries.get(message.id)
                if entry is None:            # cannot happen while we hold its lock; be safe
                    message.close()
                    continue
                self._active[message.id] = asyncio.create_task(self._attempt(entry, message))
                self._line_moved.set()
            while self._heap and len(self._active) < self.concurrency:
                when, queue_id = self._heap[0]
                entry = self._entries.get(queue_id)
                if entry is None or entry.next_attempt != when or queue_id in self._active:
                    heapq.heappop(self._heap)
                    continue
                if when > now:
                    break
                heapq.heappop(self._heap)
                self._active[queue_id] = asyncio.create_task(self._attempt(entry))
            delay = None
            if self._heap and len(self._active) < self.concurrency:
                delay = max(0.0, self._heap[0][0] - now)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    # ---- one attempt -------------------------------------------------------------------

    async def _attempt(self, entry: _Entry, message: Message | None = None) -> None:
        try:
            await self._attempt_locked(entry, message)
        except Exception:
            observe.internal_error("delivery attempt", queue_id=entry.id)
            self._reschedule(entry, self._clock() + self.config.spool.retry_min)
        finally:
            self._active.pop(entry.id, None)
            self._wake.set()

    async def _attempt_locked(self, entry: _Entry, handed: Message | None) -> None:
        if handed is not None:
            message = handed
        else:
            try:
                message = await asyncio.to_thread(open_message, self.spool.layout, entry.id)
            except safeio.Gone:
                self._drop(entry.id)
                return
            except safeio.Busy:          # another process (or `frontfilter queue`) has it now
                self._reschedule(entry, self._clock() + self.config.spool.scan_interval)
                return
        closed = False
        try:
            if message.problem is not None or message.envelope is None or message.state is None:
                await asyncio.to_thread(self._finish, message, None, True)
                closed = True
                observe.dead_letter(entry.id, f"unreadable spool file: {message.problem}")
                self._drop(entry.id)
                return
            envelope, state = message.envelope, message.state
            pending = state.pending()
            applied = Applied()
            attempt: Attempt | None = None
            if pending:
                attempt = await self._send(envelope, message.head, message.body, pending,
                                           every_backend=state.retry_requested)
                state.retry_requested = False
                if attempt is None:          # cut by shutdown: the message stays as it was
                    return
                applied = apply_attempt(envelope, state, pending, attempt.results, self._clock(),
                                        self.config.spool, self._rand())
            settled = applied.failed + applied.expired
            if settled and envelope.sender and not envelope.dsn_for:
                if not await self._bounce(envelope, message.head, message.body, state, applied):
                    for index in settled:    # the DSN could not be kept: try them again later
                        state.recipients[index].status = Status.PENDING
                    applied.deferred += settled
                    state.next_attempt = self._clock() + self.config.spool.retry_min
            dead = not state.pending() and any(r.status is Status.FAILED for r in state.recipients)
            if dead:
                state.dead_reason = "expired" if applied.expired else "refused"
            closed = True
            if dead or state.pending():
                stamp = await asyncio.to_thread(self._finish, message, state, dead)
            else:
                await self._remove(message)
                stamp = None
            self._report(envelope, state, applied, attempt, dead)
            if state.pending():
                self._reschedule(entry, state.next_attempt, stamp)
            else:
                self._drop(entry.id)
        finally:
            if not closed:
                message.close()

    async def _send(self, envelope: Envelope, head: bytes, body: MessageBytes, pending: list[int],
                    every_backend: bool = False) -> Attempt | None:
        recipients = [envelope.recipients[i] for i in pending]
        sending = asyncio.ensure_future(self.forwarder.deliver(
            envelope.sender, recipients, body, envelope.options, queue_id=envelope.id, head=head,
            every_backend=every_backend, client=ClientFacts.from_peer(envelope.client, envelope.helo, envelope.login)))
        self._sending[envelope.id] = sending
        try:
            return await sending
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if sending.cancelled() and not (current is not None and current.cancelling()):
                return None
            raise
        finally:
            self._sending.pop(envelope.id, None)

    async def _remove(self, message: Message) -> None:
        """Delivered: removed in a batch with the others delivered meanwhile (one directory
        fsync for all, spool.remove_delivered). Raises the removal's error, if any."""
        done: asyncio.Future[OSError | None] = asyncio.get_running_loop().create_future()
        self._removals.append((message, done))
        if not self._removing:
            self._removing = True
            asyncio.create_task(self._remove_batches())
        error = await done
        if error is not None:
            raise error

    async def _remove_batches(self) -> None:
        interrupted = False
        try:
            while self._removals:
                if len(self._removals) < REMOVAL_BATCH and not interrupted:
                    try:
                        await asyncio.sleep(REMOVAL_GATHER)
                    except asyncio.CancelledError:
                        interrupted = True    # these are delivered: remove them, then stop
                batch, self._removals = self._removals, []
                try:
                    errors = await asyncio.to_thread(remove_delivered, self.spool.layout, [m for m, _ in batch],
                                                   self.spool.spares)
                except asyncio.CancelledError:
                    # The thread finishes the batch on its own; its outcome is unknown here, so
                    # each message is tried again and found gone (or still there).
                    self._settle_removals(batch, [OSError("removal interrupted")] * len(batch))
                    raise
                except Exception as error:        # the thread did not run: let the locks go
                    for message, _ in batch:
                        message.close()
                    errors = [OSError(f"removal failed: {error}")] * len(batch)
                self._settle_removals(batch, errors)
            if interrupted:
                raise asyncio.CancelledError
        finally:
            self._removing = False

    @staticmethod
    def _settle_removals(batch: list[tuple[Message, asyncio.Future[OSError | None]]],
                         errors: Sequence[OSError | None]) -> None:
        for (_, done), error in zip(batch, errors, strict=True):
            if not done.done():
                done.set_result(error)

    @staticmethod
    def _finish(message: Message, state: DeliveryState | None, dead: bool) -> StateStamp | None:
        """Blocking: record the outcome on disk, then release the lock. Returns the new state
        file's stamp when the message stays queued."""
        try:
            if dead:
                if state is not None:
                    message.save(state)
                message.move_to_dead_letters()
                return None
            assert state is not None
            if not state.pending():
                message.remove()
                return None
            return state_stamp(message.save(state))
        finally:
            message.close()

    async def _bounce(self, envelope: Envelope, head: bytes, body: MessageBytes, state: DeliveryState,
                      applied: Applied) -> bool:
        failed = [state.recipients[i] for i in applied.failed + applied.expired]
        expired = {state.recipients[i].address for i in applied.expired}
        dsn_id = new_queue_id()
        now = self._clock()
        outside = domain_of(envelope.sender) not in own_domains(self.config)
        message, utf8 = dsn.build_dsn(dsn_id=dsn_id, hostname=self.config.server.hostname,
                                      envelope=envelope, message=body, added=head, failed=failed,
                                      expired=expired, now=now, outside=outside)
        options = (("SMTPUTF8",) if utf8 else ()) + (("BODY=8BITMIME",) if not message.isascii() else ())
        report = Envelope(id=dsn_id, sender="", recipients=(envelope.sender,), arrived=now,
                          size=len(message), options=options, dsn_for=envelope.id)
        spooled = await self.spool.submit(report, message, force=True)
        if spooled.result is not Admission.OK:
            observe.warning("dsn_not_spooled", queue_id=envelope.id, reason=spooled.reason)
            return False
        observe.dsn_queued(envelope.id, dsn_id, [r.address for r in failed])
        return True

    def _report(self, envelope: Envelope, state: DeliveryState, applied: Applied,
                attempt: Attempt | None, dead: bool) -> None:
        names = envelope.recipients
        if dead:
            status = "failed"
        elif state.pending():
            status = "deferred"
        else:
            status = "delivered"
        observe.delivery(
            queue_id=envelope.id, status=status, attempts=state.attempts,
            backend=attempt.backend if attempt else None,
            delivered=[names[i] for i in applied.delivered],
            failed=[names[i] for i in applied.failed], expired=[names[i] for i in applied.expired],
            deferred=[names[i] for i in applied.deferred],
            next_attempt_in=round(state.next_attempt - self._clock(), 3) if status == "deferred" else None,
            age=round(self._clock() - envelope.arrived, 3), dsn=bool(envelope.dsn_for))
        if dead:
            observe.dead_letter(envelope.id, state.dead_reason,
                                failed=[r.address for r in state.recipients if r.status is Status.FAILED])

