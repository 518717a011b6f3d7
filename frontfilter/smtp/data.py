"""Reading the DATA phase in blocks: terminator search, size bound, smuggling checks, unstuffing.

A line reader (aiosmtpd's, for one) takes DATA one line at a time and accepts bare CR and bare LF verbatim,
which lets a client smuggle a second message past a backend that reads line ends differently
(SMTP smuggling, CVE-2023-51764 and friends). Here the stream is read in blocks, the terminator
`<CRLF>.<CRLF>` is found with `bytes.find` across block borders, and the collected data is then
checked as it arrives, a complete line range per block, in linear passes at C speed (so
no single check holds the event loop for long, whatever the message size):

- bare CR or bare LF anywhere           -> refused (`550 5.6.0`), never forwarded;
- a NUL byte anywhere                   -> refused (`550 5.6.0`): 8BITMIME data holds no NUL
                                           (RFC 6152 §3), BINARYMIME is not offered, and a
                                           reader that stops at NUL sees another message;
- a line longer than the limit          -> refused (`500 5.5.6`, RFC 5321 §4.5.3.1.6);
- more bytes than `max_size`            -> the rest is drained without being kept, then `552`;
- more than the process's `budget`      -> drained the same way, then `452 4.3.1` (budget.py).

A message past `spill_size` goes on into the file `spill()` opens (given by the shell) and leaves
the budget while it is being received; `result` hands over a `SpilledBody`, which the shell
charges to the budget again (no room then: `452 4.3.1`) and maps off the event loop: the
pipeline reads the message in its file (`mapped.SpilledMessage`), never copied into memory whole (a
message the client dot-stuffed somewhere is read back instead, to be unstuffed). A spill that
cannot be opened (no space, no directory) keeps the message in memory.

Only one terminator is honoured: `<CRLF>.<CRLF>`. Everything after it in the last block is handed
back to the command reader (PIPELINING), so whatever follows is read as commands, never as data.
"""

from __future__ import annotations

import enum
import io
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from frontfilter import bytesfind
from frontfilter.model import CrlfText, DotFreeText
from frontfilter.mapped import SpilledMessage
from frontfilter.smtp.budget import DataBudget

CRLF = b"\r\n"
TERMINATOR = b"\r\n.\r\n"
DOT_LINE = b"\r\n."   # a line starting with a dot: the terminator, or a dot-stuffed line


class DataProblem(enum.Enum):
    TOO_BIG = "too_big"
    BARE_NEWLINE = "bare_newline"
    NUL = "nul"
    LINE_TOO_LONG = "line_too_long"
    NO_ROOM = "no_room"              # limits.max_data_in_memory: try again later
    UNREADABLE = "unreadable"        # its spill file could not be read back whole: try again later


