"""The compiled condition tree and how it is evaluated. Pure: reads `Facts`, does no I/O.

A node answers `eval(ctx, part)` with the reasons it holds (a tuple of human-readable lines) or
None when it does not hold. Reasons are the explanation `frontfilter scan` prints.

Attachment conditions are evaluated per part: a rule with any attachment condition is evaluated
once per part of the message, and every attachment condition in its tree — at top level, under
`attachment`, inside `any` or `not`, however nested — looks at that same part. So
`not = { attachment.detected_type = "application/pdf" }` means "this part is not a PDF", and a
rule matches when ONE part makes the whole tree true. Message conditions do not depend on the
part; their result is cached per evaluation so a body regex runs once, not once per part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from frontfilter.content.facts import MessageView, Part
from frontfilter.rules.facts import Facts
from frontfilter.rules.matchers import StringMatcher

Reasons = tuple[str, ...] | None


@dataclass
class Context:
    """The state of one `RuleSet.evaluate` call."""

    facts: Facts
    cache: dict[int, Reasons] = field(default_factory=dict)

    @property
    def message(self) -> MessageView | None:
        return self.facts.message


class Node(Protocol):
    # Read-only (the nodes are frozen dataclasses).
    @property
    def per_part(self) -> bool: ...

    @property
    def spec(self) -> str: ...  # the condition as written, for "not (...)" reasons

    def eval(self, ctx: Context, part: Part | None) -> Reasons: ...


@dataclass(frozen=True)
class Leaf:
    """One condition: which values of the facts it looks at, and the test for one value.

    `values` yields what is looked at (several for `header.X` or recipients at stage data);
    `test` returns the tail of the reason ("example.com matches *.example.com") or None.
    The leaf holds when any value passes its test.
    """

    key: str
    spec: str
    per_part: bool
    values: Callable[[Facts, Part | None], Iterable[Any]]
    test: Callable[[Any], str | None]
    # The string patterns behind `test`, when it is a plain pattern match: the rule set joins
    # those of many rules on one key into a single pre-check (engine.py).
    patterns: StringMatcher | None = None

    def eval(self, ctx: Context, part: Part | None) -> Reasons:
        if not self.per_part:
            if id(self) in ctx.cache:
                return ctx.cache[id(self)]
        result: Reasons = None
        for value in self.values(ctx.facts, part):
            tail = self.test(value)
            if tail is not None:
                result = (f"{_where(part) if self.per_part else ''}{self.key} {tail}",)
                break
        if not self.per_part:
            ctx.cache[id(self)] = result
        return result



def _where(part: Part | None) -> str:
    return f"attachment {part.path}: " if part is not None else ""


@dataclass(frozen=True)
class AllOf:
    children: tuple[Node, ...]
    spec: str
    per_part: bool

    def eval(self, ctx: Context, part: Part | None) -> Reasons:
        reasons: list[str] = []
        for child in self.children:
            found = child.eval(ctx, part)
            if found is None:
                return None
            reasons.extend(found)
        return tuple(reasons)


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Node, ...]
    spec: str
    per_part: bool

    def eval(self, ctx: Context, part: Part | None) -> Reasons:
        for child in self.children:
            found = child.eval(ctx, part)
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class NotOf:
    child: Node
    spec: str
    per_part: bool

    def eval(self, ctx: Context, part: Part | None) -> Reasons:
        if self.child.eval(ctx, part) is not None:
            return None
        return (f"{_where(part) if self.per_part else ''}not ({self.child.spec})",)


def all_of(children: list[Node], spec: str) -> Node:
    if len(children) == 1:
        return children[0]
    # Message conditions first: they are cached and cheap, and usually decide alone.
    ordered = sorted(children, key=lambda child: child.per_part)
    return AllOf(tuple(ordered), spec, any(child.per_part for child in ordered))


def condition_keys(node: Node | None) -> frozenset[str]:
    """Every condition key in a tree (`client.ip`, `spf.result`, `attachment.filename`...)."""
    if node is None:
        return frozenset()
    if isinstance(node, Leaf):
        return frozenset({node.key})
    children = (node.child,) if isinstance(node, NotOf) else getattr(node, "children", ())
    return frozenset().union(*(condition_keys(child) for child in children))


def evaluate_rule(condition: Node | None, ctx: Context) -> tuple[Reasons, tuple[Part, ...]]:
    """Whether a rule's tree holds, its reasons, and (for per-part rules) the parts that made it hold."""
    if condition is None:
        return ("always",), ()
    if not condition.per_part:
        return condition.eval(ctx, None), ()
    message = ctx.message
    if message is None:
        return None, ()
    reasons: dict[str, None] = {}  # ordered set: message reasons repeat for every part
    parts: list[Part] = []
    for part in message.parts:
        found = condition.eval(ctx, part)
        if found is not None:
            parts.append(part)
            reasons.update(dict.fromkeys(found))
    if not parts:
        return None, ()
    return tuple(reasons), tuple(parts)
