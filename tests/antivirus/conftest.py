"""One real clamd for the antivirus tests that only read from it; tests that stop clamd start
their own (it starts in milliseconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.antivirus.clamd_harness import ClamdProcess


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdProcess]:
    with ClamdProcess() as running:
        yield running
