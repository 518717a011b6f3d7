"""`RuleSet`: a validated, immutable set of rules, and `evaluate(facts) -> Verdict`. Pure, no I/O.

Evaluation at one stage runs that stage's rules in load order (file name, then position in the
file). A matching enforce-mode rule acts: strip / add_header / tag accumulate; a terminal action
(`Action.terminal`) ends evaluation and becomes `Verdict.action`. A monitor-mode rule is recorded
in `Verdict.matches` and nothing else: it never acts and never ends evaluation.

What earlier rules accumulated stays in the verdict when a terminal rule fires; the pipeline
ignores strips of a rejected message, and keeps them for an accepted one (rule order is the
administrator's: an `accept` meant to bypass stripping must come first, or at an earlier stage).

soft_reject is an argument of `evaluate`, not of the rule set: it is a switch of the service's
config, flipped without reloading rules, and the same rule set serves both positions.

Bounds: the work per evaluation is (rules of the stage) x (parts, for rules with attachment
conditions); parts are bounded by inspection (`Limit.PARTS`), so is the body text.

Pre-checks: most rules of a large set say "this key matches these patterns, and ...". Rules of
one stage whose conditions require a pattern match on the same key (`sender.domain`, `subject`,
`header.X-Mailer`, `attachment.filename`...) are grouped, and the group's patterns are joined
into one `AnyOfMatchers`. At evaluation each group is asked once; when no value matches, none of
its rules can hold and they are skipped without being evaluated. The rules that remain run one
by one in load order as before, so verdicts, reasons and order are exactly those of the plain
loop: 1,000 rules of that kind cost about what a dozen cost (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol
from dataclasses import dataclass, field

from frontfilter.model import Stage
from frontfilter.rules.conditions.tree import AllOf, Context, Leaf, Node, condition_keys, evaluate_rule
from frontfilter.rules.facts import Facts
from frontfilter.rules.matchers import AnyOfMatchers
from frontfilter.rules.model import Action, Match, Mode, Rule, StripRequest, Verdict

GROUP_MIN = 4   # rules on one key before a joined pre-check pays for itself


class Rules(Protocol):
    """What the pipeline asks of a rule set: `RuleSet`, or a stand-in (no rules after an early
    accept; the dry run's, which notes every evaluation)."""

    @property
    def stages(self) -> frozenset[Stage]: ...

    def evaluate(self, facts: Facts, *, soft_reject: bool = False) -> Verdict: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Rule]: ...


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    fingerprint: str = ""  # hash of the rule and list files' contents, for the reload log line
    _by_stage: dict[Stage, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)
    _reads: dict[Stage, frozenset[str]] = field(init=False, repr=False, compare=False)
    _plans: dict[Stage, _Plan] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_stage = {stage: tuple(r for r in self.rules if r.stage is stage) for stage in Stage}
        object.__setattr__(self, "_by_stage", {s: rules for s, rules in by_stage.items() if rules})
        object.__setattr__(self, "_plans", {s: _Plan.build(rules) for s, rules in by_stage.items() if rules})
        object.__setattr__(self, "_reads", {s: frozenset().union(*(condition_keys(r.condition) for r in rules))
                                            for s, rules in by_stage.items()})

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    @property
    def stages(self) -> frozenset[Stage]:
        """Stages that have at least one rule: the pipeline may skip evaluating the others."""
        return frozenset(self._by_stage)

    def reads(self, stage: Stage) -> frozenset[str]:
        """The condition keys (`client.dnsbl_score`, `spf.result`, ...) that the rules of `stage`
        read, monitor rules included: the pipeline gathers costly facts (DNS, greylisting) only
        for a stage whose rules will look at them."""
        return self._reads.get(stage, frozenset())

    def evaluate(self, facts: Facts, *, soft_reject: bool = False) -> Verdict:
        """The verdict of the rules of `facts.stage`. Raises only on facts the pipeline built wrong."""
        if facts.stage is Stage.DATA and facts.message is None:
            raise ValueError("facts at stage data must carry the message")
        ctx = Context(facts)
        matches: list[Match] = []
        strips: dict[str, StripRequest] = {}
        headers: list[tuple[str, str]] = []
        tags: dict[str, None] = {}
        plan = self._plans.get(facts.stage)
        for rule in plan.candidates(ctx) if plan is not None else ():
            reasons, parts = evaluate_rule(rule.condition, ctx)
            if reasons is None:
                continue
            matches.append(Match(rule.name, rule.action, rule.mode, reasons, tuple(p.path for p in parts)))
            if rule.mode is Mode.MONITOR:
                continue
            if rule.action is Action.STRIP:
                for part in parts:  # first rule to strip a MIME leaf names it in the notice
                    strips.setdefault(part.mime_path, StripRequest(part.mime_path, rule.name, part, rule.notice))
            elif rule.action is Action.ADD_HEADER and rule.header is not None:
                headers.append((rule.header.name, rule.header.value))
            elif rule.action is Action.TAG and rule.tag is not None:
                tags.setdefault(rule.tag)
            if rule.action.terminal:
                reply = rule.reply
                softened = bool(soft_reject and reply is not None and reply.is_permanent)
                if softened and reply is not None:
                    reply = reply.softened()
                return Verdict(rule.action, rule.name, reply, tuple(matches), tuple(strips.values()),
                               tuple(headers), tuple(tags), softened)
        return Verdict(None, None, None, tuple(matches), tuple(strips.values()), tuple(headers), tuple(tags))


