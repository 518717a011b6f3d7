"""ClamAV's test files (Debian's clamav-testfiles: 44 harmless files, each carrying the clam.exe
test program in another container or disguise) with clamd off: the shipped rules alone refuse
or strip every one, whatever name and type the sender gives it, and `frontfilter scan` names the
rule and the reason.

One relay for all files (sync mode: the decision is the same code in both modes, and
tests/test_fail_closed.py runs both). Skipped, saying why, where the package is not installed
(`make test` installs it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.content import fail_closed_corpus as corpus
from tests.harness import REPO, RecordingSink, Relay
from tests.test_fail_closed import assert_refused_or_stripped, relay_config, send_8bit
from tests.requires import installed

TESTFILES = Path("/usr/share/clamav-testfiles")
NAMES = sorted(p.name for p in TESTFILES.iterdir() if p.is_file()) if TESTFILES.is_dir() else []
CLAM_EXE = TESTFILES / "clam.exe"
SHIPPED_RULES = {rule["name"] for path in sorted((REPO / "rules").glob("*.toml"))
                 for rule in tomllib.loads(path.read_text()).get("rule", [])}

pytestmark = installed(bool(NAMES), f"{TESTFILES} is missing or empty "
                       "(Debian package clamav-testfiles; `make test` installs it)")


@pytest.fixture(scope="module")
def relay(module_sink: RecordingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """The shipped rules, no [antivirus] section: clamd plays no part."""
    with Relay(relay_config(tmp_path_factory.mktemp("clamav-testfiles"), module_sink, "sync")) as running:
        yield running


def as_attachment(data: bytes, name: str, content_type: str) -> bytes:
    return corpus.with_text(corpus.attached(data, content_type, name))


def needles(data: bytes) -> tuple[bytes, ...]:
    """The file itself, and the test program where it is there to be found."""
    return (data, CLAM_EXE.read_bytes()) if CLAM_EXE.is_file() else (data,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["own-name", "renamed-report.pdf"])
def test_testfile_is_refused_or_stripped_through_the_relay(relay: Relay, sink: RecordingSink,
                                                           name: str, how: str) -> None:
    data = (TESTFILES / name).read_bytes()
    message = (as_attachment(data, name, "application/octet-stream") if how == "own-name"
               else as_attachment(data, "report.pdf", "application/pdf"))
    assert_refused_or_stripped(send_8bit(relay.port, message), sink, needles(data))


DECISION = re.compile(r"^  decision: (\S+) by (\S+)", re.M)
STRIPPED = re.compile(r"^stripped: part \S+ \(rule (\S+)\)", re.M)


@pytest.mark.parametrize("name", NAMES)
def test_scan_names_the_rule_and_the_reason(tmp_path: Path, name: str) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(as_attachment((TESTFILES / name).read_bytes(), name, "application/octet-stream"))
    result = subprocess.run([sys.executable, "-m", "frontfilter", "scan", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    output = result.stdout
    decided = [rule for action, rule in DECISION.findall(output) if action in ("reject", "tempfail")]
    deciding = decided + STRIPPED.findall(output)
    assert deciding, f"no rule refused or stripped {name}:\n{output}"
    for rule in deciding:
        assert rule in SHIPPED_RULES, rule
        reasons = re.search(rf"^  {re.escape(rule)} \([a-z]+, [a-z]+\)[^:]*: (.+)$", output, re.M)
        assert reasons and reasons.group(1).strip(), f"{rule} matched without a reason:\n{output}"
