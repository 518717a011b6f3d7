"""Shared by the whole suite: the recording backend fixtures; tools `make test` installs
(tests/requires.py); a real relay, one-message sends and raw SMTP clients are in tests/harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import RecordingSink
from tests.requires import missing


@pytest.fixture(scope="module")
def module_sink() -> Iterator[RecordingSink]:
    """One recording backend for a module (its module-scoped relays forward to it)."""
    with RecordingSink() as backend:
        yield backend


@pytest.fixture
def sink(module_sink: RecordingSink) -> RecordingSink:
    """The module's recording backend, emptied for this test."""
    module_sink.messages.clear()
    return module_sink


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_installed"):
        reason = mark.kwargs.get("reason")
        if reason:
            missing(reason)
