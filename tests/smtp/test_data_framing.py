"""DATA framing read in blocks gives the same verdict however the client's bytes are split.

A client controls where TCP segments end; a check that looked only inside each block would let
a bare CR/LF or an overlong line through when it straddles a border. Each case is fed whole, byte
by byte, and in random splits, and compared with a line-by-line reading of the same bytes.
"""

from __future__ import annotations

import base64
import random

import pytest

from frontfilter.delivery.wire import crlf_clean
from frontfilter.model import CrlfText, DotFreeText
from frontfilter.smtp.data import DataCollector, DataProblem, _even_span

MAX_LINE = 40


def reference(wire: bytes) -> tuple[bytes | None, DataProblem | None]:
    """The slow, obvious reading: split at CRLF, judge each line, unstuff."""
    body = wire[: wire.index(b"\r\n.\r\n") + 2] if not wire.startswith(b".\r\n") else b""
    lines = body.split(b"\r\n")[:-1] if body else []
    if any(b"\r" in line or b"\n" in line for line in lines):
        return None, DataProblem.BARE_NEWLINE
    if any(len(line) > MAX_LINE + 1 for line in lines):
        return None, DataProblem.LINE_TOO_LONG
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines), None


def faults(wire: bytes) -> set[DataProblem]:
    """Every reason the obvious reading has to refuse `wire`."""
    body = wire[: wire.index(b"\r\n.\r\n") + 2] if not wire.startswith(b".\r\n") else b""
    lines = body.split(b"\r\n")[:-1] if body else []
    return ({DataProblem.BARE_NEWLINE} if any(b"\r" in line or b"\n" in line for line in lines) else set()) \
        | ({DataProblem.LINE_TOO_LONG} if any(len(line) > MAX_LINE + 1 for line in lines) else set())


def after_terminator(wire: bytes) -> bytes:
    return wire[3:] if wire.startswith(b".\r\n") else wire[wire.index(b"\r\n.\r\n") + 5:]


def collect(wire: bytes, cuts: list[int]) -> tuple[tuple[bytes | None, DataProblem | None], bytes]:
    collector = DataCollector(max_size=1 << 20, max_line=MAX_LINE)
    leftover = None
    for start, end in zip([0] + cuts, cuts + [len(wire)]):
        leftover = collector.feed(wire[start:end])
        if leftover is not None:
            rest = wire[end:]
            return collector.result(), leftover + rest
    raise AssertionError("terminator never seen")


CASES = {
    "plain": b"Subject: a\r\n\r\nhello\r\n.\r\n",
    "empty": b".\r\n",
    "dot stuffed": b"Subject: a\r\n\r\n..leading dot\r\n.\r\n",
    "longest allowed": b"x" * MAX_LINE + b"\r\n." + b"y" * MAX_LINE + b"\r\n.\r\n",
    "one too long": b"x" * (MAX_LINE + 2) + b"\r\n.\r\n",
    "very long": b"ok\r\n" + b"z" * (5 * MAX_LINE) + b"\r\n.\r\n",
    "bare LF": b"Subject: a\r\n\r\nline\nsmuggled\r\n.\r\n",
    "bare CR": b"Subject: a\r\n\r\nline\rsmuggled\r\n.\r\n",
    "bare LF dot": b"Subject: a\r\n\r\nline\n.\r\nMAIL FROM:<x@y>\r\n.\r\n",
    "CR before CRLF": b"Subject: a\r\n\r\nline\r\r\n.\r\n",
    "pipelined after": b"Subject: a\r\n\r\nhi\r\n.\r\nQUIT\r\n",
}


@pytest.mark.parametrize("name", CASES)
def test_verdict_does_not_depend_on_where_the_client_splits_the_stream(name: str) -> None:
    wire = CASES[name]
    expected = reference(wire)
    after = after_terminator(wire)
    splits = [[], list(range(1, len(wire)))]
    generator = random.Random(name)
    for _ in range(200):
        splits.append(sorted(generator.sample(range(1, len(wire)), generator.randint(1, min(6, len(wire) - 1)))))
    for cuts in splits:
        result, leftover = collect(wire, cuts)
        assert result == expected, (name, cuts)
        assert leftover == after, (name, cuts)


def dot_free_really(message: bytes) -> bool:
    return not message.startswith(b".") and b"\r\n." not in message


