"""The rules engine: rule files -> RuleSet; facts -> Verdict. Pure: no I/O while evaluating.

Public API:
    load_ruleset(rules_dir) -> RuleSet          raises RuleSetError(errors: list[str])
    RuleSet.evaluate(facts, *, soft_reject=False) -> Verdict
    RuleSet.rules, len(ruleset), RuleSet.stages, RuleSet.fingerprint
    Facts, Verdict, Match, StripRequest, Action, Mode, Rule
The administrator's documentation of the rule format is rules/README.md.
"""

from frontfilter.rules.engine import RuleSet
from frontfilter.rules.facts import Facts
from frontfilter.rules.loader import load_ruleset
from frontfilter.rules.model import (
    Action,
    AddHeader,
    Match,
    Mode,
    Rule,
    RuleSetError,
    StripRequest,
    Verdict,
)

__all__ = [
    "Action", "AddHeader", "Facts", "Match", "Mode", "Rule",
    "RuleSet", "RuleSetError", "StripRequest", "Verdict", "load_ruleset",
]
