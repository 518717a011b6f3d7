"""The end-of-DATA decision, pure: inspect once, evaluate the rules, rewrite what they asked.

Shared by the pipeline (which runs it in a worker thread, under a deadline) and by
`frontfilter scan` (which prints it), so a dry run shows exactly what the relay would do.
No asyncio, no sockets, no metrics here: the antivirus scan is done by the caller (it is I/O)
and handed in as a fact; what a failed scan means (`[antivirus] on_error`) is decided here.
With `[arc]` the pipeline hands in its sealer (pipeline/sealing.py): a message to be forwarded
is sealed last, over the bytes exactly as they go out, the ARC set put on top of `head`; what
the seal did is `Decision.arc`, for the caller to log and count (`scan` passes no sealer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from frontfilter import reply
from frontfilter.antivirus.result import ScanResult, ScanStatus
from frontfilter.config import OnError
from frontfilter.content import authresults
from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.scratch import Scratch
from frontfilter.content.sniff import KnownTypes, TypeCache
from frontfilter.content.rewrite import (DEFAULT_NOTICE, StripOrder, header_fields,
                                         render_notice, strip_parts)
from frontfilter.content.arcseal import Seal
from frontfilter.content.facts import MessageView
from frontfilter.pipeline.disposition import Disposition
from frontfilter.pipeline.sealing import Sealer
from frontfilter.rules.facts import Facts
from frontfilter.rules.engine import Rules
from frontfilter.rules.model import Action, Verdict
from frontfilter.mapped import MessageBytes


@dataclass(frozen=True)
class Decision:
    view: MessageView
    verdict: Verdict
    # Forwarded as `head` + `message`, written and sent one after the other, never joined: the
    # fields frontfilter adds on top (trace fields, the rules' headers and tags), then the
    # client's message, rewritten when strip fired. Joining them copied every message once,
    # the largest share of a 25 MB message's peak memory.
    head: bytes
    message: MessageBytes
    stripped: tuple[StripOrder, ...]
    antivirus: ScanResult | None = None   # the scan the rules saw; None: no scan was made
    unscanned: bool = False               # the verdict is on_error's: the scan failed
    arc: Seal | None = None               # [arc]: the seal, or why none; None: not to be sealed


# `Verdict.rule` of a message tempfailed because it could not be scanned: the config key that
# decided, written so that it can never be mistaken for a rule name.
ON_ERROR = "[antivirus] on_error"


def decide(raw: MessageBytes, facts: Facts, rules: Rules, limits: InspectionLimits,
           trace: Sequence[tuple[str, str]] = (), soft_reject: bool = False,
           carried: Verdict | None = None, antivirus: ScanResult | None = None,
           on_error: OnError = OnError.TEMPFAIL, types: TypeCache | KnownTypes | None = None,
           deadline: float | None = None, authserv_id: str | None = None,
           sealer: Sealer | None = None, scratch: Scratch | None = None) -> Decision:
    """`facts` without the message (the view is added here); `trace` headers go on top;
    `carried` holds the headers and tags that rules at earlier stages added.

    `antivirus` is the scan of `raw` (None: none made). When it failed and `on_error` is
    tempfail, a message the rules would pass is tempfailed instead; a refusal by the rules
    stands (a 5xx is final: the client need not come back for it). `types`: libmagic's
    answers remembered across messages (`sniff.TypeCache`; `sniff.KnownTypes` on the event
    loop, where a part it may not read there raises `sniff.NotKnown`). `deadline` (a `time.monotonic()`
    value) stops the inspection itself: past it the view records `Limit.TIME`; past it too, a
    message is not sealed (`sealer`: [arc], with `authserv_id` the field it seals).
    `scratch`: where inspection moves a big archive while it reads the members."""
    view = inspect(raw, limits, deadline=deadline, types=types, scratch=scratch)
    facts = Facts(stage=facts.stage, session=facts.session, envelope=facts.envelope,
                  recipient=facts.recipient, message=view, antivirus=antivirus,
                  checks=facts.checks)
    verdict = rules.evaluate(facts, soft_reject=soft_reject)
    if carried is not None and (carried.headers or carried.tags):
        verdict = dataclasses.replace(verdict, headers=carried.headers + verdict.headers,
                                      tags=carried.tags + verdict.tags)
    unscanned = (antivirus is not None and antivirus.failed and on_error is OnError.TEMPFAIL
                 and verdict.action in (None, Action.ACCEPT))
    if unscanned:
        assert antivirus is not None
        answer = reply.INSPECTION_TIMEOUT if antivirus.status is ScanStatus.TIMEOUT else reply.SCAN_UNAVAILABLE
        verdict = dataclasses.replace(verdict, action=Action.TEMPFAIL, rule=ON_ERROR, reply=answer)
    head, message, orders = apply(raw, view, verdict, trace, authserv_id)
    arc = None
    if sealer is not None and authserv_id and Disposition.of_action(verdict.action) is Disposition.ACCEPTED:
        # Changed where a DKIM signature may cover it: a part stripped or a forged field
        # removed (the bytes differ; `!=` on the same object is one pointer test), or a field
        # the rules add (their headers, the tags). Not the trace fields: signers leave them out.
        changed = message != raw or bool(verdict.headers or verdict.tags)
        arc = sealer.seal(head, message, authserv_id, changed, deadline)
        if arc is not None and arc.sealed:
            head = arc.fields + head
    return Decision(view, verdict, head, message, orders, antivirus, unscanned, arc)


def apply(raw: MessageBytes, view: MessageView, verdict: Verdict, trace: Sequence[tuple[str, str]] = (),
          authserv_id: str | None = None) -> tuple[bytes, MessageBytes, tuple[StripOrder, ...]]:
    """The forwarded form of the message, (head, message, orders): parts stripped (a notice in
    place of each), Authentication-Results fields from outside that claim our `authserv_id`
    removed; the trace headers, then the headers and tags the rules added, in `head`, to go on
    top; nothing else changes."""
    if verdict.action is not None and verdict.action is not Action.ACCEPT:
        return b"", raw, ()
    orders = tuple(
        StripOrder(mime_path=request.mime_path, rule=request.rule,
                   notice=render_notice(request.notice or DEFAULT_NOTICE, request.part, request.rule))
        for request in verdict.strip
    )
    message = strip_parts(raw, view, orders) if orders else raw
    if authserv_id:
        message = authresults.remove_claims(message, authserv_id)
    headers = list(trace) + list(verdict.headers)
    if verdict.tags:
        headers.append(("X-Frontfilter-Tags", " ".join(dict.fromkeys(verdict.tags))))
    return header_fields(headers), message, orders
