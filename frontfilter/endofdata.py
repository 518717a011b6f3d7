"""Queue mode's end of DATA in one worker-thread hop: decide, then spool what is to be forwarded.

Why one hop: inspection and the spool write each ran in their own thread pool, and the
delivery worker reopened the file in a third; every hop between the event loop and a thread
is a wake-up and a GIL handover, and under load each waits (issue 9's profile: 193 futex calls
per message in queue mode against 22 in sync mode). Here the inspection thread writes the
message as soon as the verdict says "forward", and the spool hands it, still locked and in
memory, to the delivery worker (spool.Spool.settle).

The deadline (`inspection.timeout`) still holds: a `Claim` decides, under a lock, whether the
thread may start the write or the event loop has given up on it first. Once the write has
begun, the client waits for it — it is the fsync that stands between the message and its 250,
and answering 451 for a message that ends up spooled would deliver it twice.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from frontfilter.decision import Decision
from frontfilter.delivery.spool import Admission, Envelope, Reservation, Spool, Spooled
from frontfilter.rules.model import Action

# Verdicts after which the message goes on to the backend (strip, add_header and tag included).
NOT_FORWARDED = frozenset({Action.REJECT, Action.TEMPFAIL, Action.DISCARD, Action.QUARANTINE})


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
class Outcome:
    decision: Decision
    spooled: Spooled | None = None     # None: not written (not forwarded, no room, or too late)


def decide_then_spool(decide: Callable[[], Decision], claim: Claim, spool: Spool,
                      reservation: Reservation | Admission, envelope: Envelope) -> Outcome:
    """Blocking, in an inspection thread. `envelope` is completed here (size, arrival time)."""
    decision = decide()
    if decision.verdict.action in NOT_FORWARDED or not isinstance(reservation, Reservation):
        return Outcome(decision)
    if not claim.write():
        return Outcome(decision)
    size = len(decision.head) + len(decision.message)
    envelope = dataclasses.replace(envelope, size=size, arrived=time.time())
    return Outcome(decision, spool.write(reservation, envelope, decision.message, head=decision.head))
