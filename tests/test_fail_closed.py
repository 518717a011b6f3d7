"""Fail closed on content, through the live relay: the acceptance of the issue.

Each case of tests/content/fail_closed_corpus.py once carried an executable (or a script, a
macro, an active document) past inspection to the backend. Sent through the relay with the
shipped rules and no clamd, in sync and in queue mode, each is refused (5xx; 451 for the
deadline) or arrives with what it carried gone, as a mail client would look for it (Python's
email under both policies, plus the lenient readings: `corpus.carries`). Each case's control,
the same message without the trick, arrives untouched; so does the clean corpus.
"""

from __future__ import annotations

import bz2
import lzma
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libarchive
import magic
import pytest
import tnefparse

from tests.content import fail_closed_corpus as corpus
from tests.harness import Answer, RawClient, RecordingSink, Relay, send, write_config
from tests.test_relay import answer_to_data, strip_received

MODES = ["sync", "queue"]
EXECUTABLE_TYPES = {"application/vnd.microsoft.portable-executable", "application/x-dosexec"}
RECEIVED = b"Received: from client.test (localhost [127.0.0.1]) by mx.test; Thu, 1 Jan 2025 00:00:00 +0000\r\n"


def relay_config(directory: Path, sink: RecordingSink, mode: str, **sections: dict[str, Any]) -> Path:
    return write_config(directory, [sink.port],
                        server={"max_message_size": "16MiB"},
                        limits={"connection_rate_per_ip": 0},     # every test client is 127.0.0.1
                        backend={"servers": [f"127.0.0.1:{sink.port}"], "mode": mode}, **sections)


