"""Value parsers for condition tables: string patterns, networks, ranges, enum names.

Each parser reports problems through `Env.error(key, text)` and returns None instead of raising,
so one load collects every error. The matchers they build are in `rules.matchers`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from frontfilter.model import Stage
from frontfilter.rules.matchers import (
    NetworkMatcher,
    StringMatcher,
    StringMatcherBuilder,
    parse_network,
    parse_size,
)


class ListFileError(Exception):
    """A list file (`"@lists/x.txt"`) that cannot be read; the message says why."""


@dataclass
class Env:
    """What the compiler needs from the loader: the rule's stage, error reporting, list files."""

    stage: Stage | None                                  # None: the stage itself was invalid
    error: Callable[[str, str], None]                    # (key, problem)
    read_list: Callable[[str], list[tuple[int, str]]]    # path -> [(line number, entry)]


def strings(value: Any, path: str, env: Env, *, regex_only: bool = False,
             normalise: Callable[[str], str] = lambda text: text) -> StringMatcher | None:
    """Globs, `{ regex = ... }` tables and `"@list/file"` references -> one matcher."""
    items = value if isinstance(value, list) else [value]
    if not items:
        env.error(path, "must not be an empty list")
        return None
    builder = StringMatcherBuilder()
    ok = True
    for item in items:
        if isinstance(item, dict):
            pattern = regex(item, path, env)
            if pattern is None:
                ok = False
            else:
                builder.add_regex(pattern)
        elif isinstance(item, str) and regex_only:
            env.error(path, 'takes { regex = "..." } tables, not plain strings')
            ok = False
        elif isinstance(item, str) and item.startswith("@"):
            entries = list_entries(item[1:], path, env)
            if entries is None:
                ok = False
            else:
                for _line, entry in entries:
                    builder.add_literal(normalise(entry), item[1:])
        elif isinstance(item, str):
            builder.add_literal(normalise(item))
        else:
            kinds = '{ regex = "..." } tables' if regex_only else 'strings or { regex = "..." } tables'
            env.error(path, f"must be {kinds} (or a list of them), not {type_name(item)}")
            ok = False
    return builder.build() if ok else None


def regex(table: dict[str, Any], path: str, env: Env) -> re.Pattern[str] | None:
    unknown = sorted(set(table) - {"regex", "case"})
    if unknown:
        env.error(f"{path}.{unknown[0]}", "unknown key (a regex table takes regex and case)")
        return None
    pattern, case = table.get("regex"), table.get("case", False)
    if not isinstance(pattern, str):
        env.error(f"{path}.regex", "missing" if pattern is None else f"must be a string, not {type_name(pattern)}")
        return None
    if not isinstance(case, bool):
        env.error(f"{path}.case", f"must be true or false, not {type_name(case)}")
        return None
    try:
        return re.compile(pattern, 0 if case else re.IGNORECASE)
    except re.error as error:
        env.error(path, f"bad regex {pattern!r}: {error}")
        return None


def list_entries(ref: str, path: str, env: Env) -> list[tuple[int, str]] | None:
    try:
        return env.read_list(ref)
    except ListFileError as error:
        env.error(path, f"list {ref}: {error}")
        return None


def networks(value: Any, path: str, env: Env) -> NetworkMatcher | None:
    items = value if isinstance(value, list) else [value]
    if not items:
        env.error(path, "must not be an empty list")
        return None
    networks = []
    ok = True
    for item in items:
        if not isinstance(item, str):
            env.error(path, f"must be a CIDR string or a list of them, not {type_name(item)}")
            ok = False
            continue
        if item.startswith("@"):
            entries = list_entries(item[1:], path, env)
            if entries is None:
                ok = False
                continue
            for line, entry in entries:
                try:
                    networks.append((parse_network(entry), item[1:]))
                except ValueError:
                    env.error(path, f"list {item[1:]} line {line}: {entry!r} is not an IP network")
                    ok = False
        else:
            try:
                networks.append((parse_network(item), item))
            except ValueError:
                env.error(path, f"{item!r} is not an IP network")
                ok = False
    return NetworkMatcher.build(networks) if ok else None


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number, not {value!r}")
    return value


def size_value(value: Any) -> int:
    return parse_size(value)


def value_range(value: Any, path: str, env: Env, parse: Callable[[Any], int]) -> Callable[[int], str | None] | None:
    """`{ over = X }`, `{ under = Y }` or both: strictly greater than X, strictly less than Y."""
    if not isinstance(value, dict) or not value:
        env.error(path, "must be a table { over = ... } and/or { under = ... }")
        return None
    bounds: dict[str, int] = {}
    for key, item in value.items():
        if key not in ("over", "under"):
            env.error(f"{path}.{key}", "unknown key (use over or under)")
            return None
        try:
            bounds[key] = parse(item)
        except ValueError as error:
            env.error(f"{path}.{key}", str(error))
            return None
    over, under = bounds.get("over"), bounds.get("under")
    if over is not None and under is not None and over + 1 >= under:
        env.error(path, "over and under leave nothing between them")
        return None

    def test(number: int) -> str | None:
        if over is not None and number <= over:
            return None
        if under is not None and number >= under:
            return None
        words = ([f"over {over}"] if over is not None else []) + ([f"under {under}"] if under is not None else [])
        return f"{number} is {' and '.join(words)}"

    return test


def names(value: Any, path: str, env: Env, kind: type[enum.Enum]) -> Callable[[frozenset[Any]], str | None] | None:
    """`true` (any of them), `false` (none of them) or a list of names of `kind`."""
    if isinstance(value, bool):
        if value:
            return lambda found: f"{', '.join(sorted(m.value for m in found))}" if found else None
        return lambda found: "none" if not found else None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        env.error(path, f"must be true, false or a non-empty list of names, not {type_name(value)}")
        return None
    valid = {member.value: member for member in kind}
    wanted = set()
    for item in value:
        if item not in valid:
            env.error(path, f"unknown name {item!r} (one of {', '.join(valid)})")
            return None
        wanted.add(valid[item])

    def test(found: frozenset[Any]) -> str | None:
        hit = found & wanted
        return ", ".join(sorted(member.value for member in hit)) if hit else None

    return test


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
