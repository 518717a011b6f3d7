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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from frontfilter.model import Stage
from frontfilter.rules.conditions.tree import Context, condition_keys, evaluate_rule
from frontfilter.rules.facts import Facts
from frontfilter.rules.model import Action, Match, Mode, Rule, StripRequest, Verdict


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    fingerprint: str = ""  # hash of the rule and list files' contents, for the reload log line
    _by_stage: dict[Stage, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)
    _reads: dict[Stage, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_stage = {stage: tuple(r for r in self.rules if r.stage is stage) for stage in Stage}
        object.__setattr__(self, "_by_stage", {s: rules for s, rules in by_stage.items() if rules})
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

    def rules_for(self, stage: Stage) -> tuple[Rule, ...]:
        return self._by_stage.get(stage, ())

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
        for rule in self.rules_for(facts.stage):
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
