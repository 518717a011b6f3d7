"""Value matchers, compiled once when a rule set loads: strings (exact, glob, regex), networks, sizes.

Cost guarantees, so that a list of 100,000 entries costs O(1) per lookup:
- exact strings (no `*`, `?`, `[`) of every source of one condition go into one dict;
- globs of one condition are joined into ONE compiled regular expression (one named group per
  inline glob and per list file, so a match can still say which source it came from);
- explicit regexes are compiled one by one (there are few; each is the administrator's choice);
- networks are grouped by prefix length: a lookup masks the address once per distinct prefix
  length (at most 33 for IPv4, 129 for IPv6) and probes a dict.

Globs are case-insensitive, fnmatch-style (`*`, `?`, `[abc]`, `[!abc]`) and must match the
whole value. Regexes search (are not anchored), case-insensitive unless `case = true`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from frontfilter.model import IPAddress

GLOB_CHARS = frozenset("*?[")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def is_glob(text: str) -> bool:
    return any(char in GLOB_CHARS for char in text)


def glob_to_regex(glob: str) -> str:
    """Translate an fnmatch-style glob to a regex body (no groups, so joined globs stay cheap)."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        char = glob[i]
        if char == "*":
            while i + 1 < n and glob[i + 1] == "*":  # "**" is "*": avoid needless backtracking
                i += 1
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            start = i + 1
            if start < n and glob[start] == "!":
                start += 1
            end = glob.find("]", start + 1)  # a "]" right after "[" or "[!" is a member
            if end == -1:
                out.append(re.escape(char))
            else:
                negate = glob[i + 1] == "!"
                # Escape every member but "-" so nothing in a class reads as regex syntax.
                members = "".join(c if c == "-" else re.escape(c) for c in glob[start:end])
                out.append(("[^" if negate else "[") + members + "]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@dataclass
class StringMatcherBuilder:
    """Collects the patterns of one condition; `build()` compiles them once."""

    exact: dict[str, str] = field(default_factory=dict)      # lowered value -> source label
    globs: list[tuple[str, list[str]]] = field(default_factory=list)  # (label, globs)
    regexes: list[tuple[str, re.Pattern[str]]] = field(default_factory=list)

    def add_literal(self, text: str, label: str | None = None) -> None:
        """An inline pattern (label = itself) or a list entry (label = the list file)."""
        if is_glob(text):
            if label is None:
                self.globs.append((text, [text]))
            else:
                if not self.globs or self.globs[-1][0] != label:
                    self.globs.append((label, []))
                self.globs[-1][1].append(text)
        else:
            self.exact.setdefault(text.lower(), label or text)

    def add_regex(self, pattern: re.Pattern[str]) -> None:
        self.regexes.append((f"regex {pattern.pattern!r}", pattern))

    def build(self) -> StringMatcher:
        labels: dict[str, str] = {}
        alternatives = []
        for index, (label, globs) in enumerate(self.globs):
            name = f"g{index}"
            labels[name] = label
            body = "|".join(glob_to_regex(glob) for glob in globs)
            alternatives.append(f"(?P<{name}>{body})")
        joined = re.compile("|".join(alternatives), re.IGNORECASE | re.DOTALL) if alternatives else None
        return StringMatcher(dict(self.exact), joined, labels, tuple(self.regexes))


@dataclass(frozen=True)
class StringMatcher:
    exact: dict[str, str]
    globs: re.Pattern[str] | None
    glob_labels: dict[str, str]
    regexes: tuple[tuple[str, re.Pattern[str]], ...]

    def match(self, value: str) -> str | None:
        """The label of the first pattern that matches `value`, or None."""
        label = self.exact.get(value.lower())
        if label is not None:
            return label
        if self.globs is not None:
            found = self.globs.fullmatch(value)
            if found is not None and found.lastgroup is not None:
                return self.glob_labels[found.lastgroup]
        for label, pattern in self.regexes:
            if pattern.search(value):
                return label
        return None


_GROUP_OPEN = re.compile(r"\(\?P<g\d+>")
_REFERS_TO_GROUP = re.compile(r"\\[1-9]|\\g<|\(\?P=|\(\?\(")   # \1, \g<1>, (?P=name), (?(1)...)


@dataclass(frozen=True)
class AnyOfMatchers:
    """Whether a value matches ANY of many `StringMatcher`s, in a few C-level steps.

    Built once per rule set for the conditions of many rules on one key (engine.py): the exact
    strings go into one set, the globs into one pattern, and regexes of equal flags into one
    alternation where they compile together (each still on its own where they do not, e.g.
    back-references). It answers only yes or no; the rules it lets through are then evaluated
    one by one as before, so their reasons and order are unchanged.
    """

    exact: frozenset[str]
    globs: re.Pattern[str] | None
    regexes: tuple[re.Pattern[str], ...]

    @classmethod
    def build(cls, matchers: list[StringMatcher]) -> AnyOfMatchers:
        exact = frozenset().union(*(m.exact for m in matchers))
        glob_bodies = [_GROUP_OPEN.sub("(?:", m.globs.pattern) for m in matchers if m.globs is not None]
        globs = re.compile("|".join(f"(?:{body})" for body in glob_bodies), re.IGNORECASE | re.DOTALL) \
            if glob_bodies else None
        by_flags: dict[int, list[re.Pattern[str]]] = {}
        for matcher in matchers:
            for _label, pattern in matcher.regexes:
                by_flags.setdefault(pattern.flags, []).append(pattern)
        regexes: list[re.Pattern[str]] = []
        for flags, patterns in by_flags.items():
            # Joining renumbers groups: a pattern that refers to one by number stays alone.
            alone = [p for p in patterns if _REFERS_TO_GROUP.search(p.pattern)]
            joinable = [p for p in patterns if not _REFERS_TO_GROUP.search(p.pattern)]
            regexes.extend(alone)
            if not joinable:
                continue
            try:
                regexes.append(re.compile("|".join(f"(?:{p.pattern})" for p in joinable), flags))
            except re.error:      # a group name used twice, or inline flags not at the start
                regexes.extend(joinable)
        return cls(exact, globs, tuple(regexes))

    def matches(self, value: str) -> bool:
        if value.lower() in self.exact:
            return True
        if self.globs is not None and self.globs.fullmatch(value) is not None:
            return True
        return any(pattern.search(value) for pattern in self.regexes)


@dataclass(frozen=True)
class NetworkMatcher:
    # (ip version, prefix length) -> {network address >> host bits: label}
    tables: tuple[tuple[int, int, int, dict[int, str]], ...]

    @classmethod
    def build(cls, networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]) -> NetworkMatcher:
        grouped: dict[tuple[int, int], dict[int, str]] = {}
        for network, label in networks:
            host_bits = network.max_prefixlen - network.prefixlen
            table = grouped.setdefault((network.version, network.prefixlen), {})
            table.setdefault(int(network.network_address) >> host_bits, label)
        tables = tuple(
            (version, prefixlen, (32 if version == 4 else 128) - prefixlen, table)
            for (version, prefixlen), table in sorted(grouped.items(), key=lambda item: -item[0][1])
        )
        return cls(tables)

    def match(self, ip: IPAddress) -> str | None:
        # An IPv4 client seen through a dual-stack socket is still that IPv4 client.
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        number = int(ip)
        for version, _prefixlen, shift, table in self.tables:
            if version == ip.version:
                label = table.get(number >> shift)
                if label is not None:
                    return label
        return None


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR or a single address; host bits set are tolerated ("192.0.2.1/24" is 192.0.2.0/24)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def parse_size(value: object) -> int:
    """Bytes from an integer or a string with a unit: B, KB/MB/GB (1000), KiB/MiB/GiB (1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 10MiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        found = _SIZE.match(value)
        if found:
            number, unit = found.groups()
            return int(float(number) * _SIZE_UNITS[unit.lower() if unit else None])
    raise ValueError(f"{value!r} is not a size (use bytes or a unit: KiB, MiB, GiB, KB, MB, GB)")
