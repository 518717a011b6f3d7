"""The relay's quarantine task: retention, the tool's ledger, the quarantine gauges.

Runs in one process of the service: the only one, or the worker in slot 0 with several
(process/supervisor.py gives a replacement the slot of the worker it replaces, so there is always
one; see `runs_here`). N workers each sweeping would log and count every expiry N times.

Every LEDGER_POLL it reads the records the `frontfilter quarantine` tool left
(delivery/quarantine/ledger.py): each becomes one log line and one count, then is removed. Every
`retention_period(max_age)` — about a minute, sooner when `quarantine.max_age` is short, so a
message outlives its max_age by at most a tenth of it (and at least MIN_PERIOD) — it runs one
retention pass (delivery/quarantine/retention.py): one `quarantine_expired` line and count per removed
message, then the gauges (messages, bytes, oldest age). A pass also follows any record, so the
gauges show a release within LEDGER_POLL rather than a minute.

The directory walk and the removals block: they run in a thread (asyncio.to_thread), never on
the event loop. A quarantine that cannot be read is logged once per distinct problem, and
again when it is back; the relay goes on serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from frontfilter import observe
from frontfilter.config import QuarantineConfig
from frontfilter.delivery.quarantine import ledger, retention
from frontfilter.units import MINUTES, SECONDS

RETENTION_PERIOD = 1 * MINUTES     # the pass: a scandir and a stat per held message
MIN_PERIOD = 1 * SECONDS           # however short max_age is
PERIOD_SHARE_OF_MAX_AGE = 0.1      # a message outlives max_age by at most this share of it
# How often the tool's records are looked for: one listdir of a directory that is nearly always
# empty; a release is on the dashboard within a scrape or two (the spool's scan_interval default).
LEDGER_POLL = 2 * SECONDS
# Keys of a log line that a ledger record does not supply.
_OWN_KEYS = frozenset({"event", "id", "queue_id", "known_rules", "ts", "level", "worker", "by"})


def retention_period(max_age: float) -> float:
    return min(RETENTION_PERIOD, max(MIN_PERIOD, max_age * PERIOD_SHARE_OF_MAX_AGE))


def runs_here() -> bool:
    """This process is the one of the service that runs the task (slot 0, or alone)."""
    return observe.first_worker()


class Expiry:
    def __init__(self, config: QuarantineConfig, rule_names: Callable[[], Iterable[str]],
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.rule_names = rule_names        # the loaded rule set's names: bounds the rule label
        self._clock = clock
        self._problem: str | None = None

    async def run(self) -> None:
        period = retention_period(self.config.max_age)
        next_pass = 0.0
        while True:
            try:
                reported = await self.report_ledger()
                if reported or time.monotonic() >= next_pass:
                    await self.pass_once()
                    next_pass = time.monotonic() + period
            except OSError as error:
                self._failed(f"{error.filename or self.config.dir}: {error.strerror or error}")
            except Exception:
                observe.internal_error("quarantine retention")
            else:
                if self._problem is not None:
                    observe.quarantine_retention_recovered(self._problem)
                    self._problem = None
            await asyncio.sleep(min(LEDGER_POLL, period))

    async def report_ledger(self) -> int:
        """Log and count what the tool did since the last look; how many records."""
        records = await asyncio.to_thread(ledger.take, self.config.dir)
        if not records:
            return 0
        known = frozenset(self.rule_names())
        for item in records:
            if item.fields is None:
                observe.quarantine_record_unreadable(str(item.path), item.problem)
                continue
            record = item.fields
            # A record is a file: its keys never replace the line's own (event, queue_id, ...).
            fields = {k: v for k, v in record.items() if isinstance(k, str) and k not in _OWN_KEYS}
            fields["by"] = "frontfilter quarantine"
            queue_id = str(record.get("id", ""))
            if record["event"] == "released":
                observe.quarantine_released(queue_id=queue_id, rule=str(fields.pop("rule", "")),
                                            known_rules=known, **fields)
            else:
                observe.quarantine_expired(queue_id=queue_id, reason=str(fields.pop("reason", "")), **fields)
        await asyncio.to_thread(ledger.remove, records)
        return len(records)

    async def pass_once(self) -> retention.Sweep:
        """One retention pass: what it removed is logged and counted, the gauges set."""
        swept = await asyncio.to_thread(retention.sweep, self.config.dir, self.config.max_age,
                                        self.config.max_size, self._clock())
        for removed in swept.removed:
            observe.quarantine_expired(queue_id=removed.id, reason=removed.reason, rule=removed.rule,
                                       sender=removed.sender, age=round(removed.age), size=removed.size,
                                       legacy=removed.legacy, by="relay")
        observe.quarantine_state(swept.messages, swept.bytes, swept.oldest_age)
        return swept

    def _failed(self, problem: str) -> None:
        if problem != self._problem:
            observe.quarantine_retention_failed(problem)
            self._problem = problem
