"""The one-pass base64 decoder for well-formed input answers exactly what the general one does.

`decode.base64` takes a fast path when the input is canonical; an attacker chooses the input,
so every shape — line breaks anywhere, padding in the middle, junk, dangling characters,
missing or excess padding — must give the same bytes and the same junk flag either way.
"""

from __future__ import annotations

import base64 as stdlib_base64
import random

import pytest

from frontfilter.content import decode


def shapes(generator: random.Random) -> bytes:
    payload = generator.randbytes(generator.randint(0, 300))
    text = stdlib_base64.b64encode(payload)
    kind = generator.randint(0, 9)
    if kind == 1:                                   # wrapped lines, CRLF or LF
        width = generator.choice([4, 57, 76, 77])
        text = generator.choice([b"\r\n", b"\n"]).join(text[i:i + width] for i in range(0, len(text), width))
    elif kind == 2 and text:                        # padding removed
        text = text.rstrip(b"=")
    elif kind == 3:                                 # excess padding
        text += b"=" * generator.randint(1, 4)
    elif kind == 4:                                 # a second encoded segment after the padding
        text += stdlib_base64.b64encode(generator.randbytes(generator.randint(1, 20)))
    elif kind == 5 and text:                        # junk inside
        at = generator.randrange(len(text))
        text = text[:at] + generator.choice([b"!", b"*", b"\x00", b"\xff", b"-"]) + text[at:]
    elif kind == 6:                                 # a dangling character
        text += b"Q"
    elif kind == 7:                                 # whitespace runs and trailing blanks
        text = b"  " + text + b" \r\n\t \r\n"
    elif kind >= 8:                                 # CRLF lines of one width (the column path)...
        width = generator.choice([1, 4, 8, 76])
        lines = [text[i:i + width] for i in range(0, len(text), width)]
        if kind == 9 and len(lines) > 2:           # ...but one line longer or shorter
            at = generator.randrange(len(lines) - 1)
            lines[at] = lines[at][:-1] if generator.random() < 0.5 else lines[at] + lines[at + 1][:1]
        text = b"\r\n".join(lines) + generator.choice([b"", b"\r\n", b"\r\n\r\n"])
        if generator.random() < 0.3 and text:      # ...or a CR, a LF or a CRLF inside a line
            at = generator.randrange(len(text))
            text = text[:at] + generator.choice([b"\r", b"\n", b"\r\n"]) + text[at:]
    return text


@pytest.mark.parametrize("strict", ["pybase64", "binascii"])
def test_fast_and_general_decoders_agree_on_every_shape(strict: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if strict == "pybase64":
        pytest.importorskip("pybase64")      # the `fast` extra; `make test` installs it
    else:
        monkeypatch.setattr(decode, "_simd_b64decode", None)
    generator = random.Random(20261128)
    strict_taken = canonical_taken = by_column = 0
    for _ in range(5000):
        text = shapes(generator)
        general = decode._base64_by_segments(memoryview(text))
        assert decode.base64(text) == general, text
        strict_taken += decode._strict_base64(memoryview(text)) is not None
        canonical_taken += decode._canonical_base64(memoryview(text)) is not None
        flat = decode._line_breaks_out_by_column(text)
        if flat is not None:               # only line breaks out: every other byte kept, in order
            assert flat.translate(None, b"\r\n") == text.translate(None, b"\r\n"), text
            by_column += 1
    assert strict_taken > 1000, "most shapes are well formed and should take the quickest path"
    assert canonical_taken > strict_taken, "blanks and excess padding are canonical but not strict"
    assert by_column > 500, "lines of one width have their line breaks taken out by column"


def test_line_breaks_come_out_by_column_only_where_each_is_a_crlf() -> None:
    assert decode._line_breaks_out_by_column(b"QUJD\r\nQUJD\r\nQQ==\r\n") == b"QUJDQUJDQQ=="
    assert decode._line_breaks_out_by_column(b"QUJD\r\nQUJD\r\nQUJD") == b"QUJDQUJDQUJD"
    # A bare CR where the line break should be, the next line's first character after it.
    assert decode._line_breaks_out_by_column(b"QUJD\r\nQUJD\rQUJD\r\n") is None
    assert decode._line_breaks_out_by_column(b"QUJD\r\nQUJD\nQUJD\r\n") is None
    assert decode.base64(b"QUJD\r\nQUJD\rQUJD\r\n") == decode._base64_by_segments(memoryview(b"QUJD\r\nQUJD\rQUJD\r\n"))
