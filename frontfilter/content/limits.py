"""Inspection bounds: how much of one message `content.inspect` will walk, decode and unpack.

Every bound is a number with its unit in its name or comment, so a reader can check it. Crossing one is
never an exception and never a silent pass: `inspect` stops that piece of work and records the
matching `view.Limit` in `MessageView.limits_exceeded`, so a rule can refuse the message.

The config layer builds this from the `[inspection]` table, whose keys are these field names.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class InspectionLimits:
    max_depth: int = 20                     # MIME nesting levels; deeper is an attack, not mail
    max_parts: int = 500                    # MIME entities (containers and leaves) per message
    max_header_bytes: int = 256 * KIB       # bytes of one header block
    max_decoded_bytes: int = 100 * MIB      # decoded bytes of all MIME leaves together
    max_archive_depth: int = 3              # archives inside archives (a MIME-level archive is 1)
    max_archive_members: int = 1000         # members of all archives of the message together
    max_expanded_size: int = 200 * MIB      # uncompressed bytes of all members together
    max_compression_ratio: int = 100        # uncompressed / compressed bytes of one member
    text_bytes: int = 1 * MIB               # decoded bytes per text part kept for body regexes

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"inspection limit {name} must be a positive integer, got {value!r}")
