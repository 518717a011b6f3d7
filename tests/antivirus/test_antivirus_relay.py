"""The antivirus end to end: real SMTP in, a real clamd, the relay as a process, a real backend.

What an administrator would check: infected mail is refused with a generic 554 (the signature
name only in the log), clean mail passes unchanged, clamd down means 4xx (or, configured, mail
passes) and the scan metric counts it, a message over clamd's stream limit gets the same
configured outcome instead of a hang, and `frontfilter scan` says what clamd found.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.antivirus.clamd_harness import (CLAM_EXE_SIGNATURE, EICAR_SIGNATURE, STREAM_MAX_LENGTH,
                                           TESTFILES, ClamdProcess, eicar, require_clamd)
from tests.content import corpus
from tests.harness import REPO, WAIT_TIMEOUT, Answer, RecordingSink, Relay, eventually, send, write_config
from tests.observability.support import http_get, relay_with_endpoint
from tests.requires import missing

SHIPPED_RULES = REPO / "rules"
GENERIC_REJECT = "554 5.7.1 Message content rejected"
# All files of Debian's clamav-testfiles (44), listed here so that each is its own test case;
# the tests skip, saying why, where the package is missing.
TESTFILE_NAMES = sorted(p.name for p in TESTFILES.glob("*")) if TESTFILES.is_dir() else ["clam.exe"]


def antivirus_only_rules(directory: Path) -> Path:
    """The shipped antivirus rule alone: proves clamd caught what the type rules also would."""
    rules = directory / "rules"
    rules.mkdir()
    shutil.copy(SHIPPED_RULES / "00-antivirus.toml", rules)
    return rules


def relay_config(directory: Path, sink: RecordingSink, clamd_socket: Path, *,
                 rules_dir: Path | None = None, **antivirus: Any) -> Path:
    return write_config(directory, [sink.port], rules_dir=rules_dir,
                        server={"max_message_size": "16MiB"},
                        limits={"connection_rate_per_ip": 0},    # every test client is 127.0.0.1
                        metrics={"listen": "127.0.0.1:0"},
                        antivirus={"address": str(clamd_socket), "timeout": "10s", **antivirus})



def scraped(relay: Relay, sample: str, labels: dict[str, str]) -> float:
    """A sample of the relay's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


