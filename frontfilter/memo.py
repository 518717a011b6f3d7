"""`remembered`: `functools.lru_cache` for parses whose input a client chooses.

A cache of the most recent answers pays where values repeat from message to message (the same
domains, the same From: fields), but it keeps its keys: one of a client's making may be huge
(a From: field of 250 KB), and thousands of those would pin gigabytes. Arguments longer than
`longest` characters are answered without being kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

Key = TypeVar("Key", str, tuple[str, ...])
Value = TypeVar("Value")


def remembered(maxsize: int, longest: int) -> Callable[[Callable[[Key], Value]], Callable[[Key], Value]]:
    """Keep the `maxsize` most recent answers of a function of one str (or tuple of str)
    argument, for arguments of at most `longest` characters (a tuple's summed)."""
    def wrap(function: Callable[[Key], Value]) -> Callable[[Key], Value]:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def answer(key: Key) -> Value:
            size = len(key) if isinstance(key, str) else sum(map(len, key))
            return cached(key) if size <= longest else function(key)

        # The lru_cache's own inspection, on the wrapper (functions take attributes; mypy does
        # not know these two).
        answer.cache_info = cached.cache_info      # type: ignore[attr-defined]
        answer.cache_clear = cached.cache_clear    # type: ignore[attr-defined]
        return answer
    return wrap
