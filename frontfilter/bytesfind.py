"""`find` for a short needle with a byte the data seldom holds: memchr from one of those to the next.

CPython's `bytes.find` for a needle of 2 to 5 bytes walks the data byte by byte (`default_find`,
about 0.6 ns a byte here: 39 us per 64 KB block for `<CRLF>.`), while a one-byte find is a
memchr, some 20 times faster. Several searches that run on every message look for a needle
with such a byte, the pivot: the `.` of the DATA terminator and of a dot-stuffed line (base64,
most of the bytes of big mail, has none), the `-` of a MIME delimiter (none in base64 either),
the control bytes of a zip end record (none in text). Stepping from one pivot to the next and
comparing the needle there costs a few microseconds where the pivot is rare. Where it is not
(prose full of dots, binary data), after `FALSE_HITS` misses the search goes on as
`bytes.find` from there: at worst a few comparisons more than `bytes.find` alone.

The answer is always `data.find(needle, start, end)`'s (tests/test_bytesfind.py checks it
against that, on data made to be full of pivots and near misses). `data` may be `bytes` or a
message mapped from its file (`mmap` has `find`; slices compare as bytes)."""

from __future__ import annotations

from frontfilter.mapped import MessageBytes

# Misses tolerated before the search hands over to bytes.find: enough for the dots of a
# message's header block or a text part's few sentences, few enough that prose costs nothing.
FALSE_HITS = 8


def find(data: MessageBytes, needle: bytes, pivot: int, start: int = 0, end: int | None = None) -> int:
    """`data.find(needle, start, end)`, stepping through the occurrences of `needle[pivot]`."""
    width = len(needle)
    if width < 2:
        return data.find(needle, start) if end is None else data.find(needle, start, end)
    if not 0 <= pivot < width:
        raise ValueError(f"pivot {pivot} is not an index of a needle of {width} bytes")
    start, end, _ = slice(start, end).indices(len(data))
    if end - start < width:
        return -1
    byte = needle[pivot:pivot + 1]
    at = data.find(byte, start + pivot, end - width + pivot + 1)
    for _ in range(FALSE_HITS):
        if at < 0:
            return -1
        begin = at - pivot
        if data[begin:begin + width] == needle:
            return begin
        at = data.find(byte, at + 1, end - width + pivot + 1)
    return -1 if at < 0 else data.find(needle, at - pivot, end)