@dataclass(frozen=True)
class _Gate:
    """Rules that all require a pattern match on one key, and their joined patterns."""

    leaf: Leaf                 # one of them: its `values` read the key (all of theirs read the same)
    patterns: AnyOfMatchers
    members: frozenset[int]    # positions in the stage's rules

    def open(self, ctx: Context) -> bool:
        """Whether any value of the key matches any member's patterns (else no member holds)."""
        facts = ctx.facts
        if not self.leaf.per_part:
            return any(self.patterns.matches(value) for value in self.leaf.values(facts, None))
        message = ctx.message
        if message is None:
            return False
        return any(self.patterns.matches(value)
                   for part in message.parts for value in self.leaf.values(facts, part))


@dataclass(frozen=True)
class _Plan:
    """A stage's rules, with the pre-checks that let most of a large set be skipped."""

    rules: tuple[Rule, ...]
    gates: tuple[_Gate, ...]
    ungated: frozenset[int]             # positions of the rules no gate covers
    ungated_rules: tuple[Rule, ...]     # those rules, in load order

    @classmethod
    def build(cls, rules: tuple[Rule, ...]) -> _Plan:
        by_key: dict[tuple[str, bool], list[tuple[int, Leaf]]] = {}
        for index, rule in enumerate(rules):
            leaf = _required_pattern(rule.condition)
            if leaf is not None:
                by_key.setdefault((leaf.key, leaf.per_part), []).append((index, leaf))
        gates = []
        gated: set[int] = set()
        for members in by_key.values():
            if len(members) < GROUP_MIN:
                continue
            patterns = AnyOfMatchers.build([leaf.patterns for _, leaf in members if leaf.patterns is not None])
            gates.append(_Gate(members[0][1], patterns, frozenset(index for index, _ in members)))
            gated.update(index for index, _ in members)
        ungated = frozenset(range(len(rules))) - gated
        return cls(rules, tuple(gates), ungated, tuple(r for i, r in enumerate(rules) if i in ungated))

    def candidates(self, ctx: Context) -> tuple[Rule, ...] | list[Rule]:
        """The stage's rules in load order, less those a closed gate rules out."""
        if not self.gates:
            return self.rules
        opened = [gate.members for gate in self.gates if gate.open(ctx)]
        if not opened:
            return self.ungated_rules
        keep = self.ungated.union(*opened)
        return [rule for index, rule in enumerate(self.rules) if index in keep]


def _required_pattern(node: Node | None) -> Leaf | None:
    """A pattern leaf the whole condition requires (itself, or a child of its top-level AND)."""
    if isinstance(node, Leaf):
        return node if node.patterns is not None else None
    if isinstance(node, AllOf):
        for child in node.children:
            found = _required_pattern(child)
            if found is not None:
                return found
    return None
