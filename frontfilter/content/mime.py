"""MIME structure on bytes: where a header block ends, where multipart boundaries are.

Works on offsets into one buffer and never copies the body: every function takes
(buffer, start, end) and returns offsets, so the rewrite can replace one entity and leave
every other byte identical. Linear time: each search is a `bytes.find` or an anchored regex
match moving forward only.

Reading rules (RFC 2046 §5.1.1, lenient as clients are):
- A header block ends at the first empty line, or at the first line that is neither a field
  nor a continuation; that line starts the body. Where a lenient reader goes on to the empty
  line instead (`lenient_header_block`), the caller reads the entity both ways.
- A delimiter is "--" + boundary at the start of a line, optionally "--" (close), then
  spaces/tabs, then the end of line. The CRLF before it belongs to the delimiter, so it is not
  part of the preceding entity.
- A missing close delimiter: the last part runs to the end (clients show it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from frontfilter import bytesfind
from frontfilter.mapped import MessageBytes

_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_PADDING_EOL = re.compile(rb"[ \t]*(?:\r\n|\n|$)")


@dataclass(frozen=True)
class HeaderBlock:
    start: int
    end: int         # exclusive; excludes the empty line
    body: int        # where the body starts (after the empty line, if any)
    oversized: bool  # longer than the bound: only the first `max_bytes` were parsed


def header_block(buf: MessageBytes, start: int, end: int, max_bytes: int, mbox_from: bool = False) -> HeaderBlock:
    position = start
    while position < end:
        if position - start > max_bytes:
            # Past the bound we stop reading fields and only look for the end of the block.
            blank = [i for i in (buf.find(b"\n\r\n", position, end), buf.find(b"\n\n", position, end)) if i != -1]
            if not blank:
                return HeaderBlock(start, end, end, True)
            index = min(blank)
            return HeaderBlock(start, index + 1, index + (3 if buf[index + 1] == 0x0D else 2), True)
        newline = buf.find(b"\n", position, end)
        line_end = end if newline == -1 else newline + 1
        content_end = line_end
        if newline != -1:
            content_end = newline - 1 if newline > position and buf[newline - 1] == 0x0D else newline
        if content_end == position:  # the empty line
            return HeaderBlock(start, position, line_end, position - start > max_bytes)
        first = buf[position]
        is_continuation = first in (0x20, 0x09) and position != start
        is_mbox = mbox_from and position == start and buf.startswith(b"From ", position)
        if not (is_continuation or is_mbox or _FIELD_START.match(buf, position, content_end)):
            return HeaderBlock(start, position, position, position - start > max_bytes)
        position = line_end
    return HeaderBlock(start, end, end, end - start > max_bytes)


def lenient_header_block(buf: MessageBytes, block: HeaderBlock, end: int, max_bytes: int) -> HeaderBlock | None:
    """The header block as the most lenient reader reads it, where that differs from `block`.

    `header_block` ends a block at the first line that is neither a field nor a continuation,
    as RFC 5322 says. Python's `email` and some clients go on: past a first line that is a
    continuation (after our Received field it is one), a `:x` line, a `From ` line or a junk
    line, up to the first empty line. None when both end at the same empty line, or when no
    empty line follows within `max_bytes` of the start."""
    if block.body != block.end:      # `block` ended at an empty line: every reader agrees
        return None
    limit = min(end, block.start + max_bytes)
    if buf.startswith(b"\r\n", block.end, limit) or buf.startswith(b"\n", block.end, limit):
        return None                  # the next line is the empty one: nothing in between
    found = [i for i in (buf.find(b"\n\r\n", block.end, limit), buf.find(b"\n\n", block.end, limit))
             if i != -1]
    if not found:
        return None
    index = min(found)
    return HeaderBlock(block.start, index + 1, index + (3 if buf[index + 1] == 0x0D else 2), False)


@dataclass(frozen=True)
class Multipart:
    parts: tuple[tuple[int, int], ...]  # (start, end) of each body part's entity
    closed: bool                        # the close delimiter was found


def split_multipart(buf: MessageBytes, start: int, end: int, boundary: bytes, max_parts: int) -> Multipart:
    """Body parts of a multipart body in buf[start:end]; at most `max_parts` + 1 are returned
    so the caller can tell the bound was crossed."""
    delimiter = b"--" + boundary
    found: list[tuple[int, int, bool]] = []   # (line start, after end of line, is close)
    position = start
    while len(found) <= max_parts:
        index = bytesfind.find(buf, delimiter, 0, position, end)    # "-": none in base64
        if index == -1:
            break
        if index != start and buf[index - 1] != 0x0A:
            position = index + 1
            continue
        after = index + len(delimiter)
        close = buf.startswith(b"--", after) and after + 2 <= end
        match = _PADDING_EOL.match(buf, after + 2 if close else after, end)
        if match is None:  # "--boundaryXYZ": a longer line, not our delimiter
            position = index + 1
            continue
        found.append((index, match.end(), close))
        position = match.end()
        if close:
            break
    parts = []
    for number, (_index, line_end, close) in enumerate(found):
        if close:
            break
        if number + 1 < len(found):
            next_index = found[number + 1][0]
            part_end = next_index - 1 if buf[next_index - 1 : next_index] == b"\n" else next_index
            if part_end > line_end and buf[part_end - 1] == 0x0D:
                part_end -= 1
            part_end = max(part_end, line_end)
        else:
            part_end = end
        parts.append((line_end, part_end))
    closed = bool(found) and found[-1][2]
    return Multipart(tuple(parts), closed)