def test_an_accepted_message_is_marked_crlf_clean_and_is() -> None:
    """The forwarder trusts `CrlfText` without counting line ends, and `DotFreeText` without
    looking for lines to stuff: random streams of lines with stray CRs, LFs and dots, wherever
    they are accepted, must really be CRLF-only, and dot-free where so marked. (The fields
    frontfilter adds travel apart, checked by the forwarder: tests/delivery/test_wire.py.)"""
    generator = random.Random(5321)
    accepted = dot_free = 0
    for _ in range(3000):
        lines = [bytes(generator.choice(b"ab.\r\n") for _ in range(generator.randint(0, 6)))
                 for _ in range(generator.randint(0, 5))]
        wire = b"\r\n".join(lines) + (b"\r\n" if lines else b"") + b".\r\n"
        (message, problem), _rest = collect(wire, sorted(generator.sample(range(1, len(wire)), min(2, len(wire) - 1))))
        if problem is None:
            accepted += 1
            assert isinstance(message, CrlfText) and crlf_clean(message), wire
            dot_free += isinstance(message, DotFreeText)
            assert not isinstance(message, DotFreeText) or dot_free_really(message), wire
    assert accepted > 300
    assert 0 < dot_free < accepted


def test_random_streams_get_the_verdict_of_the_line_by_line_reading() -> None:
    """Dot-stuffed lines, stray CRs and LFs, lines around the length limit, split anywhere: the
    block reader must refuse, unstuff and hand back exactly what the obvious reading does."""
    generator = random.Random(3030)
    pieces = [b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"x" * (MAX_LINE - 1), b"y" * MAX_LINE]
    verdicts = set()
    for _ in range(3000):
        lines = [b"".join(generator.choice(pieces) for _ in range(generator.randint(0, 4)))
                 for _ in range(generator.randint(0, 6))]
        wire = b"\r\n".join(lines) + (b"\r\n" if lines else b"") + b".\r\nQUIT\r\n"
        expected = reference(wire)
        cuts = sorted(generator.sample(range(1, len(wire)), min(3, len(wire) - 1)))
        result, leftover = collect(wire, cuts)
        if expected[1] is None:
            assert result == expected, (wire, cuts)
        else:   # a message with both faults may be refused for either, whichever is read first
            assert result[0] is None and result[1] in faults(wire), (wire, cuts)
        assert leftover == after_terminator(wire), (wire, cuts)
        verdicts.add(expected[1])
    assert verdicts == {None, DataProblem.BARE_NEWLINE, DataProblem.LINE_TOO_LONG}


def even_stream(generator: random.Random) -> bytes:
    """Runs of lines of one length (as base64 bodies are), between odd lines, with a fault now
    and then: a stray CR or LF, a line a byte longer or shorter, one over the limit, a CRLF
    inside a line, a dot."""
    lines: list[bytes] = []
    for _ in range(generator.randint(1, 4)):
        lines += [b"x" * generator.randint(0, MAX_LINE) for _ in range(generator.randint(0, 3))]
        length = generator.choice([0, 1, 5, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2])
        lines += [bytes(generator.choices(b"ABC", k=length)) for _ in range(generator.randint(14, 60))]
    wire = bytearray(b"\r\n".join(lines) + b"\r\n")
    for _ in range(generator.choice([0, 0, 1, 2])):
        at = generator.randrange(len(wire) + 1)
        wire[at:at] = generator.choice([b"\r", b"\n", b"Z", b"\r\n", b".", b"\n\r"])
    for _ in range(generator.choice([0, 0, 1])):
        if wire:
            del wire[generator.randrange(len(wire))]
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return bytes(wire) + b".\r\nQUIT\r\n"


def test_runs_of_even_lines_get_the_verdict_of_the_line_by_line_reading() -> None:
    """Runs of equal lines are checked by their CR and LF columns, not split: a fault inside a
    run, at its edges, or straddling a block border must be found as the split finds it."""
    generator = random.Random(2045)
    verdicts = set()
    for _ in range(1500):
        wire = even_stream(generator)
        expected = reference(wire)
        cuts = sorted(generator.sample(range(1, len(wire)), min(generator.randint(0, 3), len(wire) - 1)))
        result, leftover = collect(wire, cuts)
        if expected[1] is None:
            assert result == expected, (wire, cuts)
        else:
            assert result[0] is None and result[1] in faults(wire), (wire, cuts)
        assert leftover == after_terminator(wire), (wire, cuts)
        verdicts.add(expected[1])
    assert verdicts == {None, DataProblem.BARE_NEWLINE, DataProblem.LINE_TOO_LONG}


