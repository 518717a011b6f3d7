"""In CI (`CI=true`) a test whose tool `make test` installs is missing fails instead of skipping:
a green run must not hide a broken install step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO

NEEDS_A_MISSING_TOOL = '''
from tests.requires import installed, missing

@installed(False, "frobnicator is not installed (make test installs it)")
def test_marked():
    pass

def test_found_at_run_time():
    missing("frobnicator is not installed (make test installs it)")
'''


def run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_tool.py").write_text(NEEDS_A_MISSING_TOOL)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-rs", str(tmp_path / "test_tool.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120, check=False)


def test_a_missing_tool_skips_on_a_developer_machine(tmp_path: Path) -> None:
    done = run(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "2 skipped" in done.stdout and "frobnicator is not installed" in done.stdout


def test_a_missing_tool_fails_in_ci(tmp_path: Path) -> None:
    done = run(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 error" in done.stdout     # the mark fails the setup: an error
    assert "CI=true: `make test` installs it, so its absence is a broken install" in done.stdout
