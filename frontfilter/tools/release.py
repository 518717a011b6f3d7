"""Releasing a held message: back on its way, as received, with one field on top.

What is sent: `released_field` (X-Frontfilter-Released: date; held by rule "R" as ID)
followed by the message bytes exactly as the client sent them (but for an
Authentication-Results field claiming the relay's authserv-id, removed as from all it forwards) — or, with `--rescan`, as the
current rules would forward them (frontfilter/pipeline/dryrun.py: the relay's own pipeline, nothing
sent); a message the rules would not forward now is not released, and says why.
To whom: the original recipients, or the administrator's `--to` addresses (required for a
legacy file, whose recipients cannot be trusted: store.py).

Where, by `backend.mode`:
- queue: into the spool (delivery/spool.py `write_message`) under the quarantine id as its
  queue id, owned by the daemon's user; the running relay's delivery worker finds it on its
  next scan (`spool.scan_interval`, 2 s by default) — the same way it notices
  `frontfilter queue retry`. With the relay stopped it waits there for the next start.
  A release repeated after a crash (the message spooled, the quarantine file not yet removed)
  finds the message queued under that id and does not write it twice.
- sync: no delivery worker runs, so it is handed to the backend here, with the relay's own
  forwarding code (delivery/forward.py: the same backends, TLS and failover).

Never lost: the quarantine file is locked for the whole release (the retention and a
concurrent `delete` skip it) and removed (durably) only after the message is safely in the
spool, or after the backend accepted it for every recipient. A backend that refuses some
recipients leaves the file in place, with a line naming them (release again with `--to`).
Before the removal a ledger record (delivery/quarantine/ledger.py) is left for the relay, which logs
and counts the release.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from frontfilter import policy
from frontfilter.config import BackendMode, Config
from frontfilter.content import authresults
from frontfilter.delivery.spool import Envelope, Layout, write_message
from frontfilter.tools import queuectl
from frontfilter.delivery.quarantine import ledger, store
from frontfilter.mapped import MessageBytes
from frontfilter.reply import Reply

# A rule name as the loader allows it (rules/loader.py _NAME); anything else in a file is "?",
# so the added field stays one line of printable ASCII.
_NOT_RULE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ReleaseError(Exception):
    """A release that cannot be made at all (no spool, unreadable rules): one line."""


@dataclass(frozen=True)
class Released:
    """Where one message went: the spool (its queue id) or the backend (who took it)."""

    recipients: tuple[str, ...]
    spool_id: str | None = None
    backend: str | None = None
    already_queued: bool = False     # an interrupted earlier release had spooled it


def released_field(meta: store.Held, now: float) -> bytes:
    """The one header field a release puts on top of the message as received: when, by which
    rule it had been held, under which id (the one the relay's `message` log line carries)."""
    rule = _NOT_RULE_CHARS.sub("?", meta.rule)[:100] or "?"
    return (f"X-Frontfilter-Released: {formatdate(now, localtime=True)}; "
            f"held by rule \"{rule}\" as {meta.id}\r\n").encode("ascii")


def recipients_for(meta: store.Held, to: Sequence[str]) -> tuple[str, ...]:
    """The addresses to release to: `--to`, checked and normalised, or the original ones.
    Raises ReleaseError with the line to print."""
    if not to:
        if meta.legacy:
            raise ReleaseError(f"{meta.id}: legacy quarantine file: its recipients cannot be trusted "
                               "(a sender can forge them); give them with --to ADDRESS")
        return meta.recipients
    chosen = []
    for address in to:
        parsed = policy.parse_recipient(address.strip().removeprefix("<").removesuffix(">"), True)
        if isinstance(parsed, Reply):
            raise ReleaseError(f"--to {address!r}: not a usable address ({parsed.text})")
        chosen.append(parsed.normalised)
    return tuple(dict.fromkeys(chosen))


def rescanned(config: Config, meta: store.Held, body: bytes, recipients: tuple[str, ...]) -> bytes:
    """The message as the current rules would forward it; ReleaseError saying what they
    decided instead."""
    from frontfilter.pipeline import dryrun
    from frontfilter.rules.loader import load_ruleset
    from frontfilter.rules.model import RuleSetError

    try:
        rules = load_ruleset(config.rules.dir)
    except RuleSetError as error:
        raise ReleaseError(f"--rescan: the rules in {config.rules.dir} do not load: {error.errors[0]}") from None
    client_ip = meta.client.rpartition(":")[0].strip("[]") or "0.0.0.0"
    envelope = dryrun.DryEnvelope(sender=meta.sender, recipients=recipients, client_ip=client_ip,
                                  helo=meta.helo, auth_user=meta.auth_user, tls=meta.tls)
    # Never greylisting (a release must not record triplets); the DNS checks the rules read, yes.
    result = dryrun.run(dryrun.dry_config(config, lookups=True), rules, body, envelope)
    refused = result.refused_recipients
    if result.disposition.forwarded and result.forwarded is not None and not refused:
        return result.forwarded
    if refused:       # all or none: a release never quietly drops a recipient
        names = ", ".join(f"<{r}> ({answer.wire})" for r, answer in refused)
        raise ReleaseError(f"{meta.id}: the current rules refuse {names}: not released (--to the others)")
    why = (f"rule {result.decided_by}" if result.decided_by and not result.refused_by_policy
           else f"relay policy ({result.decided_by or 'before any rule'})")
    raise ReleaseError(f"{meta.id}: the current rules say {result.verdict} by {why} "
                       f"({result.reply.wire}): not released")


def to_spool(config: Config, meta: store.Held, head: bytes, data: MessageBytes,
             recipients: tuple[str, ...], now: float) -> Released:
    """Queue mode: durably in the spool, for the relay's delivery worker."""
    layout = Layout(config.spool.dir)
    problem = queuectl.spool_problem(layout)
    if problem is not None:
        raise ReleaseError(problem)
    if layout.msg(meta.id).exists():      # an earlier release got this far: idempotent
        return Released(recipients, spool_id=meta.id, already_queued=True)
    envelope = Envelope(id=meta.id, sender=meta.sender, recipients=recipients, arrived=now,
                        size=len(head) + len(data), options=meta.options, client=meta.client,
                        helo=meta.helo, login=meta.auth_user or "")
    write_message(layout, envelope, data, head=head, owner=store.owner_of(layout.root))
    return Released(recipients, spool_id=meta.id)


async def _hand_over(config: Config, meta: store.Held, head: bytes, data: MessageBytes,
                     recipients: tuple[str, ...]) -> Any:
    from frontfilter.delivery.forward import Forwarder

    forwarder = Forwarder(config.backend, config.server.hostname)
    try:
        return await forwarder.deliver(meta.sender, recipients, data, meta.options, queue_id=meta.id,
                                       head=head, every_backend=True)
    finally:
        await forwarder.close()


def to_backend(config: Config, meta: store.Held, head: bytes, data: MessageBytes,
               recipients: tuple[str, ...]) -> Released:
    """Sync mode: handed to the backend now; accepted for every recipient, or ReleaseError."""
    # The forwarder reports each hand-over through observe: the tool prints its own line.
    logging.getLogger("frontfilter").addHandler(logging.NullHandler())
    attempt = asyncio.run(_hand_over(config, meta, head, data, recipients))
    refused = [(r, result) for r, result in zip(recipients, attempt.results) if not result.ok]
    if not refused:
        return Released(recipients, backend=attempt.backend)
    names = "; ".join(f"<{r}>: {result.describe()}" for r, result in refused)
    taken = [r for r, result in zip(recipients, attempt.results) if result.ok]
    if taken:
        raise ReleaseError(f"{meta.id}: delivered to {', '.join(f'<{r}>' for r in taken)} but refused for "
                           f"{names}: kept in the quarantine (release it again with --to for those)")
    raise ReleaseError(f"{meta.id}: not delivered: {names}: kept in the quarantine")


def release_one(config: Config, root: Any, queue_id: str, to: Sequence[str], rescan: bool,
                now: float | None = None) -> str:
    """Release one held message; the line to print. Raises ReleaseError, safeio.Busy,
    safeio.Gone, store.QuarantineFormatError, OSError (the file stays where it was)."""
    with store.open_locked(root, queue_id) as held:
        meta = held.meta
        recipients = recipients_for(meta, to)
        # As received, but for an Authentication-Results field that claims our authserv-id: the
        # backend would trust it (the relay removes it from everything it forwards).
        data = (rescanned(config, meta, held.body, recipients) if rescan else
                authresults.remove_claims(held.body, config.server.authserv_id or config.server.hostname))
        when = time.time() if now is None else now
        head = released_field(meta, when)
        if config.backend.mode is BackendMode.QUEUE:
            done = to_spool(config, meta, head, data, recipients, when)
        else:
            done = to_backend(config, meta, head, data, recipients)
        if not (done.already_queued and ledger.waiting(root, "released", queue_id)):
            ledger.record(root, "released", queue_id, rule=meta.rule, to=list(recipients),
                          spool_id=done.spool_id, backend=done.backend, rescanned=rescan,
                          legacy=meta.legacy, size=len(head) + len(data))
        held.remove()
    rule = f"rule {meta.rule}" if meta.rule else "no rule recorded"
    where = (f"queued as {done.spool_id}" + (" (already queued by an earlier release)" if done.already_queued else "")
             if done.spool_id else f"accepted by {done.backend}")
    return (f"{queue_id}: released to {', '.join(f'<{r}>' for r in recipients)} ({rule}"
            f"{', rescanned' if rescan else ''}): {where}")

