"""The shipped systemd units, as systemd itself reads them (no systemd as PID 1 needed).

- `systemd-analyze verify --recursive-errors=yes` prints nothing: no unknown key, no bad value,
  no dependency that cannot load. verify insists that ExecStart='s binary exists, so (as root)
  it runs in a private mount namespace with a tmpfs on /opt holding a stand-in for
  /opt/frontfilter/bin/frontfilter (the real one is exercised by test_nspawn.py).
- `systemd-analyze security --offline=true --threshold=N`: the exposure score stays at or below
  1.4 for the plain unit (it must bind port 25 itself) and 1.1 for the socket-activated one.
  The thresholds are the contract; lower them when the units get stricter, never raise them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.requires import installed

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
PLAIN = UNITS / "frontfilter.service"
ACTIVATED = UNITS / "socket-activated" / "frontfilter.service"
SOCKET = UNITS / "socket-activated" / "frontfilter.socket"
THRESHOLDS = {PLAIN: 14, ACTIVATED: 11}     # tenths: 14 = exposure 1.4

needs_analyze = installed(shutil.which("systemd-analyze") is not None,
                          "systemd-analyze is not installed (package systemd)")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze in a mount namespace of its own: a tmpfs on /run/systemd takes the stamp
    file it leaves there (the host stays untouched), a tmpfs on /opt the ExecStart= stand-in."""
    if os.geteuid() != 0:
        return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)
    script = ('mount -t tmpfs -o mode=0755 tmpfs /run/systemd && '
              'mount -t tmpfs -o mode=0755 tmpfs /opt && mkdir -p /opt/frontfilter/bin && '
              'ln -s /bin/true /opt/frontfilter/bin/frontfilter && exec systemd-analyze "$@"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "analyze", *args],
                          capture_output=True, text=True, timeout=60)


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return analyze("verify", "--recursive-errors=yes", "--man=no", *map(str, units))


@needs_analyze
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the mount namespace with the ExecStart stand-in")
@pytest.mark.parametrize("units", [(PLAIN,), (SOCKET, ACTIVATED)], ids=["plain", "socket-activated"])
def test_units_verify_without_a_word(units: tuple[Path, ...]) -> None:
    result = verify(*units)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the mount namespace with the ExecStart stand-in")
def test_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "frontfilter.service"
    broken.write_text(PLAIN.read_text().replace("ProtectKernelLogs=", "ProtectKernelLog="))
    result = verify(broken)
    assert result.returncode != 0 and "ProtectKernelLog" in result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", list(THRESHOLDS), ids=["plain", "socket-activated"])
def test_exposure_score_stays_under_its_threshold(unit: Path) -> None:
    result = analyze("security", "--offline=true", f"--threshold={THRESHOLDS[unit]}", "--no-pager", str(unit))
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    print(f"{unit.relative_to(REPO)}: exposure {score.group(1)}")
    assert result.returncode == 0, f"exposure {score.group(1)} > {THRESHOLDS[unit] / 10}\n{result.stdout}"


def test_the_two_services_differ_only_where_socket_activation_needs() -> None:
    """The socket-activated unit is the plain one minus the bind capability, plus the socket
    and PrivateUsers: a hardening added to one and forgotten in the other shows up here."""

    def settings(unit: Path) -> set[str]:
        return {line for line in unit.read_text().splitlines() if line and not line.startswith("#")}

    plain, activated = settings(PLAIN), settings(ACTIVATED)
    assert plain - activated == {
        "Description=frontfilter SMTP edge relay",
        "After=network-online.target",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    }
    assert activated - plain == {
        "Description=frontfilter SMTP edge relay (socket-activated)",
        "After=network-online.target frontfilter.socket",
        "Requires=frontfilter.socket",
        "CapabilityBoundingSet=",
        "PrivateUsers=yes",
        "Also=frontfilter.socket",
    }
