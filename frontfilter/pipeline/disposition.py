"""What a verdict means: the relay's closed set of outcomes for a message, decided in one place.

A rule action says what the administrator wants; the `Disposition` is what became of the
message: the log line's `verdict`, the `frontfilter_messages_total{verdict}` label, `scan`'s and
`test`'s words for it, and whether the message goes on to the backend. `of_action` maps a
rule's action (at end of DATA, or an `accept`/`discard` taken earlier); `of_reply` maps the
reply the client got when something other than a rule decided (the backend, the spool, a
deadline): a 2xx is accepted, 4xx tempfailed, 5xx rejected. `reply_for` is the reply to send
for a disposition, from the deciding rule's own reply when it gave one.
"""

from __future__ import annotations

import enum

from frontfilter import reply
from frontfilter.reply import Reply
from frontfilter.rules.model import Action, Verdict


class Disposition(enum.Enum):
    ACCEPTED = "accepted"          # forwarded (strip, tag and add_header included)
    REJECTED = "rejected"          # 5xx: the client keeps the message (and may bounce it)
    TEMPFAILED = "tempfailed"      # 4xx: the client tries again later
    DISCARDED = "discarded"        # 250, and nothing forwarded
    QUARANTINED = "quarantined"    # kept for an administrator; nothing forwarded

    @property
    def forwarded(self) -> bool:
        return self is Disposition.ACCEPTED

    @property
    def action_word(self) -> str:
        """The rule-action word for it (`frontfilter scan`, `frontfilter test`): accept, reject,
        tempfail, discard, quarantine."""
        return _WORDS[self]

    @classmethod
    def of_action(cls, action: Action | None) -> Disposition:
        """What a rule's (terminal) action does to the message; no action, or one that only
        adds to it (strip, tag, add_header), forwards it."""
        return _OF_ACTION.get(action, cls.ACCEPTED) if action is not None else cls.ACCEPTED

    @classmethod
    def of_reply(cls, answer: Reply) -> Disposition:
        if answer.is_success:
            return cls.ACCEPTED
        return cls.TEMPFAILED if answer.is_transient else cls.REJECTED

    @classmethod
    def of_word(cls, word: str) -> Disposition | None:
        """From either word: the log's ("rejected") or the rule action's ("reject")."""
        for disposition in cls:
            if word in (disposition.value, disposition.action_word):
                return disposition
        return None


_OF_ACTION = {Action.ACCEPT: Disposition.ACCEPTED, Action.REJECT: Disposition.REJECTED,
              Action.TEMPFAIL: Disposition.TEMPFAILED, Action.DISCARD: Disposition.DISCARDED,
              Action.QUARANTINE: Disposition.QUARANTINED}
_WORDS = {Disposition.ACCEPTED: "accept", Disposition.REJECTED: "reject", Disposition.TEMPFAILED: "tempfail",
          Disposition.DISCARDED: "discard", Disposition.QUARANTINED: "quarantine"}


def refusal(verdict: Verdict) -> tuple[Disposition, Reply]:
    """A rule refused the message (reject, tempfail): the reply, and what it came to — a
    reject answered 4xx (`rules.soft_reject`) is a tempfail for the client, and is logged so."""
    default = reply.TEMPFAIL if verdict.action is Action.TEMPFAIL else reply.REJECTED
    answer = verdict.reply or default
    return Disposition.of_reply(answer), answer


def queued(queue_id: str) -> Reply:
    """The 250 a message taken (or discarded, or quarantined and accepted) gets."""
    return reply.OK.with_text(f"Ok: queued as {queue_id}")
