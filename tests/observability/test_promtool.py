"""promtool on what frontfilter ships: the alert rules lint clean and pass their unit tests, the
scrape config example is valid, and the exposition lints clean (the live one: test_prometheus)."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client import generate_latest

from frontfilter import metrics
from tests.observability.promql import ALERT_RULES, ALERT_TESTS, SCRAPE_CONFIG, rule_count
from tests.observability.test_observe import MOVES
from tests.requires import installed

PROMTOOL = shutil.which("promtool")
pytestmark = installed(PROMTOOL is not None,
                       "promtool is not installed (Debian package 'prometheus'; `make test` installs it)")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin.decode() if stdin else None, capture_output=True,
                          text=True, timeout=60, cwd=ALERT_RULES.parent)


def test_alert_rules_are_valid_and_lint_clean() -> None:
    done = promtool("check", "rules", "--lint=all", "--lint-fatal", ALERT_RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {rule_count()} rules found" in done.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", ALERT_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_scrape_config_example_is_valid() -> None:
    done = promtool("check", "config", "--lint=all", "--lint-fatal", SCRAPE_CONFIG.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_exposition_of_every_metric_lints_clean() -> None:
    """Every family with samples (each moved once here), as promtool check metrics sees it."""
    for move in MOVES:
        move.event()
    done = promtool("check", "metrics", stdin=generate_latest(metrics.REGISTRY))
    assert done.returncode == 0 and done.stdout == done.stderr == "", done.stdout + done.stderr
