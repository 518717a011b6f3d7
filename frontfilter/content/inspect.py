"""`inspect(raw, limits) -> MessageView`: every fact about one message, in one bounded walk.

The MIME tree is walked on the raw bytes (`mime`), so each leaf's byte range is known and the
rewrite can touch one leaf only. Each leaf's decoded payload is typed by libmagic (`sniff`), its
names read as the recipient's system will (`names`), its containers opened (`archives` for
archives and compressed files, `embedded` for objects inside documents, uuencode, BinHex and
yEnc blocks inside text, messages and mailboxes carried as attachments), its active content
flagged (`active`). Every member found is a part, opened in turn.

Guarantees:
- Fail closed. Never raises on hostile input (MemoryError aside: that is the pipeline's 4xx).
  Whatever was not read to the end is a fact on the part concerned (`Part.uninspectable`, a
  closed set of reasons), and the walk goes on with the next part: one poison part (a corrupt
  zip, a reader's exception) never hides the parts after it. Bounds crossed are recorded in
  `limits_exceeded`.
- Every plausible reading is inspected. Where the message reads two ways — two Content-Types,
  two boundaries, a boundary quoted so readers differ, a header block that a lenient reader
  ends later, a transfer encoding on a multipart, two file names, junk base64 — the
  ambiguity is recorded AND every reading is walked, so a part hidden from one reading is
  still seen in the other.
- Bounded and linear: each second reading happens only where the first shows the anomaly
  that causes it, and rescans one entity's body, never the message.

Paths are IMAP's: "1", "1.2", "1.2.3"; a message/rfc822 part "2" holds "2.1"…; a second reading
of an ambiguous entity numbers its children under "~2" ("1~2.1"), a lenient header reading
under "~h", a decoded multipart under "~e"; archive members and text blocks are
"<leaf>/<name>", nested "<leaf>/<archive>/<name>".
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field, replace

from frontfilter.content import active, archives, embedded, names, sniff
from frontfilter.content.decode import text_blocks, transfer_decode
from frontfilter.content.headers import decode_bytes, decode_words, parse_mime_value, split_fields
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.members import Listing
from frontfilter.content.scratch import Scratch
from frontfilter.content.mime import header_block, lenient_header_block, split_multipart
from frontfilter.content.facts import Ambiguity, Limit, MessageView, Part, Uninspectable
from frontfilter.mapped import MappedText, MessageBytes, as_bytes, release_pages

MAX_READINGS_PER_ENTITY = 4   # Content-Type x boundary readings walked; each rescans the body
MAX_TEXT_BLOCKS_PER_PART = 100  # more than any real mail; each is a part and counts as one
MAX_MBOX_MESSAGES = 100       # messages read from one mailbox file attached
TEXT_TYPES = ("text/plain", "text/html")
BINHEX_TYPE = "application/mac-binhex40"   # BinHex is text, whatever libmagic calls it
IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")
# Prefer the reading that decodes most: a client decoding base64 where we read 7bit would
# see bytes we never typed.
_ENCODING_PREFERENCE = ("base64", "quoted-printable", "x-uuencode", "x-uue", "uuencode")
# What Python's `email` (feedparser's headerRE) still takes for a header line.
_PYTHON_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_FIELD_LINE = (b"From:", b"To:", b"Subject:", b"Date:", b"Message-ID:", b"Received:",
               b"Return-Path:", b"MIME-Version:", b"Content-Type:")


@dataclass(frozen=True)
class _Source:
    """The buffer being walked. For an encoded message/rfc822 part (or any container walked as
    MIME), the decoded inner bytes, whose leaves all map to the carrier leaf for stripping."""

    buf: MessageBytes
    carrier: Part | None = None


@dataclass
class _Walk:
    raw: MessageBytes
    limits: InspectionLimits
    parts: list[Part] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    ambiguities: set[Ambiguity] = field(default_factory=set)
    entities: int = 0
    decoded_bytes: int = 0
    stopped: bool = False
    seen: set[tuple[int, int, int]] = field(default_factory=set)
    root_fields: list[tuple[str, str]] = field(default_factory=list)
    deadline: float | None = None   # time.monotonic() value; past it the walk stops
    types: sniff.TypeCache | sniff.KnownTypes | None = None   # libmagic's earlier answers; None: always ask it
    scratch: Scratch | None = None   # where a big archive waits for its members to be read

    def __post_init__(self) -> None:
        self.budget = archives.Budget(self.limits)
        self.exceeded = self.budget.exceeded

    def late(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.exceeded.add(Limit.TIME)
            self.stopped = True
        return self.stopped

    def flag(self, index: int, *reasons: Uninspectable) -> None:
        part = self.parts[index]
        self.parts[index] = replace(part, uninspectable=part.uninspectable | frozenset(reasons))

    # --- structure -------------------------------------------------------------------------

    def message(self, src: _Source, start: int, end: int, path: str, depth: int,
                default_type: str = "text/plain") -> list[tuple[str, str]]:
        """Walk an entity that is a whole message (the root, or a message/rfc822 body)."""
        return self.entity(src, start, end, path, depth, default_type, message_root=True)

    def entity(self, src: _Source, start: int, end: int, path: str, depth: int,
               default_type: str, message_root: bool = False) -> list[tuple[str, str]]:
        if self.late():
            return []
        if self.entities >= self.limits.max_parts:
            self.exceeded.add(Limit.PARTS)
            self.stopped = True
            return []
        self.entities += 1
        block = header_block(src.buf, start, end, self.limits.max_header_bytes,
                             mbox_from=message_root and depth == 0)
        if block.oversized:
            self.exceeded.add(Limit.HEADER_BYTES)
        parse_end = min(block.end, start + self.limits.max_header_bytes)
        fields = split_fields(src.buf[start:parse_end])
        if depth == 0 and src.carrier is None:
            self.root_fields = fields  # kept even if the walk below fails
        self.body(src, block, end, fields, path, depth, default_type, message_root)
        # A reader that ends this header block later (at the empty line) sees more fields and
        # a body that starts elsewhere, which decodes to other bytes: walk that reading too.
        # It is a disagreement to refuse where Python's `email` itself reads on (the line we
        # stopped at is a field to it: `:x`, `From `, a continuation) or a Content-* field
        # hides in between; a part that merely starts its text without an empty line is not.
        lenient = lenient_header_block(src.buf, block, end, self.limits.max_header_bytes)
        if lenient is not None:
            more = split_fields(src.buf[block.end:lenient.end])
            if _PYTHON_HEADER_LINE.match(src.buf, block.end) or any(
                    name.lower().startswith("content-") for name, _value in more):
                self.ambiguities.add(Ambiguity.HEADER_END)
            self.body(src, lenient, end, fields + more, f"{path}~h", depth, default_type,
                      message_root)
        return fields

    def body(self, src: _Source, block, end: int, fields, path: str, depth: int,
             default_type: str, message_root: bool) -> None:
        """The body of an entity under each reading of its Content-Type and boundary."""
        leaf_path = _join(path, "1") if message_root else (path or "1")
        content_types = [parse_mime_value(v) for k, v in fields if k.lower() == "content-type"]
        if len(content_types) > 1:
            self.ambiguities.add(Ambiguity.DUPLICATE_CONTENT_TYPE)
        readings: list[tuple[str, str | None, bool]] = []   # (type, boundary, other quoting)
        for ctype in content_types or [parse_mime_value(default_type)]:
            declared = ctype.get_all("boundary")
            if len(declared) > 1:
                self.ambiguities.add(Ambiguity.DUPLICATE_BOUNDARY)
            ours = list(dict.fromkeys(declared))
            others = [b for b in ctype.readings("boundary") if b not in ours]
            named: list[str | None] = list(ours) or [None]
            candidates = [(b, False) for b in named]
            candidates += [(b, True) for b in others]
            for boundary, other in candidates:
                reading = (ctype.value or default_type, boundary, other)
                if reading not in readings and len(readings) < MAX_READINGS_PER_ENTITY:
                    readings.append(reading)

        encoding = _encoding(fields, self.ambiguities)
        walked_multipart = False
        leaf_done = False
        for number, (ctype_value, boundary, other) in enumerate(readings, start=1):
            if ctype_value.startswith("multipart/"):
                if not boundary:
                    self.ambiguities.add(Ambiguity.MULTIPART_WITHOUT_BOUNDARY)
                    continue
                prefix = path if number == 1 else f"{path}~{number}"
                if self.multipart(src, block.body, end, boundary, prefix, depth, ctype_value,
                                  only_if_split=other) and other:
                    self.ambiguities.add(Ambiguity.BOUNDARY_QUOTING)
                walked_multipart = True
                if encoding not in IDENTITY_ENCODINGS:
                    self.encoded_multipart(src, block, end, fields, prefix, depth, boundary,
                                           ctype_value, encoding)
            elif ctype_value in ("message/rfc822", "message/global") and not leaf_done:
                leaf_done = True
                self.rfc822(src, block, end, fields, leaf_path, depth, readings)
            elif not leaf_done:
                leaf_done = True
                self.leaf(src, block, end, fields, leaf_path, depth, readings)
        if not walked_multipart and not leaf_done:
            # Multipart without a usable boundary: clients show the body as text; so do we.
            self.leaf(src, block, end, fields, leaf_path, depth, [("text/plain", None, False)])

    def multipart(self, src: _Source, start: int, end: int, boundary: str, path: str,
                  depth: int, ctype_value: str, only_if_split: bool = False) -> bool:
        """Walk the body parts; False when the boundary splits nothing and `only_if_split`."""
        if depth + 1 > self.limits.max_depth:
            self.exceeded.add(Limit.DEPTH)
            return True
        split = split_multipart(src.buf, start, end, boundary.encode("utf-8", "replace"),
                                self.limits.max_parts)
        if only_if_split and not split.parts:
            return False
        if not split.closed:
            self.ambiguities.add(Ambiguity.MISSING_CLOSING_BOUNDARY)
        bodies = split.parts or ((start, end),)   # no delimiter at all: the body as one part
        child_default = "message/rfc822" if ctype_value == "multipart/digest" else "text/plain"
        if not split.parts:
            child_default = "text/plain"
        for number, (part_start, part_end) in enumerate(bodies, start=1):
            if self.stopped:
                break
            self.isolated(src, part_start, part_end, _join(path, str(number)), depth + 1, child_default)
        return True

    def isolated(self, src: _Source, start: int, end: int, path: str, depth: int,
                 default_type: str) -> None:
        """One body part, walked so that whatever goes wrong in it stays with it."""
        try:
            self.entity(src, start, end, path, depth, default_type)
        except MemoryError:
            raise
        except Exception:  # a reader's failure we did not foresee: a fact on this part
            carrier = src.carrier
            self.parts.append(Part(
                path=path, mime_path=carrier.mime_path if carrier else path,
                declared_type="", detected_type="", filename=None, extensions=(), size=end - start,
                sha256="", uninspectable=frozenset({Uninspectable.DECODER_ERROR}),
                raw_start=carrier.raw_start if carrier else start,
                raw_body=carrier.raw_body if carrier else start,
                raw_end=carrier.raw_end if carrier else end,
            ))

    def encoded_multipart(self, src: _Source, block, end: int, fields, path: str, depth: int,
                          boundary: str, ctype_value: str, encoding: str) -> None:
        """RFC 2045 §6.4 forbids a transfer encoding on a multipart, but decoding clients
        decode the body and split that: so do we, as one more reading."""
        self.ambiguities.add(Ambiguity.ENCODED_MULTIPART)
        carrier_path = f"{path}~e"
        # Not `seen`-checked: the encoded reading walked its body as one text part already.
        carrier, payload = self.leaf(src, block, end, fields, carrier_path, depth,
                                     [(ctype_value, boundary, False)], open_payload=False, once=False)
        if carrier is not None and payload:
            self.multipart(_Source(payload, carrier), 0, len(payload), boundary, carrier_path,
                           depth, ctype_value, only_if_split=False)

    def rfc822(self, src: _Source, block, end: int, fields, leaf_path: str, depth: int,
               readings) -> None:
        encoding = _encoding(fields, self.ambiguities)
        if depth + 1 > self.limits.max_depth:
            self.exceeded.add(Limit.DEPTH)
            self.leaf(src, block, end, fields, leaf_path, depth, readings)
            return
        if encoding in IDENTITY_ENCODINGS:
            # The inner message is in place: walk it on the same bytes, its parts strippable.
            self.message(src, block.body, end, leaf_path, depth + 1)
            return
        # An encoded inner message: decoded, walked on its own buffer; its leaves map to this
        # leaf for stripping.
        carrier, payload = self.leaf(src, block, end, fields, leaf_path, depth, readings,
                                     open_payload=False)
        if carrier is not None and payload:
            self.message(_Source(payload, carrier), 0, len(payload), leaf_path, depth + 1)

    # --- leaves ----------------------------------------------------------------------------

    def leaf(self, src: _Source, block, end: int, fields, path: str, depth: int,
             readings, open_payload: bool = True, once: bool = True) -> tuple[Part | None, bytes | None]:
        key = (id(src.buf), block.body, end)
        if once and key in self.seen:
            return None, None
        self.seen.add(key)
        declared = readings[0][0] if readings else "text/plain"
        declared_types = {r[0] for r in readings}
        ctype = _first(fields, "content-type")
        disposition = _first(fields, "content-disposition") or parse_mime_value("")
        filename, alt_filename, bidi = self.names(disposition.readings("filename"),
                                                  ctype.readings("name") if ctype else [])
        encoding = _encoding(fields, self.ambiguities)
        carrier = src.carrier
        part = Part(
            path=path, mime_path=carrier.mime_path if carrier else path,
            declared_type=declared, detected_type="", filename=filename,
            extensions=names.extensions(filename), size=0, sha256="",
            disposition=disposition.value if disposition.value in ("attachment", "inline") else "",
            bidi_control=bidi, alt_filename=alt_filename,
            raw_start=carrier.raw_start if carrier else block.start,
            raw_body=carrier.raw_body if carrier else block.body,
            raw_end=carrier.raw_end if carrier else end,
        )
        index = len(self.parts)
        self.parts.append(part)
        body = memoryview(src.buf)[block.body:end]
        estimate = len(body) * 3 // 4 if encoding == "base64" else len(body)
        if self.decoded_bytes + estimate > self.limits.max_decoded_bytes:
            self.exceeded.add(Limit.DECODED_BYTES)
            self.flag(index, Uninspectable.LIMIT)
            return self.parts[index], None
        # A big message read from its spill file: the pages the walk mapped so far go, and the
        # decoder drops those it reads as it goes, so they are not held beside the payload.
        release = src.buf.release if isinstance(src.buf, MappedText) else None
        if release is not None:
            release()
        try:
            payload, junk, unknown = transfer_decode(body, encoding, release)
        except MemoryError:
            raise
        except Exception:
            self.flag(index, Uninspectable.DECODER_ERROR)
            return self.parts[index], None
        if junk:
            self.ambiguities.add(Ambiguity.BASE64_JUNK)
        if unknown:
            self.ambiguities.add(Ambiguity.BAD_ENCODING)
        self.decoded_bytes += len(payload)
        try:
            self.parts[index] = self.typed(self.parts[index], payload, declared_types, archive_depth=0)
            charset = ctype.get("charset") if ctype else None
            if declared_types & set(TEXT_TYPES):
                self.text.append(decode_bytes(payload[: self.limits.text_bytes], charset))
            if open_payload:
                opened = self.moved(self.parts[index], payload)
                if opened is not payload:
                    payload = b""      # the bytes go: the archive is in its file now
                self.open(index, opened, depth)
        except MemoryError:
            raise
        except Exception:  # the walk goes on with the next part
            self.flag(index, Uninspectable.DECODER_ERROR)
        return self.parts[index], payload

    def names(self, filenames: list[str], names_: list[str]) -> tuple[str | None, str | None, bool]:
        """(reported name, other name, bidi): the riskier of distinct candidates is reported."""
        candidates: list[tuple[str, bool]] = []
        for raw_name in filenames + names_:
            reading = names.readings(decode_words(raw_name))
            if reading.control:
                self.ambiguities.add(Ambiguity.FILENAME_CONTROL)
            for name in reading.names:
                if all(name != c[0] for c in candidates):
                    candidates.append((name, reading.bidi))
        if not candidates:
            return None, None, False
        if len(candidates) > 1:
            self.ambiguities.add(Ambiguity.DUPLICATE_FILENAME)
        ranked = sorted(candidates, key=lambda c: names.risk(c[0], c[1]), reverse=True)
        alt = next((c[0] for c in candidates if c[0] != ranked[0][0]), None)
        return ranked[0][0], alt, any(c[1] for c in candidates)

    def typed(self, part: Part, payload: bytes, declared_types: set[str], archive_depth: int) -> Part:
        """The facts that come from the payload itself."""
        digest = hashlib.sha256(payload).digest()
        detected = sniff.detect(payload) if self.types is None else self.types.detect(payload, digest)
        is_html = bool(declared_types & {"text/html", "application/xhtml+xml"}) or detected == "text/html" \
            or bool(set(part.extensions) & active.HTML_EXTENSIONS)
        problems = part.uninspectable | ({Uninspectable.TYPE_UNKNOWN} if not detected else set())
        return replace(
            part,
            detected_type=detected,
            size=len(payload),
            sha256=digest.hex(),
            type_mismatch=bool(part.declared_type) and sniff.mismatch(part.declared_type, detected),
            has_macros=part.has_macros or active.ole_has_macros(payload),
            pdf_active_content=active.is_pdf(payload) and active.pdf_active_content(payload),
            html_script=is_html and active.html_script(payload),
            archive_depth=archive_depth,
            uninspectable=frozenset(problems),
        )

    # --- what a payload carries ------------------------------------------------------------

    def moved(self, part: Part, payload: bytes) -> bytes | MappedText:
        """A big archive moved to a file of its own (content.scratch) before its members are
        read, so that the archive and its members are not in memory together. Only what the
        archive readers alone read: not a payload `open` also reads as text or as mail."""
        if self.scratch is None \
                or _read_as_text(part) or part.detected_type in ("message/rfc822", "message/global") \
                or payload.startswith(b"From ") \
                or archives.kind(payload, part.detected_type) not in archives.MAPPED_KINDS:
            return payload
        return self.scratch.mapped(payload)

    def open(self, index: int, payload: MessageBytes, depth: int) -> None:
        """Everything the payload at `self.parts[index]` carries, each a part, opened in turn.
        A payload `moved` to a file is an archive only, never text: were it ever one, it
        would be read all the same, copied back into memory."""
        part = self.parts[index]
        if _read_as_text(part):
            self.text_blocks(index, as_bytes(payload), depth)
        self.expand(index, payload, depth)
        self.mailbox(index, payload, depth)

    def text_blocks(self, index: int, payload: bytes, depth: int) -> None:
        """uuencode, BinHex and yEnc blocks in a text: clients decode and offer them as files."""
        carrier = self.parts[index]
        room = max(self.limits.max_decoded_bytes - self.decoded_bytes, 0)
        for block in text_blocks(payload, MAX_TEXT_BLOCKS_PER_PART, room):
            if self.entities >= self.limits.max_parts:
                self.exceeded.add(Limit.PARTS)
                self.flag(index, Uninspectable.LIMIT)
                return
            self.entities += 1
            self.decoded_bytes += len(block.data)
            if block.cut:
                self.exceeded.add(Limit.DECODED_BYTES)
            problems = {Uninspectable.CORRUPT} if block.corrupt else set()
            if block.cut:
                problems.add(Uninspectable.LIMIT)
            filename, bidi = names.normalise(block.name)
            member = Part(
                path=f"{carrier.path}/{block.name}", mime_path=carrier.mime_path, declared_type="",
                detected_type="", filename=filename, extensions=names.extensions(filename),
                size=0, sha256="", bidi_control=bidi, uuencoded=True,
                uninspectable=frozenset(problems),
                raw_start=carrier.raw_start, raw_body=carrier.raw_body, raw_end=carrier.raw_end,
            )
            self.member(member, block.data, depth)

    def mailbox(self, index: int, payload: MessageBytes, depth: int) -> None:
        """A message or a mailbox attached as a file (an .eml, an mbox, also inside an
        archive): clients open it as mail, so its parts are walked as mail. Its leaves map to
        this part for stripping. A body part that merely reads like mail is not a file."""
        part = self.parts[index]
        is_file = part.in_archive or part.uuencoded or part.filename is not None \
            or part.disposition == "attachment"
        if not is_file or part.declared_type in ("message/rfc822", "message/global"):
            return                                      # not a file, or walked as mail already
        spans = _mbox_messages(payload) if payload.startswith(b"From ") else []
        if not spans and part.detected_type == "message/rfc822":
            spans = [(0, len(payload))]
        if not spans:
            return
        if depth + 1 > self.limits.max_depth:
            self.exceeded.add(Limit.DEPTH)
            self.flag(index, Uninspectable.LIMIT)
            return
        source = _Source(payload, part)
        for number, (start, end) in enumerate(spans[:MAX_MBOX_MESSAGES], start=1):
            if self.stopped:
                return
            if payload.startswith(b"From ", start):    # the mbox separator is not a field
                start = min(payload.find(b"\n", start) + 1 or end, end)
            self.message(source, start, end, f"{part.path}/{number}", depth + 1)

    def expand(self, index: int, payload: MessageBytes, depth: int) -> None:
        """List the archive members or embedded objects of `self.parts[index]` as parts
        (recursing within max_archive_depth) and update the holder's facts. Documents are
        read as bytes: a payload `moved` to a file is an archive, never one of them."""
        holder = self.parts[index]
        kind = archives.kind(payload, holder.detected_type)
        if kind is None and not embedded.kinds(as_bytes(payload), _document_type(holder)):
            return
        if holder.archive_depth + 1 > self.limits.max_archive_depth:
            self.exceeded.add(Limit.ARCHIVE_DEPTH)
            self.parts[index] = replace(holder, is_archive=kind is not None,
                                        uninspectable=holder.uninspectable | {Uninspectable.LIMIT})
            return
        listing: Listing | None
        active_pdf = False
        if kind is not None:
            listing = archives.members(payload, kind, self.budget, self.deadline)
        else:
            document = embedded.read(as_bytes(payload), _document_type(holder), self.budget, self.deadline)
            listing = None if document is None else document.listing
            active_pdf = document is not None and document.pdf_active_content
        if listing is None:
            return
        if listing.disagreement:
            self.ambiguities.add(Ambiguity.ARCHIVE_READERS_DISAGREE)
        members = listing.members
        macros = any(names.basename(m.name).lower() == "vbaproject.bin" for m in members)
        encrypted = any(m.encrypted for m in members)
        self.parts[index] = replace(
            holder, is_archive=holder.is_archive or kind is not None,
            encrypted=holder.encrypted or encrypted, has_macros=holder.has_macros or macros,
            pdf_active_content=holder.pdf_active_content or active_pdf,
            uninspectable=holder.uninspectable | listing.problems)
        for item in members:
            if self.late():
                self.flag(index, Uninspectable.TIME)
                return
            name = item.name or (holder.filename or "data").rsplit(".", 1)[0]
            filename, bidi = names.normalise(names.basename(name))
            problems = {item.problem} if item.problem else set()
            if item.encrypted:
                problems.add(Uninspectable.ENCRYPTED)
            part = Part(
                path=f"{holder.path}/{name}", mime_path=holder.mime_path, declared_type="",
                detected_type="", filename=filename, extensions=names.extensions(filename),
                size=0, sha256="", bidi_control=bidi, encrypted=item.encrypted,
                in_archive=True, archive_depth=holder.archive_depth + 1,
                uninspectable=frozenset(problems),
                raw_start=holder.raw_start, raw_body=holder.raw_body, raw_end=holder.raw_end,
            )
            if item.data is None:
                self.parts.append(part)
                continue
            self.member(part, item.data, depth)

    def member(self, part: Part, data: bytes, depth: int) -> None:
        """A part found inside another: typed and opened, whatever goes wrong kept on it."""
        index = len(self.parts)
        self.parts.append(part)
        try:
            self.parts[index] = self.typed(part, data, set(), part.archive_depth)
            self.open(index, data, depth)
        except MemoryError:
            raise
        except Exception:
            self.flag(index, Uninspectable.DECODER_ERROR)


def _read_as_text(part: Part) -> bool:
    """A part whose text is searched for files encoded in it (`text_blocks`)."""
    return part.detected_type.startswith("text/") or part.declared_type.startswith("text/") \
        or BINHEX_TYPE in (part.detected_type, part.declared_type)


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child


def _first(fields, name: str):
    for key, value in fields:
        if key.lower() == name:
            return parse_mime_value(value)
    return None


def _encoding(fields, ambiguities: set[Ambiguity]) -> str:
    """The transfer encoding a decoding client uses. Its first token counts: clients decode
    `base64 x` and `base64;x` as base64 (the trailing junk is an ambiguity)."""
    values = []
    for key, value in fields:
        if key.lower() == "content-transfer-encoding":
            token, rest = _first_token(value)
            if rest:
                ambiguities.add(Ambiguity.ENCODING_TOKEN)
            values.append(token)
    if len(set(values)) > 1:
        ambiguities.add(Ambiguity.DUPLICATE_ENCODING)
    for preferred in _ENCODING_PREFERENCE:
        if preferred in values:
            return preferred
    return values[0] if values else ""


def _first_token(value: str) -> tuple[str, str]:
    """("base64", "x") for "Base64 x", "base64;x" or "base64 (comment) x"."""
    text = value.strip().lower()
    for separator in (" ", "\t", ";", "(", ","):
        text = text.replace(separator, " ")
    token, _sep, rest = text.partition(" ")
    return token, rest.strip()


def _document_type(part: Part) -> str:
    """The type `embedded` reads a part as: libmagic's, or HTML where the sender's type or
    name says HTML (a browser opens it as such whatever libmagic thinks of a fragment)."""
    if part.declared_type == "text/html" or set(part.extensions) & active.HTML_EXTENSIONS:
        return "text/html"
    return part.detected_type


def _mbox_messages(payload: MessageBytes) -> list[tuple[int, int]]:
    """Spans of the messages of an mbox file ("From " lines before each), or [] when the
    payload is not one: the line after the first "From " line must be a header field."""
    first_end = payload.find(b"\n")
    if first_end == -1 or not payload.startswith(_FIELD_LINE, first_end + 1):
        return []
    starts = [0]
    position = 0
    while len(starts) < MAX_MBOX_MESSAGES:
        position = payload.find(b"\nFrom ", position + 1)
        if position == -1:
            break
        starts.append(position + 1)
    spans = []
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(payload)
        spans.append((start, end))
    return spans


def inspect(raw: MessageBytes, limits: InspectionLimits, deadline: float | None = None,
            types: sniff.TypeCache | sniff.KnownTypes | None = None, scratch: Scratch | None = None) -> MessageView:
    """Facts about `raw` (the message as received: CRLF, dot-unstuffed). Never raises.

    `deadline` is a `time.monotonic()` value: past it the walk stops between parts and
    records `Limit.TIME` (a thread cannot be cancelled from outside, so the walk checks, and
    the readers of containers check between members and blocks).
    `types` remembers libmagic's answers across messages (`sniff.TypeCache`).
    `scratch`: where a big archive is moved while its members are read (None: kept in memory).
    `raw` may be a big message mapped from its spill file (`mapped.MappedText`)."""
    walk = _Walk(raw, limits, deadline=deadline, types=types, scratch=scratch)
    try:
        walk.message(_Source(raw), 0, len(raw), "", 0)
    except MemoryError:
        raise
    except Exception:  # a bug or an input we did not foresee: a fact, never a pass
        walk.ambiguities.add(Ambiguity.UNPARSEABLE)
    release_pages(raw)
    headers = tuple((name, decode_words(value)) for name, value in walk.root_fields)
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    return MessageView(
        size=len(raw),
        headers=headers,
        subject=first.get("subject", ""),
        from_header=first.get("from", ""),
        parts=tuple(walk.parts),
        text=tuple(walk.text),
        limits_exceeded=frozenset(walk.exceeded),
        ambiguities=frozenset(walk.ambiguities),
    )