@pytest.fixture(scope="module", params=MODES)
def relay(request: pytest.FixtureRequest, module_sink: RecordingSink,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """The relay with the shipped rules and no [antivirus] section (clamd off)."""
    with Relay(relay_config(tmp_path_factory.mktemp(request.param), module_sink, request.param)) as running:
        yield running



def send_8bit(port: int, data: bytes) -> Answer:
    """The corpus carries raw 8-bit bytes: sent as BODY=8BITMIME, as a mail client would."""
    return send(port, data, mail_options=("BODY=8BITMIME",), timeout=60)


def assert_refused_or_stripped(answer: Answer, sink: RecordingSink, needles: tuple[bytes, ...]) -> None:
    """Refused (5xx, nothing delivered), or delivered with none of `needles` decodable by a
    client."""
    if answer.code == 250:
        delivered = sink.wait_for(1)
        assert len(delivered) == 1, f"250 but {len(delivered)} messages reached the backend"
        left = corpus.carries(delivered[0].data, needles)
        assert not left, (f"250, and the backend got the payload: {len(left)} of {len(needles)} needles "
                          f"decodable ({', '.join(repr(n[:12]) for n in left)})")
    else:
        assert 500 <= answer.code < 600, answer
        assert sink.wait_for(1, timeout=0.3) == []


def assert_delivered_untouched(answer: Answer, sink: RecordingSink, sent: bytes) -> None:
    assert answer.code == 250, f"control refused: {answer.said}"
    [received] = sink.wait_for(1)
    assert strip_received(received.data) == sent, "control delivered changed"


# ---- the corpus is what it claims to be ---------------------------------------------------------------

@pytest.mark.parametrize("case", list(corpus.CASES))
def test_each_trick_hands_its_payload_to_a_client_and_its_control_does_not(case: str) -> None:
    """Unrelayed, with a field on top as delivered: a client decodes the payload out of the
    attack (so a pass below is the relay's doing), and nothing of it out of the control."""
    built = corpus.CASES[case]()
    assert corpus.carries(RECEIVED + built.attack, built.needles)
    assert corpus.carries(RECEIVED + built.control, built.needles) == []


def _libarchive_members(data: bytes) -> dict[str, bytes]:
    with libarchive.memory_reader(data) as archive:
        return {entry.pathname: b"".join(entry.get_blocks()) for entry in archive}


CONTAINER_READERS = {   # how the format's own readers get the executable back out
    **{name: _libarchive_members for name in ("7z", "rar", "cab", "cpio", "cpio-newc", "tar.xz", "tar.bz2",
                                               "tar.zst")},
    "exe.xz": lambda data: {"": lzma.decompress(data)},
    "exe.bz2": lambda data: {"": bz2.decompress(data)},
    "tnef": lambda data: {a.name: a.data for a in tnefparse.TNEF(data).attachments},
}


@pytest.mark.parametrize("name", sorted(CONTAINER_READERS))
def test_each_container_gives_the_executable_back_to_its_reader(name: str) -> None:
    payload = corpus.CASES[f"6-{name}"]().needles[1]
    assert corpus.EXE in CONTAINER_READERS[name](payload).values()


def test_the_test_executable_is_one_to_libmagic_and_alone_is_refused(relay: Relay, sink: RecordingSink) -> None:
    """The payload without any trick: what every case below once got past the relay."""
    assert magic.from_buffer(corpus.EXE, mime=True) in EXECUTABLE_TYPES
    answer = send_8bit(relay.port, corpus.with_text(corpus.exe_part("invoice.pdf")))
    assert answer.code == 554, answer


# ---- classes 1-8: every trick refused or stripped, every control delivered untouched ---------------

@pytest.mark.parametrize("case", list(corpus.CASES))
def test_trick_is_refused_or_stripped(relay: Relay, sink: RecordingSink, case: str) -> None:
    built = corpus.CASES[case]()
    assert_refused_or_stripped(send_8bit(relay.port, built.attack), sink, built.needles)


@pytest.mark.parametrize("case", list(corpus.CASES))
def test_control_without_the_trick_is_delivered_untouched(relay: Relay, sink: RecordingSink, case: str) -> None:
    control = corpus.CASES[case]().control
    assert_delivered_untouched(send_8bit(relay.port, control), sink, control)


# ---- class 9: NUL in DATA ----------------------------------------------------------------------------

def test_nul_before_a_dot_line_is_refused_and_nothing_is_smuggled(relay: Relay, sink: RecordingSink) -> None:
    attack, _ = corpus.nul_dot_smuggling()
    with RawClient(relay.port) as client:
        answer = answer_to_data(client, attack)
        assert answer.startswith("550 5.6.0"), answer
        assert client.command("NOOP").startswith("250")
    assert sink.wait_for(1, timeout=0.5) == []


def test_the_same_data_without_the_nul_is_delivered(relay: Relay, sink: RecordingSink) -> None:
    _, control = corpus.nul_dot_smuggling()
    with RawClient(relay.port) as client:
        answer = answer_to_data(client, control)
        assert answer.startswith("250"), answer
    [received] = sink.wait_for(1)
    assert strip_received(received.data) == control[:-len(b".\r\n")]


# ---- class 10: the inspection deadline -------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_message_past_the_inspection_deadline_gets_451_and_the_relay_goes_on(
        sink: RecordingSink, tmp_path: Path, mode: str) -> None:
    """`inspection.timeout` 1 ms against a message whose walk takes some 100 ms on this kind of
    machine (450 attachments, each typed by libmagic): the deadline comes first by two orders
    of magnitude. The executable sits last, where a relay that passed what it had not read in
    time would deliver it."""
    with Relay(relay_config(tmp_path, sink, mode, inspection={"timeout": "1ms"})) as slow:
        with smtplib.SMTP("127.0.0.1", slow.port, timeout=60) as client:
            client.ehlo("client.test")
            client.mail("alice@example.net")
            client.rcpt("bob@example.org")
            code, text = client.data(corpus.slow_message())
            assert (code, text[:5]) == (451, b"4.3.0"), (code, text)
            assert client.noop()[0] == 250                        # the session goes on
        with smtplib.SMTP("127.0.0.1", slow.port, timeout=60) as client:
            assert client.ehlo("client.test")[0] == 250           # and so does the relay
        assert sink.wait_for(1, timeout=0.5) == []


def test_the_same_message_inspected_in_time_is_delivered(relay: Relay, sink: RecordingSink) -> None:
    control = corpus.slow_message(dangerous=False)
    assert_delivered_untouched(send_8bit(relay.port, control), sink, control)


# ---- the clean corpus --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(corpus.CLEAN))
def test_clean_mail_is_delivered_byte_identical(relay: Relay, sink: RecordingSink, case: str) -> None:
    message = corpus.CLEAN[case]()
    assert_delivered_untouched(send_8bit(relay.port, message), sink, message)
