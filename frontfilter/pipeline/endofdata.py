"""Queue mode's end of DATA: decide, then spool what is to be forwarded.

The verdict is reached in one of the pipeline's two inspection threads (CPU: they share the
GIL with the event loop), or on the loop itself for a small message of known text and pictures
(stages.Pipeline._on_loop: the hand-over would cost more than the walk); the durable write goes to the spool (`Spool.write_soon`: a small
message is written on the event loop and made durable by the spool's commit process, a large one
in a spool I/O thread), so that the inspection threads are not held by the disk. The spool
hands the written message, still locked and in memory, to the delivery worker
(spool.Spool.settle).
(It once ran in one hop, both in the inspection thread, to spare a thread hand-over; then at
most two fsyncs per process were ever in flight and the 5 KB bench waited on the disk with
the event loop a third busy.)

The deadline (`inspection.timeout`) still holds: a `Claim` decides, under a lock, whether the
write may start or the event loop has given up on it first. Once the write has begun, the
client waits for it — it is the fsync that stands between the message and its 250, and
answering 451 for a message that ends up spooled would deliver it twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from frontfilter.pipeline.decision import Decision
from frontfilter.delivery.spool import Admission, Envelope, Reservation, Spool, Spooled
from frontfilter.pipeline.disposition import Disposition



class Claim:
    """Who got there first: the thread about to write, or the event loop past the deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: str | None = None

    def _take(self, who: str) -> bool:
        with self._lock:
            if self._owner is None:
                self._owner = who
            return self._owner == who

    def write(self) -> bool:
        """In the thread: may the message be written? False once the loop gave up on it."""
        return self._take("write")

    def abandon(self) -> bool:
        """On the loop, at the deadline: True if the thread will not write; False if it is
        writing already (then wait for it)."""
        return self._take("abandon")


@dataclass
class Judged:
    decision: Decision
    spooled: Spooled | None = None     # None: not written (not forwarded, no room, or too late)


async def decide_then_spool(decide: Callable[[], Decision], inspect: Executor, claim: Claim, spool: Spool,
                            reservation: Reservation | Admission, envelope: Envelope,
                            on_loop: Callable[[], Decision | None] | None = None) -> Judged:
    """The decision (on the loop by `on_loop` if it can, else in `inspect`), then the spool
    write of a message to be forwarded (in the spool's threads). `envelope` is completed here
    (size, arrival time).

    Whatever becomes of the task running this, the reservation is settled: by the write's own
    completion once it has started (the thread goes on if this task is cancelled), at once
    when there is nothing to write."""
    writing = False
    try:
        decision = on_loop() if on_loop is not None else None
        if decision is None:
            decision = await asyncio.get_running_loop().run_in_executor(inspect, decide)
        if (not Disposition.of_action(decision.verdict.action).forwarded or not isinstance(reservation, Reservation)
                or not claim.write()):
            return Judged(decision)
        size = len(decision.head) + len(decision.message)
        envelope = envelope.received(size, time.time())
        write = spool.write_soon(reservation, envelope, decision.message, head=decision.head)
        writing = True
        return Judged(decision, await asyncio.shield(write))
    finally:
        if not writing and isinstance(reservation, Reservation):
            spool.settle(reservation, None)
