"""A big message read where it lies, in its file: not copied into the process's memory.

A message past `limits.data_spill_size` is received into a file of its own (smtp/data.py) and
the pipeline reads it there, mapped (`SpilledMessage`); so does inspection with a big archive it
has decoded (content/scratch.py). `MessageBytes` is what the pipeline carries: bytes, or such a
mapping. The helpers here are what every reader of a whole big message does the same way:
read it a slice at a time and drop the pages behind (`slices`; on the event loop,
`slices_off_the_loop`), make bytes of it where a
library takes nothing else (`as_bytes`), make the file (`unnamed_file`).

Base module: imports nothing of frontfilter's.
"""

from __future__ import annotations

import mmap
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO


class MappedText(mmap.mmap):
    """Bytes read through a mapping of the file that holds them, not copied into the process's
    memory: a big message in its spill file (`SpilledMessage`), a big archive being read
    (content/scratch.py).

    Read like bytes: the buffer protocol, slices, `re`, and `find`, `rfind`, `startswith`,
    `endswith` and `in` as bytes answer them (mmap's own differ: below). Not `==`: a mapping
    equals only itself. A page read through the mapping stays mapped, and counts in the
    process's RSS, until `release` drops the mapping's pages: the readers of a whole big
    message (a part's decoding, the spool write, the forwarder's writes) release behind them,
    so its pages are not held beside what is decoded from them. The pages stay in the page
    cache; reading them again costs a minor fault.

    The price of a mapping: a disk that fails to read a page back (the page cache evicted it
    first) is SIGBUS, the end of the process, not an OSError for one message. Those read it on
    the event loop (the forwarder, clamd) copy its slices in a thread, so that a page read from
    disk does not stall the loop."""

    # mmap's own find and rfind search from the mapping's file position when no start is
    # given (after zipfile has read the mapping, that is its end) and clamp a start past the
    # end; bytes search from 0 and find nothing past the end. These answer as bytes do.
    def find(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:  # type: ignore[override]
        first, last = self._bounds(start, end)
        return -1 if last - first < len(sub) else super().find(sub, first, last)

    def rfind(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:  # type: ignore[override]
        first, last = self._bounds(start, end)
        return -1 if last - first < len(sub) else super().rfind(sub, first, last)

    def _bounds(self, start: int | None, end: int | None) -> tuple[int, int]:
        size = len(self)
        first = 0 if start is None else max(start + size, 0) if start < 0 else start
        last = size if end is None else max(end + size, 0) if end < 0 else min(end, size)
        return first, last

    def startswith(self, prefix: bytes | tuple[bytes, ...], start: int | None = None, end: int | None = None) -> bool:
        first, last = self._bounds(start, end)
        prefixes = prefix if isinstance(prefix, tuple) else (prefix,)
        return first <= len(self) and any(
            last - first >= len(p) and self[first:first + len(p)] == p for p in prefixes)

    def endswith(self, suffix: bytes | tuple[bytes, ...], start: int | None = None, end: int | None = None) -> bool:
        first, last = self._bounds(start, end)
        suffixes = suffix if isinstance(suffix, tuple) else (suffix,)
        return first <= len(self) and any(
            last - first >= len(s) and self[last - len(s):last] == s for s in suffixes)

    def __contains__(self, sub: object) -> bool:
        if isinstance(sub, int):
            return self.find(bytes((sub,))) != -1       # bytes((300,)) raises, as bytes do
        if not isinstance(sub, (bytes, bytearray, memoryview)):
            raise TypeError(f"a bytes-like object is required, not {type(sub).__name__!r}")
        return self.find(bytes(sub)) != -1

    def seekable(self) -> bool:
        """A file to read (`zipfile` asks; mmap has the method from Python 3.13 on)."""
        return True

    def release(self) -> None:
        """Drop the pages mapped so far from this process (not from the page cache)."""
        if not self.closed and len(self):
            self.madvise(mmap.MADV_DONTNEED)


class SpilledMessage(MappedText):
    """A message in its spill file, mapped read-only: what DotFreeText is (CRLF-clean, no
    dotted line), made only by `smtp.data.SpilledBody.map` from a message the client stuffed
    nowhere, so the forwarder sends it as it is."""


# A message as the pipeline carries it: in memory, or (big) mapped from its spill file.
MessageBytes = bytes | MappedText


def release_pages(data: object) -> None:
    """`MappedText.release` where `data` is one; nothing for bytes."""
    if isinstance(data, MappedText):
        data.release()


def as_bytes(data: MessageBytes) -> bytes:
    """`data` as bytes, for a library that takes nothing else (dkimpy, tnefparse): a mapping is
    copied into memory, bytes are given as they are."""
    return data if isinstance(data, bytes) else bytes(data)


def slices(data: MessageBytes | memoryview, size: int) -> Iterator[memoryview]:
    """`data`, `size` bytes at a time (views: nothing copied). A mapping's pages are dropped
    behind each slice, once the next is asked for: its pages are never all mapped at once."""
    view = memoryview(data)
    for offset in range(0, len(view), size):
        yield view[offset:offset + size]
        release_pages(data)


async def slices_off_the_loop(data: MessageBytes, size: int) -> AsyncIterator[bytes | memoryview]:
    """`slices` for a reader on the event loop (the forwarder, clamd). A mapping's slices are
    copied out in a thread, since a page the page cache let go of is read back from disk
    there, and that must not stall the loop; bytes in memory are given as views, uncopied."""
    if not isinstance(data, MappedText):
        for view in slices(data, size):
            yield view
        return
    import asyncio       # here: content and rules import this module and stay free of asyncio
    pieces = slices(data, size)
    while (piece := await asyncio.to_thread(_next_copied, pieces)) is not None:
        yield piece


def _next_copied(pieces: Iterator[memoryview]) -> bytes | None:
    piece = next(pieces, None)
    return None if piece is None else bytes(piece)


def unnamed_file(directory: Path | None, prefix: str) -> IO[bytes]:
    """A new file for bytes too big to hold in memory: in `directory` (the spool's), or in the
    system's temp directory when it is not there; unnamed where the system allows (O_TMPFILE),
    so a crash leaves nothing behind; readable by the relay's user only."""
    where = directory if directory is not None and directory.is_dir() else None
    return tempfile.TemporaryFile(dir=where, prefix=prefix)
