"""bytesfind.find answers what bytes.find answers, whatever the data, needle, pivot and range."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given, settings, strategies as st

from frontfilter import bytesfind

# Few distinct bytes, so that pivots, near misses and matches are everywhere.
_BYTES = st.binary(max_size=400).map(lambda raw: bytes(b"\r\n.-x"[c % 5] for c in raw))
_NEEDLES = st.sampled_from([b"\r\n.", b"\r\n.\r\n", b"--x", b"x.x", b"..", b"\r\n", b"x", b""])


@settings(max_examples=600, deadline=None)
@given(data=_BYTES, needle=_NEEDLES, pivot=st.integers(0, 4),
       start=st.integers(-50, 450), end=st.none() | st.integers(-50, 450))
def test_find_answers_as_bytes_find(data: bytes, needle: bytes, pivot: int, start: int, end: int | None) -> None:
    pivot = min(pivot, max(len(needle) - 1, 0))
    assert bytesfind.find(data, needle, pivot, start, end) == data.find(needle, start, end)


def test_a_needle_past_many_false_pivots_is_found_where_bytes_find_finds_it() -> None:
    # More misses than FALSE_HITS: the hand-over to bytes.find must start before the match.
    data = b"a." * (bytesfind.FALSE_HITS * 3) + b"\r\n.\r\n" + b"tail\r\n.\r\n"
    assert bytesfind.find(data, b"\r\n.\r\n", 2) == data.find(b"\r\n.\r\n") == 2 * bytesfind.FALSE_HITS * 3
    assert bytesfind.find(data, b"\r\n.", 2, 10, len(data) - 3) == data.find(b"\r\n.", 10, len(data) - 3)


def test_a_message_mapped_from_its_file_is_searched_alike(tmp_path) -> None:
    path = tmp_path / "message"
    data = b"Subject: a.b\r\n\r\n" + b"QUJD" * 5000 + b"\r\n..stuffed\r\n"
    path.write_bytes(data)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for needle, pivot in ((b"\r\n.", 2), (b"PK\x05\x06", 2), (b"\r\n\r\n", 0)):
            assert bytesfind.find(mapped, needle, pivot) == data.find(needle)
            assert bytesfind.find(mapped, needle, pivot, 20) == data.find(needle, 20)
        assert bytesfind.find(mapped, b".", 0) == data.find(b".")


def test_a_pivot_outside_the_needle_is_refused() -> None:
    with pytest.raises(ValueError):
        bytesfind.find(b"a\r\n.b", b"\r\n.", 3)
