"""The `MessageView`: every fact inspection found about one message, read by every later step.

Inspection reports facts; rules decide (policy lives in the administrator's rules, not here). A `MessageView` is immutable, built
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
    UNPARSEABLE = "unparseable"  # the walk itself failed (a bug): nothing after it was read
    # Where a lenient client reads the message differently from our first reading. Each reading
    # is inspected; the disagreement itself is recorded so the shipped rules can refuse it.
    HEADER_END = "header_end"            # a header block read to different ends (junk lines,
                                         # a first line that is a continuation, ":x", "From ")
    BOUNDARY_QUOTING = "boundary_quoting"  # a boundary read two ways (blanks, backslashes)
    ENCODED_MULTIPART = "encoded_multipart"  # a transfer encoding on a multipart (RFC 2045 §6.4)
    ENCODING_TOKEN = "encoding_token"    # a Content-Transfer-Encoding with trailing junk
    FILENAME_CONTROL = "filename_control"  # NUL or a control character inside a file name
    ARCHIVE_READERS_DISAGREE = "archive_readers_disagree"  # e.g. zip central directory vs local
                                         # headers, two zips concatenated


class Uninspectable(enum.Enum):
    """Why a part (a MIME leaf, an archive or one of its members) was not fully inspected.

    Fail closed: whatever was not read to the end is a fact on that part, and the walk goes on
    with the next part, so one poison part never hides the next. The shipped rules refuse it."""

    CORRUPT = "corrupt"            # a broken or truncated container, member or encoding
    ENCRYPTED = "encrypted"        # an encrypted container or member
    UNSUPPORTED = "unsupported"    # a container or compression the inspector cannot open
    DECODER_ERROR = "decoder_error"  # a reader failed on this part (an input nobody foresaw)
    TYPE_UNKNOWN = "type_unknown"  # libmagic failed on the payload
    LIMIT = "limit"                # an inspection bound stopped the reading of this part
    TIME = "time"                  # the deadline came before this part was read to the end


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
    uninspectable: frozenset[Uninspectable] = frozenset()  # why it was not read to the end
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

    @property
    def uninspectable(self) -> frozenset[Uninspectable]:
        """Every reason any part of the message was not read to the end."""
        return frozenset().union(*(p.uninspectable for p in self.parts))
