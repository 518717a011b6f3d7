"""The end-of-DATA decision, pure: inspect once, evaluate the rules, rewrite what they asked.

Shared by the pipeline (which runs it in a worker thread, under a deadline) and by
`frontfilter scan` (which prints it), so a dry run shows exactly what the relay would do.
No asyncio, no sockets, no metrics here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.rewrite import (DEFAULT_NOTICE, StripOrder, prepend_headers,
                                         render_notice, strip_parts)
from frontfilter.content.view import MessageView
from frontfilter.rules.facts import Facts
from frontfilter.rules.loader import RuleSet
from frontfilter.rules.model import Action, Verdict


@dataclass(frozen=True)
class Decision:
    view: MessageView
    verdict: Verdict
    message: bytes          # the message to forward: rewritten when strip/add_header/tag fired
    stripped: tuple[StripOrder, ...]


def decide(raw: bytes, facts: Facts, rules: RuleSet, limits: InspectionLimits,
           trace: Sequence[tuple[str, str]] = (), soft_reject: bool = False,
           carried: Verdict | None = None) -> Decision:
    """`facts` without the message (the view is added here); `trace` headers go on top;
    `carried` holds the headers and tags that rules at earlier stages added."""
    view = inspect(raw, limits)
    facts = Facts(stage=facts.stage, session=facts.session, envelope=facts.envelope,
                  recipient=facts.recipient, message=view)
    verdict = rules.evaluate(facts, soft_reject=soft_reject)
    if carried is not None and (carried.headers or carried.tags):
        verdict = dataclasses.replace(verdict, headers=carried.headers + verdict.headers,
                                      tags=carried.tags + verdict.tags)
    return Decision(view, verdict, *apply(raw, view, verdict, trace))


def apply(raw: bytes, view: MessageView, verdict: Verdict,
          trace: Sequence[tuple[str, str]] = ()) -> tuple[bytes, tuple[StripOrder, ...]]:
    """The forwarded form of the message: parts stripped (a notice in place of each), the
    trace headers, then the headers and tags the rules added, on top; nothing else changes."""
    if verdict.action is not None and verdict.action is not Action.ACCEPT:
        return raw, ()
    orders = tuple(
        StripOrder(mime_path=request.mime_path, rule=request.rule,
                   notice=render_notice(request.notice or DEFAULT_NOTICE, request.part, request.rule))
        for request in verdict.strip
    )
    message = strip_parts(raw, view, orders) if orders else raw
    headers = list(trace) + list(verdict.headers)
    if verdict.tags:
        headers.append(("X-Frontfilter-Tags", " ".join(dict.fromkeys(verdict.tags))))
    if headers:
        message = prepend_headers(message, headers)
    return message, orders
