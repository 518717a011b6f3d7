"""Per-class answers for the introspection aiosmtpd repeats in every session.

aiosmtpd 1.4.6 runs `inspect.getmembers` on the protocol and on the handler (to find the
`auth_*` methods) and `inspect.signature` on the EHLO hook each time a client connects. With a
session per message that was 8 % of the event loop's time in the bench profile (py-spy, 5 KB
load). The answers depend only on the classes, so they are worked out once per class and
handed back bound to the instance: the same `auth_*` members `getmembers` would list (the
caller keeps only those), the same signature, and the same names `dir` would list.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import aiosmtpd
import aiosmtpd.smtp


class _CachingDir:
    """Stands in for `dir` inside `aiosmtpd.smtp`, which lists the handler and the protocol on
    every connection only to keep their `handle_*` and `smtp_*` methods: those names of the
    class are listed once, the instance's own added each time. Only those names, not sorted:
    aiosmtpd filters them by the same prefixes into dicts, so its dicts are the same (the
    protocol's ~200 other names cost a filter pass per connection)."""

    PREFIXES = ("smtp_", "handle_")

    def __init__(self) -> None:
        self._names: dict[type, tuple[list[str], frozenset[str]]] = {}

    def __call__(self, obj: Any) -> list[str]:
        cls = type(obj)
        known = self._names.get(cls)
        if known is None:
            listed = [n for n in dir(cls) if n.startswith(self.PREFIXES)]
            known = self._names[cls] = (listed, frozenset(listed))
        names, members = known
        own = [n for n in getattr(obj, "__dict__", ()) if n.startswith(self.PREFIXES) and n not in members]
        return names + own if own else names


class _CachingInspect:
    """Stands in for the `inspect` module inside `aiosmtpd.smtp`; anything else passes through."""

    def __init__(self) -> None:
        self._auth_names: dict[type, tuple[str, ...]] = {}
        self._signatures: dict[tuple[Any, bool], inspect.Signature] = {}

    def getmembers(self, obj: Any) -> list[tuple[str, Any]]:
        cls = type(obj)
        names = self._auth_names.get(cls)
        if names is None:
            names = self._auth_names[cls] = tuple(n for n in dir(cls) if n.startswith("auth_"))
        own = tuple(n for n in getattr(obj, "__dict__", {}) if n.startswith("auth_") and n not in names)
        return sorted(((n, getattr(obj, n)) for n in names + own), key=lambda member: member[0])

    def signature(self, function: Callable[..., Any]) -> inspect.Signature:
        key = (getattr(function, "__func__", function), hasattr(function, "__self__"))
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = inspect.signature(function)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


def install() -> None:
    """Only for the aiosmtpd this was read against (pinned in pyproject.toml)."""
    if aiosmtpd.__version__ == "1.4.6" and aiosmtpd.smtp.inspect is inspect:
        aiosmtpd.smtp.inspect = _CachingInspect()   # type: ignore[attr-defined]
        aiosmtpd.smtp.dir = _CachingDir()           # type: ignore[attr-defined]
