"""Shared by the whole suite: see tests/requires.py (tools `make test` installs) and
tests/harness.py (a real relay, a recording backend, raw SMTP clients)."""

from __future__ import annotations

import pytest

from tests.requires import missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_installed"):
        reason = mark.kwargs.get("reason")
        if reason:
            missing(reason)
