"""The rules engine's value types: actions, modes, rules, matches and the verdict.

Everything here is immutable. A `Rule` is produced only by the loader (which has validated it
whole); a `Verdict` only by `RuleSet.evaluate`. The pipeline reads a `Verdict` and decides the
SMTP reply, the rewrite and the metrics from it; it never looks at rule files.

Who owns what: the closed sets (`Action`, `Mode`) live here, with what they mean declared on
them (`Action.terminal`), so no caller needs an `if` over action names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frontfilter.content.facts import Part
from frontfilter import reply as replies
from frontfilter.model import Stage
from frontfilter.reply import Reply

if TYPE_CHECKING:  # only for the annotation; conditions import this module, not the reverse
    from frontfilter.rules.conditions.tree import Node


class Action(enum.Enum):
    """What a matching rule does. Terminal actions end evaluation; the others accumulate."""

    ACCEPT = "accept"          # pass as is: no later rule (and no later stage) runs
    REJECT = "reject"          # 5xx (4xx under soft_reject)
    TEMPFAIL = "tempfail"      # 4xx: the client retries later
    DISCARD = "discard"        # answer 250, deliver nowhere
    QUARANTINE = "quarantine"  # keep a copy; the pipeline's config decides refuse or pass
    STRIP = "strip"            # remove the MIME parts that matched, a notice in their place
    ADD_HEADER = "add_header"  # add one header field to the forwarded message
    TAG = "tag"                # add a word to the X-Frontfilter-Tags list

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def default_reply(self) -> Reply | None:
        return _DEFAULT_REPLY.get(self)

    @property
    def reply_classes(self) -> frozenset[int]:
        """Which reply code classes (4, 5) a rule of this action may set in `reply`."""
        return _REPLY_CLASSES.get(self, frozenset())


_TERMINAL = frozenset({Action.ACCEPT, Action.REJECT, Action.TEMPFAIL, Action.DISCARD, Action.QUARANTINE})

_DEFAULT_REPLY = {Action.REJECT: replies.REJECTED, Action.TEMPFAIL: replies.TEMPFAIL}
# Quarantine takes a reply for when the pipeline is configured to refuse quarantined mail.
_REPLY_CLASSES = {
    Action.REJECT: frozenset({5}),
    Action.TEMPFAIL: frozenset({4}),
    Action.QUARANTINE: frozenset({4, 5}),
}


class Mode(enum.Enum):
    ENFORCE = "enforce"  # the rule acts
    MONITOR = "monitor"  # evaluated and recorded, never acts, never ends evaluation


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True)
class Rule:
    name: str
    file: str                      # the rule file's name, for logs and errors
    stage: Stage
    action: Action
    mode: Mode = Mode.ENFORCE
    description: str = ""
    reply: Reply | None = None     # the configured reply, or the action's default
    notice: str | None = None      # strip: the notice template; None = DEFAULT_NOTICE
    header: AddHeader | None = None  # add_header
    tag: str | None = None         # tag
    condition: Node | None = None  # None: the rule always matches
    per_part: bool = False         # has attachment conditions: evaluated once per part


@dataclass(frozen=True)
class Match:
    """One rule that matched, and why (the explanation `frontfilter scan` prints)."""

    rule: str
    action: Action
    mode: Mode
    reasons: tuple[str, ...]
    parts: tuple[str, ...] = ()    # `Part.path` of every part that matched


@dataclass(frozen=True)
class StripRequest:
    mime_path: str                 # the MIME leaf to remove (an archive member's carrier)
    rule: str
    part: Part                     # the part that matched (may be a member inside the leaf)
    notice: str | None = None      # template; None = the default notice


@dataclass(frozen=True)
class Verdict:
    action: Action | None = None   # the terminal action that ended evaluation, if any
    rule: str | None = None        # the rule that took it
    reply: Reply | None = None     # for reject/tempfail (and quarantine when refused)
    matches: tuple[Match, ...] = ()
    strip: tuple[StripRequest, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    softened: bool = False         # soft_reject turned a 5xx reply into its 4xx twin

    def explain(self) -> tuple[str, ...]:
        """One line per matched rule with its reasons, for `frontfilter scan` and logs."""
        lines = []
        for match in self.matches:
            where = f" parts {', '.join(match.parts)}" if match.parts else ""
            lines.append(f"{match.rule} ({match.action.value}, {match.mode.value}){where}: "
                         + "; ".join(match.reasons))
        if self.action is not None:
            reply = f" -> {self.reply.wire}" if self.reply is not None else ""
            lines.append(f"decision: {self.action.value} by {self.rule}{reply}")
        return tuple(lines)


class RuleSetError(Exception):
    """A rule set that cannot be used. `errors` holds one line per problem: `FILE: rule NAME: key: problem`."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))