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
    kind = generator.randint(0, 7)
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
    return text


@pytest.mark.parametrize("strict", ["pybase64", "binascii"])
def test_fast_and_general_decoders_agree_on_every_shape(strict: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if strict == "pybase64":
        pytest.importorskip("pybase64")      # the `fast` extra; `make test` installs it
    else:
        monkeypatch.setattr(decode, "_simd_b64decode", None)
    generator = random.Random(20261128)
    strict_taken = canonical_taken = 0
    for _ in range(5000):
        text = shapes(generator)
        general = decode._base64_by_segments(memoryview(text))
        assert decode.base64(text) == general, text
        strict_taken += decode._strict_base64(memoryview(text)) is not None
        canonical_taken += decode._canonical_base64(memoryview(text)) is not None
    assert strict_taken > 1000, "most shapes are well formed and should take the quickest path"
    assert canonical_taken > strict_taken, "blanks and excess padding are canonical but not strict"
