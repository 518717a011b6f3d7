"""The `MessageView`: every fact inspection found about one message, read by every later step.

Inspection reports facts; rules decide (STYLE habit 11). A `MessageView` is immutable, built
once per message by `content.inspect`, and holds no reference to the parser's objects, so it
can cross from the worker thread that built it back to the event loop.

Items: every MIME leaf is a `Part`; every member found inside an archive is a `Part` too, with
`in_archive=True`, `archive_depth >= 1` and `mime_path` naming the MIME leaf that carries it —
so an attachment rule matches a member, and `strip` removes the MIME leaf that holds it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Limit(enum.Enum):
    """Inspection bounds. Crossing one is a fact (`MessageView.limits_exceeded`), never a crash."""

    DEPTH = "depth"                      # MIME nesting
    PARTS = "parts"                      # MIME parts in the whole message
    HEADER_BYTES = "header_bytes"        # bytes of one header block
    DECODED_BYTES = "decoded_bytes"      # decoded bytes of all parts together
    ARCHIVE_DEPTH = "archive_depth"      # archives inside archives
    ARCHIVE_MEMBERS = "archive_members"  # members of all archives together
    EXPANDED_SIZE = "expanded_size"      # uncompressed bytes of all archive members together
    COMPRESSION_RATIO = "compression_ratio"  # a member expanding past the ratio: a zip bomb
    TIME = "time"                        # inspection deadline


class Ambiguity(enum.Enum):
    """Places where the message can be read two ways (a parser differential)."""

    DUPLICATE_CONTENT_TYPE = "duplicate_content_type"
    DUPLICATE_BOUNDARY = "duplicate_boundary"
    DUPLICATE_ENCODING = "duplicate_encoding"
    MISSING_CLOSING_BOUNDARY = "missing_closing_boundary"
    BASE64_JUNK = "base64_junk"
    BAD_ENCODING = "bad_encoding"
    MULTIPART_WITHOUT_BOUNDARY = "multipart_without_boundary"
    DUPLICATE_FILENAME = "duplicate_filename"  # filename= and name= disagree
    UNPARSEABLE = "unparseable"  # a part, archive or member the inspector could not read


@dataclass(frozen=True)
class Part:
    path: str                      # "1", "1.2", "1.2/inner.zip/evil.exe" for archive members
    mime_path: str                 # the MIME leaf that holds it ("1.2"); == path for MIME leaves
    declared_type: str             # lower-case "type/subtype" as the sender declared it
    detected_type: str             # libmagic's answer on the whole decoded payload
    filename: str | None           # decoded (RFC 2231, RFC 2047), NFKC, trailing dots/spaces cut
    extensions: tuple[str, ...]    # lower-case, every one: "invoice.pdf.exe" -> ("pdf", "exe")
    size: int                      # decoded bytes
    sha256: str
    disposition: str = ""          # "attachment", "inline" or ""
    bidi_control: bool = False     # the raw name held a bidi control (U+202E and friends)
    type_mismatch: bool = False    # declared and detected disagree beyond the benign pairs
    is_archive: bool = False
    encrypted: bool = False        # an encrypted archive, or an encrypted member
    in_archive: bool = False
    archive_depth: int = 0         # 0 for MIME leaves, 1 for a member of a MIME-level archive...
    has_macros: bool = False       # OOXML vbaProject.bin or OLE VBA storage
    pdf_active_content: bool = False   # /JavaScript, /JS, /Launch, /OpenAction with JS...
    html_script: bool = False      # HTML with <script>, on* handlers or javascript: URLs
    uuencoded: bool = False        # found as a uuencoded block inside a text part
    alt_filename: str | None = None  # the other name when the part names itself two ways
    # Byte offsets in the raw message of the MIME leaf's entity: header block start, body
    # start, end (exclusive; the CRLF before the next boundary is not part of the entity).
    # Archive members and uuencoded blocks carry the offsets of the leaf that holds them.
    raw_start: int = 0
    raw_body: int = 0
    raw_end: int = 0


@dataclass(frozen=True)
class MessageView:
    size: int                                  # bytes of the raw message as received
    headers: tuple[tuple[str, str], ...]       # top-level header fields, values decoded (RFC 2047)
    subject: str
    from_header: str
    parts: tuple[Part, ...]                    # MIME leaves and archive members, in walk order
    text: tuple[str, ...] = field(default_factory=tuple)  # decoded text/plain and text/html bodies (bounded)
    limits_exceeded: frozenset[Limit] = frozenset()
    ambiguities: frozenset[Ambiguity] = frozenset()

    def header_values(self, name: str) -> tuple[str, ...]:
        lowered = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == lowered)

    @property
    def attachments(self) -> tuple[Part, ...]:
        return self.parts