@dataclass
class DataCollector:
    """Feed blocks; `feed` returns the leftover bytes after the terminator once it is seen."""

    max_size: int
    max_line: int
    budget: DataBudget | None = None
    spill_size: int = 0              # past this many bytes, into `spill()`'s file (0: never)
    spill: Callable[[], IO[bytes]] | None = None
    size: int = 0
    done: bool = False
    too_big: bool = False
    charged: int = 0                 # bytes of the body charged to `budget` (give them back: release)

    def __post_init__(self) -> None:
        # The message is kept in a BytesIO: its getvalue() hands over its buffer without a copy,
        # where a bytearray must be copied into bytes at the end (two copies of a 25 MB message
        # at once: a 25 MB message's peak memory was within 1 % of its bound).
        self._body: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None     # the body, once spilled
        # The virtual CRLF before the first line lets ".\r\n" right after DATA end it, and makes
        # "\r\n." the one pattern for dot-stuffed lines.
        self._tail = b"\r\n"   # the last 4 bytes seen, kept even while draining an oversize body
        self._pending = b""     # the line begun and not yet ended by the last block
        self._problem: DataProblem | None = None
        self._dotted = False    # some line started with a dot: `result` must unstuff
        # +1: a transparency dot may precede a line of max_line octets (RFC 5321 §4.5.2).
        self._longest = self.max_line + 1

    def feed(self, block: bytes) -> bytes | None:
        window = self._tail + block
        end = self._find_end(window)
        if end < 0:
            self._take(block)
            self._tail = window[-4:]
            return None
        end -= len(self._tail)        # index in block just past the terminator
        self._take(block[:end])
        self.done = True
        return block[end:]

    def _find_end(self, window: bytes) -> int:
        """Index in `window` just past the first terminator, or -1.

        Every line that starts with a dot shows as `<CRLF>.`: the terminator is the one followed
        by CRLF, the others are dot-stuffed. The first search finds either, so `result` knows
        without a pass of its own whether there is anything to unstuff; once one stuffed line
        is seen, only the terminator is searched for (one search a block, however many dotted
        lines a client sends). A block without a dot has neither: base64, most of the bytes of
        big mail, has no dot, and one memchr for it costs 1 µs per 64 KB where `bytes.find`
        for `<CRLF>.` costs 40. Both searches step from dot to dot (`bytesfind`): 2 µs for the
        first block of a 100 KB message (its header and text dots, then base64), 39 before;
        a block without a dot costs that one memchr."""
        if self._dotted:
            at = bytesfind.find(window, TERMINATOR, 2)
        else:
            at = bytesfind.find(window, DOT_LINE, 2)
            if at >= 0 and not window.startswith(b"\r\n", at + 3):
                self._dotted = True      # a stuffed line, or a terminator cut short: harmless either way
                at = bytesfind.find(window, TERMINATOR, 2, at + 1)
        return at + len(TERMINATOR) if at >= 0 else -1

    def _take(self, block: bytes) -> None:
        self.size += len(block)
        if self.too_big:
            return
        if self.size > self.max_size + len(TERMINATOR):
            self.too_big = True
            self.discard()             # free it now: an oversize body is drained, never kept
            return
        if self._body is None and self._file is None:   # refused already (bare newline, long line): drained too
            return
        if self._file is None and self.spill is not None and self.spill_size and self.size > self.spill_size:
            self._spill()            # this block goes to the file too: never charged
        if self._file is not None:
            try:
                self._file.write(block)
            except OSError:          # the disk filled up under it: 452, the client retries
                self._problem = DataProblem.NO_ROOM
                self.discard()
                return
        else:
            assert self._body is not None
            if not self.charge(len(block)):
                self._problem = DataProblem.NO_ROOM
                self.discard()
                return
            self._body.write(block)
        self._check(block)
        if self._problem is not None:
            self.discard()             # refused whatever follows: nothing more is kept

    def _spill(self) -> None:
        """From memory to the spill file: what was received so far, and from now on every block."""
        assert self.spill is not None and self._body is not None
        spill, self.spill = self.spill, None     # tried once: a failure is not retried each block
        try:
            spilled = spill()
        except OSError:
            return                   # no room on disk: it stays in memory, under the budget
        try:
            spilled.write(self._body.getbuffer())
        except OSError:
            spilled.close()
            return
        self._file, self._body = spilled, None
        self.release()

    def discard(self) -> None:
        """Nothing of the body is kept any more (refused, drained, or the session ended in
        the middle of it): its memory and its spill file go, its bytes leave the budget."""
        self._body = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self.release()

    def release(self) -> None:
        """The body is no longer held (dropped, or its verdict sent): its bytes go back."""
        if self.budget is not None and self.charged:
            self.budget.give(self.charged)
        self.charged = 0

    def _check(self, block: bytes) -> None:
        """Check the lines the block completes, and the one it leaves begun.

        A line is well formed when it ends in CRLF, holds no other CR or LF, no NUL, and is not
        too long. The NUL check is one memchr over the block, before anything else, so the fast
        paths below need not know about it.
        Each block costs time in proportion to its own size, in passes at C speed. A run of
        lines of one length (`_even_span`: base64 and quoted-printable bodies, most of the bytes
        of big mail) is checked by its CR and LF columns. The rest is split at CRLF once: a CR or
        LF left in the complete pieces is a bare one, and the longest piece is the longest line.
        The last piece is the line still open: a LF in it is bare, and so is a CR anywhere but
        at its very end (where the next block may bring the LF). (Three `count`s of CR, LF and
        CRLF cost twice the split on 64 KB blocks: `count` walks byte by byte, while `in` for
        one byte is a memchr. A regex for long lines rescanned each line from every position:
        17 ms per 100 KB.)"""
        if b"\0" in block:          # a memchr: 2 µs per 64 KB block
            self._problem = DataProblem.NUL
            return
        data = self._pending + block if self._pending else block
        start, end = _even_span(data, self._longest)
        if start > 0 and self._complete_lines(data[:start].split(CRLF)[:-1]):   # [-1]: b""
            return
        lines = (data[end:] if end else data).split(CRLF)
        begun = lines.pop()
        if lines and self._complete_lines(lines):
            return
        if b"\n" in begun or b"\r" in begun[:-1]:
            self._problem = DataProblem.BARE_NEWLINE
        elif len(begun) > self.max_line + 3:
            self._problem = DataProblem.LINE_TOO_LONG   # dot + max_line + CRLF, and still no LF
        self._pending = begun

    def _complete_lines(self, lines: list[bytes]) -> bool:
        """Judge whole lines, split at CRLF: True if refused."""
        joined = b"".join(lines)
        if b"\n" in joined or b"\r" in joined:
            self._problem = DataProblem.BARE_NEWLINE
        elif max(map(len, lines)) > self._longest:
            self._problem = DataProblem.LINE_TOO_LONG
        return self._problem is not None

    def result(self) -> tuple[bytes | SpilledBody | None, DataProblem | None]:
        """The unstuffed message (or, spilled, what reads it back), or the problem that refuses it."""
        assert self.done
        if self.too_big:
            return None, DataProblem.TOO_BIG
        if self._problem is not None:
            return None, self._problem
        if self._file is not None:
            # Kept here too: whatever becomes of the SpilledBody, `discard` (the verdict sent,
            # the session gone) closes the file.
            return SpilledBody(self, self._file, self.size - 3, self._dotted), None   # ".\r\n"
        body, self._body = self._body, None
        assert body is not None
        body.truncate(self.size - 3)  # ".\r\n"; what is left ends with the last line's CRLF
        return self.finished(body.getvalue(), self._dotted)      # the buffer itself, not a copy

    def finished(self, data: bytes, dotted: bool) -> tuple[bytes | None, DataProblem | None]:
        """`data` as received (the terminator off) unstuffed and marked, or why not."""
        if dotted:
            if data.startswith(b"."):    # the first line's dot: its CRLF is the virtual one
                data = data[1:]
            data = data.replace(DOT_LINE, b"\r\n")
        if len(data) > self.max_size:
            return None, DataProblem.TOO_BIG
        # Every line was checked above; unstuffed, a dotted line still starts with a dot.
        return (CrlfText if dotted else DotFreeText).marked(data), None

    def charge(self, size: int) -> bool:
        """Charge `size` bytes held in memory (received, or read back from a spill) to the
        budget (False: no room)."""
        if self.budget is None:
            return True
        if not self.budget.take(size):
            return False
        self.charged += size
        return True