def wait_metric(relay: Relay, sample: str, labels: dict[str, str], at_least: float) -> float:
    """/metrics is cached for about a second: poll, bounded."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    value = scraped(relay, sample, labels)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
        value = scraped(relay, sample, labels)
    return value


@pytest.fixture(scope="module")
def av_relay(module_sink: RecordingSink, clamd: ClamdProcess,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """The relay with the antivirus rule as its only rule."""
    directory = tmp_path_factory.mktemp("av-relay")
    config = relay_config(directory, module_sink, clamd.socket, rules_dir=antivirus_only_rules(directory))
    with Relay(config) as running:
        yield running


# ---- infected mail is refused, clean mail passes ----------------------------------------------

def attach_three_ways(name: str, data: bytes) -> dict[str, bytes]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return {
        "zipped": corpus.message(corpus.attachment(buffer.getvalue(), "application/zip", "documents.zip")),
        "renamed": corpus.message(corpus.attachment(data, "application/octet-stream", "meeting-notes.txt")),
        "as-text": corpus.message(corpus.attachment(data, "text/plain", "readme.txt")),
    }


def assert_rejected_for_virus(relay: Relay, sender: str, answer: Answer) -> dict[str, Any]:
    assert answer.said == GENERIC_REJECT            # generic: no signature name, no "virus"
    line = relay.wait_event("message", sender=sender)
    assert (line["verdict"], line["decided_by"]) == ("rejected", "virus")
    assert line["antivirus"]["result"] == "infected"
    return line


@pytest.mark.parametrize("how", ["zipped", "renamed", "as-text"])
def test_eicar_built_in_code_is_rejected_with_a_generic_reply(av_relay: Relay, sink: RecordingSink,
                                                               how: str) -> None:
    sender = f"eicar-{how}@example.net"
    answer = send(av_relay.port, attach_three_ways("eicar.com", eicar())[how], sender=sender)
    line = assert_rejected_for_virus(av_relay, sender, answer)
    assert line["antivirus"]["signatures"] == [f"{EICAR_SIGNATURE}.UNOFFICIAL"]   # in the log only
    assert sink.wait_for(1, timeout=0.3) == []


@pytest.mark.parametrize("name", TESTFILE_NAMES)
def test_clamav_testfile_attached_zipped_renamed_or_as_text_is_rejected(
        av_relay: Relay, sink: RecordingSink, name: str) -> None:
    if not (TESTFILES / name).is_file():
        missing(f"{TESTFILES / name} missing (Debian package clamav-testfiles)")
    for how, message in attach_three_ways(name, (TESTFILES / name).read_bytes()).items():
        sender = f"{name}-{how}@example.net"
        line = assert_rejected_for_virus(av_relay, sender, send(av_relay.port, message, sender=sender))
        # clam_cache_emax.tgz nests archives past clamd's MaxRecursion: found through
        # AlertExceedsMax (what the README recommends), not through the signature.
        expected = "Heuristics.Limits.Exceeded." if name == "clam_cache_emax.tgz" else CLAM_EXE_SIGNATURE
        assert line["antivirus"]["signatures"][0].startswith(expected), (how, line["antivirus"])
    assert sink.wait_for(1, timeout=0.1) == []


def test_clean_mail_passes_unchanged_and_is_counted(av_relay: Relay, sink: RecordingSink) -> None:
    before = scraped(av_relay, "frontfilter_antivirus_scans_total", {"result": "clean"})
    message = corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "invoice.pdf"))
    assert send(av_relay.port, message, sender="clean@example.net").ok
    [received] = sink.wait_for(1)
    assert received.data.endswith(message)
    line = av_relay.wait_event("message", sender="clean@example.net")
    assert (line["verdict"], line["antivirus"]["result"]) == ("accepted", "clean")
    assert wait_metric(av_relay, "frontfilter_antivirus_scans_total", {"result": "clean"}, before + 1) >= before + 1
    assert wait_metric(av_relay, "frontfilter_antivirus_scan_seconds_count", {}, 1) >= 1


def test_with_the_shipped_rules_the_virus_rule_decides_first(sink: RecordingSink, clamd: ClamdProcess,
                                                             tmp_path: Path) -> None:
    # clam.exe is also an executable by type: the virus rule runs first and names the finding.
    clam = (TESTFILES / "clam.exe")
    if not clam.is_file():
        missing(f"{clam} missing (Debian package clamav-testfiles)")
    with Relay(relay_config(tmp_path, sink, clamd.socket, rules_dir=SHIPPED_RULES)) as relay:
        message = corpus.message(corpus.attachment(clam.read_bytes(), "application/octet-stream", "setup.exe"))
        assert_rejected_for_virus(relay, "alice@example.net", send(relay.port, message))
        assert send(relay.port, corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "a.pdf"))).ok
    assert len(sink.wait_for(1)) == 1


# ---- clamd unavailable: the configured outcome, counted -----------------------------------------

def test_clamd_stopped_gives_4xx_by_default_and_is_counted(sink: RecordingSink, tmp_path: Path) -> None:
    require_clamd()
    with ClamdProcess() as own_clamd, Relay(relay_config(tmp_path, sink, own_clamd.socket)) as relay:
        message = corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "invoice.pdf"))
        assert send(relay.port, message, sender="before@example.net").ok
        own_clamd.stop()
        answer = send(relay.port, message, sender="after@example.net")
        assert answer.said == "451 4.3.0 Message could not be checked, try again later"
        line = relay.wait_event("message", sender="after@example.net")
        assert (line["verdict"], line["decided_by"]) == ("tempfailed", "[antivirus] on_error")
        assert line["antivirus"]["result"] == "error" and line["antivirus"]["on_error"] == "tempfail"
        assert str(own_clamd.socket) in relay.wait_event("antivirus_failed")["detail"]
        assert wait_metric(relay, "frontfilter_antivirus_scans_total", {"result": "error"}, 1) == 1
        assert wait_metric(relay, "frontfilter_messages_total", {"verdict": "tempfailed"}, 1) == 1
    assert len(sink.wait_for(1)) == 1          # only the message sent while clamd ran


def test_readiness_follows_clamd_where_its_failure_refuses_mail(tmp_path: Path) -> None:
    require_clamd()
    with ClamdProcess() as own_clamd:
        with relay_with_endpoint(tmp_path, antivirus={"address": str(own_clamd.socket)}) as (relay, port):
            status, body = eventually(lambda: (r := http_get(port, "/readyz"))[0] == 200 and r)
            assert "antivirus: ok: clamd answered" in body
            own_clamd.stop()
            status, body = eventually(lambda: (r := http_get(port, "/readyz"))[0] == 503 and r, timeout=60)
            assert "antivirus: FAILING: clamd at " in body
            relay.wait_event("readiness_changed", check="antivirus", ok=False)


def test_clamd_stopped_with_on_error_accept_passes_and_is_counted(sink: RecordingSink, tmp_path: Path) -> None:
    require_clamd()
    with ClamdProcess() as own_clamd:
        own_clamd.stop()
        config = relay_config(tmp_path, sink, own_clamd.socket, on_error="accept")
        with Relay(config) as relay:
            message = corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "invoice.pdf"))
            assert send(relay.port, message, sender="unscanned@example.net").ok
            line = relay.wait_event("message", sender="unscanned@example.net")
            assert line["verdict"] == "accepted"
            assert line["antivirus"]["result"] == "error" and line["antivirus"]["on_error"] == "accept"
            assert wait_metric(relay, "frontfilter_antivirus_scans_total", {"result": "error"}, 1) == 1
    assert len(sink.wait_for(1)) == 1


# ---- bigger than clamd's StreamMaxLength: the configured outcome, not a hang ----------------------

def big_message() -> bytes:
    # Base64 of random bytes: 1.37 x the payload, over the test clamd's StreamMaxLength (4 MiB).
    import os

    message = corpus.message(corpus.attachment(os.urandom(4 * 1024 * 1024), "application/octet-stream", "scan.bin"))
    assert STREAM_MAX_LENGTH < len(message) < 16 * 1024 * 1024
    return message


def test_over_clamds_stream_limit_gets_4xx_by_default(av_relay: Relay, sink: RecordingSink) -> None:
    answer = send(av_relay.port, big_message(), sender="big@example.net")
    assert answer.said == "451 4.3.0 Message could not be checked, try again later"
    line = av_relay.wait_event("message", sender="big@example.net")
    assert line["antivirus"]["result"] == "too_big"
    assert "StreamMaxLength" in line["antivirus"]["detail"]
    assert wait_metric(av_relay, "frontfilter_antivirus_scans_total", {"result": "too_big"}, 1) >= 1
    assert sink.wait_for(1, timeout=0.3) == []


def test_over_clamds_stream_limit_passes_with_on_error_accept(sink: RecordingSink, clamd: ClamdProcess,
                                                              tmp_path: Path) -> None:
    config = relay_config(tmp_path, sink, clamd.socket, rules_dir=antivirus_only_rules(tmp_path),
                          on_error="accept")
    with Relay(config) as relay:
        assert send(relay.port, big_message(), sender="big@example.net").ok
        line = relay.wait_event("message", sender="big@example.net")
        assert (line["verdict"], line["antivirus"]["result"]) == ("accepted", "too_big")
    assert len(sink.wait_for(1)) == 1


def test_over_max_size_is_not_sent_and_gets_the_configured_outcome(sink: RecordingSink, clamd: ClamdProcess,
                                                                   tmp_path: Path) -> None:
    config = relay_config(tmp_path, sink, clamd.socket, rules_dir=antivirus_only_rules(tmp_path),
                          max_size="2KiB")
    with Relay(config) as relay:
        answer = send(relay.port, corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "a.pdf"),
                                                 text="x" * 3000), sender="big@example.net")
        assert answer.code == 451
        detail = relay.wait_event("message", sender="big@example.net")["antivirus"]["detail"]
        assert "max_size" in detail and "not sent" in detail


# ---- frontfilter scan ---------------------------------------------------------------------------

def run_scan(config: Path, message: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", "scan", str(message), "--config", str(config),
                           *extra], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_frontfilter_scan_shows_the_antivirus_verdict(clamd: ClamdProcess, tmp_path: Path) -> None:
    config = write_config(tmp_path, [25], antivirus={"address": str(clamd.socket)})     # scan only: no backend
    infected = tmp_path / "infected.eml"
    infected.write_bytes(corpus.message(corpus.attachment(corpus.zip_of({"a.txt": eicar()}), "application/zip", "a.zip")))
    clean = tmp_path / "clean.eml"
    clean.write_bytes(corpus.plain())

    out = run_scan(config, infected)
    assert out.returncode == 1, out.stderr                 # reject
    assert f"antivirus: infected: {EICAR_SIGNATURE}.UNOFFICIAL" in out.stdout
    assert "decision: reject by virus -> 554 5.7.1 Message content rejected" in out.stdout

    out = run_scan(config, infected, "--json")
    report = json.loads(out.stdout)
    assert report["antivirus"]["signatures"] == [f"{EICAR_SIGNATURE}.UNOFFICIAL"]
    assert (report["verdict"], report["decided_by"]) == ("reject", "virus")

    out = run_scan(config, clean)
    assert out.returncode == 0 and "antivirus: clean" in out.stdout


def test_frontfilter_scan_with_clamd_down_shows_the_configured_outcome(tmp_path: Path) -> None:
    config = write_config(tmp_path, [25], antivirus={"address": str(tmp_path / "no-clamd.sock")})
    message = tmp_path / "clean.eml"
    message.write_bytes(corpus.plain())
    out = run_scan(config, message)
    assert out.returncode == 3, out.stderr                 # tempfail
    assert f"antivirus: error: clamd at {tmp_path / 'no-clamd.sock'}: No such file or directory" in out.stdout
    assert "Traceback" not in out.stderr
