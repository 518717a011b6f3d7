"""Tools and data that `make test` installs (the Makefile's TEST_DEBS): a test that needs one
skips where it is missing on a developer's machine, but fails in CI (`CI=true`), where a skip
would hide a broken install step behind a green run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """Called by a test or fixture that found its tool missing."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: `make test` installs it, so its absence is a broken install)",
                    pytrace=False)
    pytest.skip(reason)


def installed(present: bool, reason: str) -> pytest.MarkDecorator:
    """A mark for a test (or a module's `pytestmark`) that needs what `make test` installs."""
    return pytest.mark.needs_installed(reason=None if present else reason)
