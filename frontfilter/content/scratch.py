"""Where a big decoded archive waits while its members are read: an unnamed file, mapped.

A 19 MiB zip decoded from a 25 MiB attachment, and the 19 MiB member read out of it, were both
in the worker's memory at once (2.7 times the message at the peak: issue 26). Moved to a file,
the archive is read through a mapping (`mapped.MappedText`) whose pages the readers drop behind
them, so only the member is held. The file is unnamed where the system allows (O_TMPFILE) and
goes with the mapping: nothing is left behind by a crash.

A payload that cannot be moved (no room, no directory) stays in memory, read as before: this
changes where bytes wait, never what is read of them.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

from frontfilter.mapped import MappedText, unnamed_file


@dataclass(frozen=True)
class Scratch:
    above: int                    # payloads larger than this many bytes are moved
    directory: Path | None        # the spool's directory (None: the system's temp directory)

    def mapped(self, payload: bytes) -> bytes | MappedText:
        """`payload` in a file of its own, mapped (copy-on-write: libarchive reads it through
        a ctypes pointer, which needs a writable buffer; nothing writes to it); `payload`
        itself when it is small or cannot be moved."""
        if len(payload) <= self.above:
            return payload
        try:
            with unnamed_file(self.directory, "inspect-") as file:
                file.write(payload)
                file.flush()
                return MappedText(file.fileno(), len(payload), access=mmap.ACCESS_COPY)
        except (OSError, ValueError):
            return payload