@pytest.mark.parametrize("first", [b"\n", b"\r", b"x" * (MAX_LINE + 2)])
def test_a_bad_line_before_a_run_is_found_wherever_the_columns_reach(first: bytes) -> None:
    """Read backwards from the block's end, the run's CR column reaches the CR that ends a
    short first line (at offset 1 for a 1-byte line before lines of 3): the first line is not
    part of the run and must still be judged, as must a long one before it."""
    block = first + b"\r\n" + b"abc\r\n" * 20 + b"ab"
    wire = block + b"c\r\n.\r\n"
    (message, problem), _ = collect(wire, [len(block)])
    expected = reference(wire)[1]
    assert expected is not None and (message, problem) == (None, expected)


@pytest.mark.parametrize("head", [b"", b"Subject: a\r\n\r\n"])
def test_a_run_of_lines_over_the_limit_is_refused_read_from_either_end(head: bytes) -> None:
    """Without a head the run is read from the block's start, with one from its end."""
    block = head + (b"y" * (MAX_LINE + 2) + b"\r\n") * 20 + b"ab"
    wire = block + b"c\r\n.\r\n"
    (message, problem), _ = collect(wire, [len(block)])
    assert message is None and problem is DataProblem.LINE_TOO_LONG


def test_the_even_span_is_only_ever_whole_clean_lines() -> None:
    """What `_even_span` vouches for is never looked at again: it must start and end at line
    starts and hold only well-formed lines, whatever the bytes."""
    generator = random.Random(76)
    found = 0
    for _ in range(3000):
        wire = even_stream(generator)
        start, end = _even_span(wire, MAX_LINE + 1)
        if end == 0:
            continue
        found += 1
        assert 0 <= start < end and (start == 0 or wire[start - 2:start] == b"\r\n"), (wire, start)
        assert wire[end - 2:end] == b"\r\n", (wire, end)
        lines = wire[start:end].split(b"\r\n")[:-1]
        assert len(lines) >= 16
        assert not any(b"\r" in line or b"\n" in line or len(line) > MAX_LINE + 1 for line in lines), (wire, start, end)
    assert found > 300


# ---- NUL ----------------------------------------------------------------------------------------

BASE64_RUN = base64.encodebytes(bytes(range(256)) * 8000).replace(b"\n", b"\r\n")   # 2.8 MB


@pytest.mark.parametrize("where", ["header", "body", "line start", "before the terminator", "base64 run"])
def test_nul_in_data_is_refused_wherever_the_client_splits(where: str) -> None:
    """RFC 6152 §3: 8BITMIME data holds no NUL, and BINARYMIME is not offered. A NUL is refused
    like a bare newline, also when it replaces a byte of a run of equal lines 1.5 MB in, where
    the line ends stay where the run puts them and only the per-block check can see it."""
    if where == "base64 run":
        at = 1_500_000
        body = BASE64_RUN[:at] + b"\0" + BASE64_RUN[at + 1:]
        assert body[at - 2:at] != b"\r\n" and len(body) == len(BASE64_RUN)
        wire = b"Subject: a\r\n\r\n" + body + b".\r\n"
    else:
        wire = {"header": b"Subject: a\0b\r\n\r\nhello\r\n.\r\n",
                "body": b"Subject: a\r\n\r\nrun.js\0.txt\r\n.\r\n",
                "line start": b"Subject: a\r\n\r\n\0\r\n.\r\n",
                "before the terminator": b"Subject: a\r\n\r\nhello\0\r\n.\r\n"}[where]
    generator = random.Random(where)
    cuts_tried = [[], [wire.index(b"\0")], [wire.index(b"\0") + 1]]
    cuts_tried += [sorted(generator.sample(range(1, len(wire)), 3)) for _ in range(20)]
    for cuts in cuts_tried:
        collector = DataCollector(max_size=4 << 20, max_line=998)
        leftover = None
        for start, end in zip([0] + cuts, cuts + [len(wire)]):
            leftover = collector.feed(wire[start:end])
        assert leftover == b"", (where, cuts)
        assert collector.result() == (None, DataProblem.NUL), (where, cuts)


def test_the_same_message_without_the_nul_is_taken() -> None:
    """The control for the case above: the run itself is clean."""
    wire = b"Subject: a\r\n\r\n" + BASE64_RUN + b".\r\n"
    collector = DataCollector(max_size=4 << 20, max_line=998)
    for at in range(0, len(wire), 65536):
        collector.feed(wire[at:at + 65536])
    message, problem = collector.result()
    assert problem is None and message == wire[:-3]


def test_a_nul_after_the_terminator_is_not_data() -> None:
    """What follows `<CRLF>.<CRLF>` is handed back to the command reader, not judged as data."""
    result, leftover = collect(b"Subject: a\r\n\r\nhi\r\n.\r\nNOOP\0\r\n", [])
    assert result == (b"Subject: a\r\n\r\nhi\r\n", None) and leftover == b"NOOP\0\r\n"
