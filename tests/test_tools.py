"""tools/ensure-debs.sh, which `make run` and `make test` start with on a fresh machine.

Run with stand-ins for dpkg-query and apt-get on PATH (nothing is installed), so what is
checked is the script's own logic: its exit status, the policy-rc.d it puts in place and
removes, and what a newcomer sees when apt fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO

SCRIPT = REPO / "tools" / "ensure-debs.sh"


def stand_ins(bin_dir: Path, apt_status: int) -> Path:
    """dpkg-query says every package is missing; apt-get logs its arguments, and its install
    exits as told (its dry run and update succeed)."""
    bin_dir.mkdir()
    calls = bin_dir / "apt-calls"
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\ncase "$*" in *--dry-run*|update*) exit 0 ;; esac\n'
        f'echo "E: Unable to locate package $*"\nexit {apt_status}\n')
    for tool in ("dpkg-query", "apt-get"):
        (bin_dir / tool).chmod(0o755)
    return calls


def ensure(tmp_path: Path, policy: Path, apt_status: int = 0) -> subprocess.CompletedProcess[str]:
    stand_ins(tmp_path / "bin", apt_status)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "POLICY_RC_D": str(policy)}
    return subprocess.run(["sh", str(SCRIPT), "swaks"], capture_output=True, text=True, env=env, timeout=60)


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the script installs only as root")


def test_an_install_succeeds_where_a_policy_rc_d_already_exists(tmp_path: Path) -> None:
    # Debian's container images ship one; the script once exited 1 after a good install there.
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    done = ensure(tmp_path, policy)
    assert done.returncode == 0, done.stderr
    assert policy.exists()           # not ours: left in place
    assert "installing Debian packages: swaks" in done.stdout


def test_its_own_policy_rc_d_is_removed_after_the_install(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    done = ensure(tmp_path, policy)
    assert done.returncode == 0, done.stderr
    assert not policy.exists()
    calls = (tmp_path / "bin" / "apt-calls").read_text()
    assert "install -y -qq --no-install-recommends swaks" in calls


def test_a_failed_install_says_why(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    done = ensure(tmp_path, policy, apt_status=100)
    assert done.returncode != 0
    assert "apt-get install swaks failed" in done.stderr
    assert "E: Unable to locate package" in done.stderr     # apt's own words, not silence
    assert not policy.exists()