@dataclass
class SpilledBody:
    """A message received into its spill file. The shell, not the core, takes it on: `reserve`
    on the event loop (the budget is the loop's), then `map` (or `read`) in a worker thread (a
    25 MiB read takes about 18 ms: not the event loop's to wait for). Either closes the file."""

    collector: DataCollector
    file: IO[bytes]
    length: int
    dotted: bool
    _fd: int | None = None          # `map`'s own descriptor of the file (see `reserve`)

    def reserve(self) -> bool:
        """Room in the memory budget for the message read back; False closes the file.

        On the event loop, where the session's end closes the file too: a message to be
        mapped gets a descriptor of its own here, so that `map`, in its thread, never maps
        whatever file took the number of one closed meanwhile."""
        if not self.collector.charge(self.length):
            self.file.close()
            return False
        if not self.dotted:
            try:
                self.file.flush()          # the last block, from the file's buffer to the file
                self._fd = os.dup(self.file.fileno())
            except (OSError, ValueError):
                self._fd = None            # `map` reads it back instead
        return True

    def read(self) -> tuple[bytes | None, DataProblem | None]:
        """In a worker thread: the message, unstuffed as `result` gives it, or why not (a file
        that cannot be read back whole is never passed on in part)."""
        try:
            self.file.seek(0)
            data = self.file.read(self.length)
        except (OSError, ValueError):     # ValueError: closed meanwhile (the session ended)
            return None, DataProblem.UNREADABLE
        finally:
            self.file.close()
        if len(data) != self.length:
            return None, DataProblem.UNREADABLE
        return self.collector.finished(data, self.dotted)

    def map(self) -> tuple[bytes | SpilledMessage | None, DataProblem | None]:
        """In a worker thread, after `reserve`: the message, as `read` gives it. One the client
        stuffed nowhere (nearly all) is not copied into memory but mapped from the spill file
        (mapped.SpilledMessage: inspection, the spool and the forwarder read it there); a
        stuffed one is read back, to be unstuffed, and so is one that cannot be mapped."""
        fd, self._fd = self._fd, None
        if fd is None:
            return self.read()
        try:
            try:
                whole = os.fstat(fd).st_size >= self.length     # the terminator follows it
                mapped = SpilledMessage(fd, self.length, access=mmap.ACCESS_READ) if whole else None
            finally:
                os.close(fd)               # the mapping keeps a descriptor of its own
        except (OSError, ValueError):      # a file system that cannot map: read it back
            return self.read()
        self.file.close()
        # (Never past the size bound: DATA past it was drained, never made a SpilledBody.)
        return (mapped, None) if mapped is not None else (None, DataProblem.UNREADABLE)


