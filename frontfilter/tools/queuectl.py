"""`frontfilter queue list | show ID | retry [ID…] | delete ID…`: the spool, for administrators.

Safe while the daemon runs, with no control socket: the spool files are the only truth, and the
per-message flock that delivery holds (delivery/spool.py) is taken here too before a change.
- `list` and `show` only read: the `.msg` file never changes once written and `.state` is
  replaced by rename, so a read sees a whole old or a whole new state, never half of one.
- `retry` sets the state's next attempt to now, under the lock; the daemon's next spool scan
  (every `spool.scan_interval`) sees the state file replaced and attempts the message.
- `delete` removes the message under the lock (waiting up to DELETE_LOCK_WAIT for an attempt in
  flight to end), message file first; the daemon's scan drops it. No DSN is sent (as Postfix's
  `postsuper -d`): deleting is the administrator's decision.
Why files and locks rather than a control socket: it works the same with the daemon stopped,
with several delivery processes sharing one spool (workers), and adds nothing that listens.
The price is up to one scan interval before the daemon acts on a `retry`.

Output is built here as lines; `cli.py` prints them. Queue ids are checked against
`spool.VALID_ID` before they become paths.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from frontfilter.delivery import safeio
from frontfilter.delivery.spool import (
    MAGIC, MAX_ENVELOPE_BYTES, VALID_ID, DeliveryState, Envelope, Layout, SpoolFormatError,
    open_message, parse_envelope, parse_message, read_state, scan)
from frontfilter.tools import show as shown

# An attempt in flight holds the lock at most a few backend timeouts; waiting this long covers
# a normal one, and past it the administrator is told to try again rather than left hanging.
DELETE_LOCK_WAIT = 10.0


class QueueToolError(Exception):
    """A problem with the spool as a whole (missing directory): one line for the administrator."""


@dataclass(frozen=True)
class Listed:
    envelope: Envelope
    state: DeliveryState
    file_size: int


def spool_problem(layout: Layout) -> str | None:
    """Why there is no spool to work on here (the tools that write or read it say so), or None."""
    if not layout.queue.is_dir():
        return f"{layout.queue}: no spool here (is backend.mode \"queue\" and has the relay run once?)"
    return None


def _check_spool(layout: Layout) -> None:
    problem = spool_problem(layout)
    if problem is not None:
        raise QueueToolError(problem)


def read_envelope(path: Any) -> Envelope:
    """The envelope line of a spool file, without reading the message."""
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC) + MAX_ENVELOPE_BYTES + 1)
    return parse_envelope(head)[0]


def list_queue(layout: Layout) -> tuple[list[Listed], list[str]]:
    """Every queued message in arrival order, and a problem line per unreadable one."""
    _check_spool(layout)
    listed, problems = [], []
    for queue_id, item in sorted(scan(layout).items()):
        try:
            envelope = read_envelope(layout.msg(queue_id))
            listed.append(Listed(envelope, read_state(layout, envelope), item.size))
        except FileNotFoundError:
            continue                      # delivered while we looked
        except SpoolFormatError as error:
            problems.append(f"{queue_id}: {error}")
    return listed, problems


def dead_letter_count(layout: Layout) -> int:
    try:
        return sum(1 for name in os.listdir(layout.dead) if name.endswith(".msg"))
    except FileNotFoundError:
        return 0


# ---- formatting ---------------------------------------------------------------------------





def _relative(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    seconds = int(seconds + 0.999)
    if seconds < 60:
        return f"in {seconds}s"
    if seconds < 3600:
        return f"in {seconds // 60}m{seconds % 60:02d}s"
    return f"in {seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_list(listed: Sequence[Listed], problems: Sequence[str], dead: int, now: float) -> list[str]:
    if not listed and not problems:
        lines = ["Queue is empty."]
    else:
        lines = [f"{'QUEUE ID':<22} {'SIZE':>7}  {'ARRIVED (UTC)':<19}  {'TRIES':>5}  {'NEXT TRY':<10}  SENDER"]
        for item in listed:
            env, state = item.envelope, item.state
            pending = state.pending()
            next_try = _relative(state.next_attempt - now) if pending else "-"
            sender = f"<{env.sender}>" + (f" (report on {env.dsn_for})" if env.dsn_for else "")
            lines.append(f"{env.id:<22} {shown.size(env.size):>7}  {shown.utc(env.arrived):<19}  "
                         f"{state.attempts:>5}  {next_try:<10}  {sender}")
            for recipient in state.recipients:
                last = f": {recipient.detail}" if recipient.detail else ""
                lines.append(f"    {recipient.status.value:<9} <{recipient.address}>{last}")
        total = sum(item.envelope.size for item in listed)
        lines.append(f"-- {len(listed)} message{'s' if len(listed) != 1 else ''}, {shown.size(total)}"
                     + (" bytes" if total < 1024 else ""))
        lines.extend(f"unreadable: {p}" for p in problems)
    if dead:
        lines.append(f"({dead} message{'s' if dead != 1 else ''} in the dead-letter directory)")
    return lines


def list_json(listed: Sequence[Listed]) -> list[dict[str, Any]]:
    return [{"id": item.envelope.id, "size": item.envelope.size, "arrived": item.envelope.arrived,
             "sender": item.envelope.sender, "dsn_for": item.envelope.dsn_for or None,
             "attempts": item.state.attempts, "next_attempt": item.state.next_attempt,
             "recipients": [{"address": r.address, "status": r.status.value, "last": r.detail or None}
                            for r in item.state.recipients]}
            for item in listed]


# ---- show -----------------------------------------------------------------------------------

def show(layout: Layout, queue_id: str) -> tuple[list[str], bytes]:
    """The envelope and state as lines, and the message bytes (from the queue or dead letters)."""
    _check_spool(layout)
    _valid(queue_id)
    for dead in (False, True):
        path = layout.msg(queue_id, dead)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            continue
        envelope, body = parse_message(raw)
        state = read_state(layout, envelope, dead)
        lines = [f"queue id:   {envelope.id}" + ("  (dead letter)" if dead else ""),
                 f"file:       {path}",
                 f"arrived:    {shown.utc(envelope.arrived)} UTC from {envelope.client or '-'}"
                 f" (HELO {envelope.helo or '-'})",
                 f"sender:     <{envelope.sender}>",
                 f"options:    {' '.join(envelope.options) or '-'}",
                 f"size:       {envelope.size} bytes",
                 f"attempts:   {state.attempts}" + (f", next {shown.utc(state.next_attempt)} UTC"
                                                     if state.pending() and not dead else "")]
        if envelope.dsn_for:
            lines.append(f"reports on: {envelope.dsn_for}")
        if state.dead_reason:
            lines.append(f"given up:   {state.dead_reason}")
        for recipient in state.recipients:
            last = f"  last: {recipient.detail}" if recipient.detail else ""
            lines.append(f"recipient:  <{recipient.address}> {recipient.status.value}{last}")
        return lines, body
    raise QueueToolError(f"{queue_id}: not in the queue nor in the dead letters")


# ---- retry and delete -------------------------------------------------------------------------

def _valid(queue_id: str) -> None:
    if not VALID_ID.match(queue_id):
        raise QueueToolError(f"{queue_id!r}: not a queue id")


def retry(layout: Layout, ids: Iterable[str], now: float | None = None) -> tuple[list[str], bool]:
    """Make messages due now. No ids: every queued message. Returns lines and whether all went well."""
    _check_spool(layout)
    wanted = list(ids) or sorted(scan(layout))
    now = time.time() if now is None else now
    lines, ok = [], True
    for queue_id in wanted:
        try:
            _valid(queue_id)
            with open_message(layout, queue_id) as message:
                if message.state is None or message.problem is not None:
                    raise SpoolFormatError(message.problem or "unreadable")
                state = message.state
                if not state.pending():
                    lines.append(f"{queue_id}: nothing pending (being finished by the relay)")
                    continue
                state.next_attempt = now
                state.retry_requested = True
                message.save(state)
                lines.append(f"{queue_id}: will be retried now ({len(state.pending())} recipient"
                             f"{'s' if len(state.pending()) != 1 else ''} pending)")
        except safeio.Gone:
            ok = False
            lines.append(f"{queue_id}: not in the queue")
        except safeio.Busy:
            lines.append(f"{queue_id}: being delivered right now")
        except (QueueToolError, SpoolFormatError) as error:
            ok = False
            lines.append(str(error) if isinstance(error, QueueToolError) else f"{queue_id}: {error}")
    if not wanted:
        lines.append("Queue is empty.")
    return lines, ok


def delete(layout: Layout, ids: Iterable[str], wait: float = DELETE_LOCK_WAIT) -> tuple[list[str], bool]:
    """Remove messages from the queue for good (no DSN). Returns lines and whether all went well."""
    _check_spool(layout)
    lines, ok = [], True
    for queue_id in ids:
        try:
            _valid(queue_id)
            with open_message(layout, queue_id, wait=wait) as message:
                message.remove()
            lines.append(f"{queue_id}: deleted")
        except safeio.Gone:
            ok = False
            lines.append(f"{queue_id}: not in the queue (delivered or deleted already?)")
        except safeio.Busy:
            ok = False
            lines.append(f"{queue_id}: still being delivered after {wait:g}s; try again")
        except QueueToolError as error:
            ok = False
            lines.append(str(error))
    return lines, ok