# Fewer lines of one length than this are left to the split: the columns cost a fixed overhead.
EVEN_RUN_MIN = 16


def _even_span(data: bytes, longest: int) -> tuple[int, int]:
    """(start, end): a span of `data` made of at least EVEN_RUN_MIN well-formed lines of one
    length (or of two such runs that meet), both ends at line starts; (0, 0) when there is
    none. `data` starts at a line start.

    The run is looked for from the first line onwards and, when that does not reach the last
    complete line, from the last complete line backwards (the headers, then a base64 body to
    the block's end). Its length is where the CR column, every (length + 2)th byte from the
    first line end, stops being all CR, or the LF column beside it all LF: two strided slices.
    Then the CRs and LFs of the columns are deleted from a copy of the span, and a memchr for
    CR and LF in what is left finds any other: 18 µs for 64 KB of base64, where the split
    takes 150. Only clean runs are reported; any doubt leaves the bytes to the split."""
    first = data.find(CRLF)
    last = data.rfind(CRLF)
    if first < 0:
        return 0, 0
    span = (0, 0)
    if first <= longest:
        count = _line_ends_in_a_row(data, first, first + 2)
        if count >= EVEN_RUN_MIN and _clean(data, 0, first, count):
            span = (0, count * (first + 2))
    if span[1] == last + 2 or first == last:    # the run reached the end, or one line only
        return span
    begin = data.rfind(CRLF, 0, last) + 2       # where the last complete line starts
    length = last - begin
    if length > longest:
        return span
    step = length + 2
    count = _line_ends_in_a_row(data, last, -step)
    start = last + 2 - count * step
    if start != 0 and (start < 0 or data[start - 2:start] != CRLF):
        start += step            # the run's first line began earlier than its length says
        count -= 1
    if count < EVEN_RUN_MIN or count * step <= span[1] - span[0] or not _clean(data, start, length, count):
        return span
    # Both runs, overlapping or touching: one span (each of its lines lies in one of them).
    return (0, last + 2) if span[1] >= start else (start, last + 2)


def _line_ends_in_a_row(data: bytes, at: int, step: int) -> int:
    """How many CRLFs lie at `at`, `at + step`, `at + 2 * step`... in a row (`step` < 0: going
    back). A few are looked at first, so that text, where the row soon breaks, costs little."""
    count = _column_run(data, at, step, EVEN_RUN_MIN)
    return _column_run(data, at, step, None) if count == EVEN_RUN_MIN else count


def _column_run(data: bytes, at: int, step: int, most: int | None) -> int:
    """`_line_ends_in_a_row` over at most `most` places, or to the end of `data` (None, or
    when `most` places back would pass its start)."""
    stop = None if most is None or at + most * step < 0 else at + most * step
    crs = data[at:stop:step]
    lfs = data[at + 1:None if stop is None else stop + 1:step]
    return min(len(crs) - len(crs.lstrip(b"\r")), len(lfs) - len(lfs.lstrip(b"\n")))


def _clean(data: bytes, start: int, length: int, count: int) -> bool:
    """No CR or LF in `count` lines of `length` from `start` but their line ends (which the
    columns showed to be CRLF)."""
    content = bytearray(data[start:start + count * (length + 2)])
    del content[length::length + 2]      # the CRs
    del content[length::length + 1]      # the LFs, one place nearer each now
    return b"\r" not in content and b"\n" not in content
