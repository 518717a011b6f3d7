"""`inspect(raw, limits) -> MessageView`: every fact about one message, in one bounded walk.

The MIME tree is walked on the raw bytes (`mime`), so each leaf's byte range is known and the
rewrite can touch one leaf only. The stdlib is used for small things only: RFC 2047 words,
base64/QP, zip/gzip/tar. Each leaf's decoded payload is typed by libmagic (`sniff`), its names
read as the recipient's system will (`names`), its archives listed (`archives`), its active
content flagged (`active`).

Guarantees:
- Never raises on hostile input (MemoryError aside: that is the pipeline's 4xx). Whatever
  cannot be read is a fact: `Ambiguity.UNPARSEABLE`.
- Every bound of `InspectionLimits` crossed is recorded in `limits_exceeded`; the walk stops
  that piece of work, never the whole message silently.
- A part hidden from the inspector must never be shown by a mail client: where the message
  reads two ways (two Content-Types, two boundaries, two encodings, two names, junk base64, a
  missing boundary) the ambiguity is recorded AND the dangerous reading is inspected too.
- Linear in the message size: the raw bytes are never copied whole except to decode a leaf.

Paths are IMAP's: "1", "1.2", "1.2.3"; a message/rfc822 part "2" holds "2.1"…; a second
reading of an ambiguous entity numbers its children under "~2" ("1~2.1"); archive members and
uuencoded blocks are "<leaf>/<name>", nested "<leaf>/<archive>/<name>".
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace

from frontfilter.content import active, archives, names, sniff
from frontfilter.content.decode import transfer_decode, uu_blocks
from frontfilter.content.headers import decode_bytes, decode_words, parse_mime_value, split_fields
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.mime import header_block, split_multipart
from frontfilter.content.view import Ambiguity, Limit, MessageView, Part

MAX_READINGS_PER_ENTITY = 4   # Content-Type x boundary readings walked; each rescans the body
MAX_UU_BLOCKS_PER_PART = 100  # more than any real mail; each is a part and counts as one
TEXT_TYPES = ("text/plain", "text/html")
# Prefer the reading that decodes most: a client decoding base64 where we read 7bit would
# see bytes we never typed.
_ENCODING_PREFERENCE = ("base64", "quoted-printable", "x-uuencode", "x-uue", "uuencode")


@dataclass(frozen=True)
class _Source:
    """The buffer being walked. For an encoded message/rfc822 part, the decoded inner message,
    whose leaves all map to the carrier leaf (`carrier`) for stripping."""

    buf: bytes
    carrier: Part | None = None


@dataclass
class _Walk:
    raw: bytes
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
    types: sniff.TypeCache | None = None   # libmagic's earlier answers; None: always ask it

    def __post_init__(self) -> None:
        self.budget = archives.Budget(self.limits)
        self.exceeded = self.budget.exceeded

    # --- structure -------------------------------------------------------------------------

    def message(self, src: _Source, start: int, end: int, path: str, depth: int,
                default_type: str = "text/plain") -> list[tuple[str, str]]:
        """Walk an entity that is a whole message (the root, or a message/rfc822 body)."""
        return self.entity(src, start, end, path, depth, default_type, message_root=True)

    def entity(self, src: _Source, start: int, end: int, path: str, depth: int,
               default_type: str, message_root: bool = False) -> list[tuple[str, str]]:
        if self.stopped:
            return []
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.exceeded.add(Limit.TIME)
            self.stopped = True
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
        leaf_path = _join(path, "1") if message_root else (path or "1")

        content_types = [parse_mime_value(v) for k, v in fields if k.lower() == "content-type"]
        if len(content_types) > 1:
            self.ambiguities.add(Ambiguity.DUPLICATE_CONTENT_TYPE)
        readings: list[tuple[str, str | None]] = []   # (type, boundary) — distinct, in order
        for ctype in content_types or [parse_mime_value(default_type)]:
            boundaries = list(dict.fromkeys(ctype.get_all("boundary")))
            if len(ctype.get_all("boundary")) > 1:
                self.ambiguities.add(Ambiguity.DUPLICATE_BOUNDARY)
            for boundary in boundaries or [None]:
                reading = (ctype.value or default_type, boundary)
                if reading not in readings and len(readings) < MAX_READINGS_PER_ENTITY:
                    readings.append(reading)

        walked_multipart = False
        leaf_done = False
        for number, (ctype_value, boundary) in enumerate(readings, start=1):
            if ctype_value.startswith("multipart/"):
                if boundary is None or not boundary:
                    self.ambiguities.add(Ambiguity.MULTIPART_WITHOUT_BOUNDARY)
                    continue
                prefix = path if number == 1 else f"{path}~{number}"
                self.multipart(src, block.body, end, boundary, prefix, depth, ctype_value)
                walked_multipart = True
            elif ctype_value in ("message/rfc822", "message/global") and not leaf_done:
                leaf_done = True
                self.rfc822(src, block, end, fields, leaf_path, depth, readings)
            elif not leaf_done:
                leaf_done = True
                self.leaf(src, block, end, fields, leaf_path, depth, readings)
        if not walked_multipart and not leaf_done:
            # Multipart without a usable boundary: clients show the body as text; so do we.
            self.leaf(src, block, end, fields, leaf_path, depth, [("text/plain", None)])
        return fields

    def multipart(self, src: _Source, start: int, end: int, boundary: str, path: str,
                  depth: int, ctype_value: str) -> None:
        if depth + 1 > self.limits.max_depth:
            self.exceeded.add(Limit.DEPTH)
            return
        split = split_multipart(src.buf, start, end, boundary.encode("utf-8", "replace"),
                                self.limits.max_parts)
        if not split.closed:
            self.ambiguities.add(Ambiguity.MISSING_CLOSING_BOUNDARY)
        bodies = split.parts or ((start, end),)   # no delimiter at all: the body as one part
        child_default = "message/rfc822" if ctype_value == "multipart/digest" else "text/plain"
        if not split.parts:
            child_default = "text/plain"
        for number, (part_start, part_end) in enumerate(bodies, start=1):
            if self.stopped:
                return
            self.entity(src, part_start, part_end, _join(path, str(number)), depth + 1, child_default)

    def rfc822(self, src: _Source, block, end: int, fields, leaf_path: str, depth: int,
               readings) -> None:
        encoding = _encoding(fields, self.ambiguities)
        if depth + 1 > self.limits.max_depth:
            self.exceeded.add(Limit.DEPTH)
            self.leaf(src, block, end, fields, leaf_path, depth, readings)
            return
        if encoding in ("", "7bit", "8bit", "binary"):
            # The inner message is in place: walk it on the same bytes, its parts strippable.
            self.message(src, block.body, end, leaf_path, depth + 1)
            return
        # An encoded inner message: decoded, walked on its own buffer; its leaves map to this
        # leaf for stripping.
        carrier, payload = self.leaf(src, block, end, fields, leaf_path, depth, readings)
        if carrier is not None and payload:
            self.message(_Source(payload, carrier), 0, len(payload), leaf_path, depth + 1)

    # --- leaves ----------------------------------------------------------------------------

    def leaf(self, src: _Source, block, end: int, fields, path: str, depth: int,
             readings) -> tuple[Part | None, bytes | None]:
        key = (id(src.buf), block.start, end)
        if key in self.seen:
            return None, None
        self.seen.add(key)
        declared = readings[0][0] if readings else "text/plain"
        declared_types = {r[0] for r in readings}
        ctype = _first(fields, "content-type")
        disposition = _first(fields, "content-disposition") or parse_mime_value("")
        filename, alt_filename, bidi = self.names(disposition.get_all("filename"), ctype.get_all("name") if ctype else [])
        encoding = _encoding(fields, self.ambiguities)

        body = memoryview(src.buf)[block.body:end]
        estimate = len(body) * 3 // 4 if encoding == "base64" else len(body)
        if self.decoded_bytes + estimate > self.limits.max_decoded_bytes:
            self.exceeded.add(Limit.DECODED_BYTES)
            payload = None
        else:
            payload, junk, unknown = transfer_decode(body, encoding)
            if junk:
                self.ambiguities.add(Ambiguity.BASE64_JUNK)
            if unknown:
                self.ambiguities.add(Ambiguity.BAD_ENCODING)
            self.decoded_bytes += len(payload)
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
        if payload is None:
            self.parts.append(part)
            return part, None
        part = self.typed(part, payload, declared_types, archive_depth=0)
        self.parts.append(part)
        charset = ctype.get("charset") if ctype else None
        if declared_types & set(TEXT_TYPES):
            self.text.append(decode_bytes(payload[: self.limits.text_bytes], charset))
        if declared.startswith("text/") and b"begin " in payload:
            self.uuencoded(part, payload)
        self.expand(part, payload)
        return part, payload

    def names(self, filenames: list[str], names_: list[str]) -> tuple[str | None, str | None, bool]:
        """(reported name, other name, bidi): the riskier of distinct candidates is reported."""
        candidates: list[tuple[str, bool]] = []
        for raw_name in filenames + names_:
            name, bidi = names.normalise(decode_words(raw_name))
            if name is not None and all(name != c[0] for c in candidates):
                candidates.append((name, bidi))
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
        )

    def uuencoded(self, carrier: Part, payload: bytes) -> None:
        for name, data in uu_blocks(payload, MAX_UU_BLOCKS_PER_PART):
            if self.entities >= self.limits.max_parts:
                self.exceeded.add(Limit.PARTS)
                return
            self.entities += 1
            filename, bidi = names.normalise(name)
            member = Part(
                path=f"{carrier.path}/{name}", mime_path=carrier.mime_path, declared_type="",
                detected_type="", filename=filename, extensions=names.extensions(filename),
                size=0, sha256="", bidi_control=bidi, uuencoded=True,
                raw_start=carrier.raw_start, raw_body=carrier.raw_body, raw_end=carrier.raw_end,
            )
            member = self.typed(member, data, set(), archive_depth=0)
            index = len(self.parts)
            self.parts.append(member)
            self.expand(member, data, index)

    def expand(self, holder: Part, payload: bytes, index: int | None = None) -> None:
        """List `holder`'s archive members as parts (recursing within max_archive_depth) and
        update the holder's archive facts."""
        kind = archives.kind(payload, holder.detected_type)
        if kind is None:
            return
        index = len(self.parts) - 1 if index is None else index
        if holder.archive_depth + 1 > self.limits.max_archive_depth:
            self.exceeded.add(Limit.ARCHIVE_DEPTH)
            self.parts[index] = replace(self.parts[index], is_archive=True)
            return
        members, readable = archives.members(payload, kind, self.budget)
        if not readable:
            if kind != "tar" or holder.detected_type == "application/x-tar":
                self.ambiguities.add(Ambiguity.UNPARSEABLE)
            return
        encrypted = any(m.encrypted for m in members)
        macros = any(names.basename(m.name).lower() == "vbaproject.bin" for m in members)
        self.parts[index] = replace(self.parts[index], is_archive=True,
                                    encrypted=self.parts[index].encrypted or encrypted,
                                    has_macros=self.parts[index].has_macros or macros)
        for member in members:
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.exceeded.add(Limit.TIME)
                return
            name = member.name or (holder.filename or "data").rsplit(".", 1)[0]
            filename, bidi = names.normalise(names.basename(name))
            part = Part(
                path=f"{holder.path}/{name}", mime_path=holder.mime_path, declared_type="",
                detected_type="", filename=filename, extensions=names.extensions(filename),
                size=0, sha256="", bidi_control=bidi, encrypted=member.encrypted,
                in_archive=True, archive_depth=holder.archive_depth + 1,
                raw_start=holder.raw_start, raw_body=holder.raw_body, raw_end=holder.raw_end,
            )
            if member.data is None:
                if not member.encrypted:
                    self.ambiguities.add(Ambiguity.UNPARSEABLE)
                self.parts.append(part)
                continue
            part = self.typed(part, member.data, set(), part.archive_depth)
            self.parts.append(part)
            self.expand(part, member.data)


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child


def _first(fields, name: str):
    for key, value in fields:
        if key.lower() == name:
            return parse_mime_value(value)
    return None


def _encoding(fields, ambiguities: set[Ambiguity]) -> str:
    values = [v.strip().lower() for k, v in fields if k.lower() == "content-transfer-encoding"]
    if len(set(values)) > 1:
        ambiguities.add(Ambiguity.DUPLICATE_ENCODING)
    for preferred in _ENCODING_PREFERENCE:
        if preferred in values:
            return preferred
    return values[0] if values else ""


def inspect(raw: bytes, limits: InspectionLimits, deadline: float | None = None,
            types: sniff.TypeCache | None = None) -> MessageView:
    """Facts about `raw` (the message as received: CRLF, dot-unstuffed). Never raises.

    `deadline` is a `time.monotonic()` value: past it the walk stops between parts and
    records `Limit.TIME` (a thread cannot be cancelled from outside, so the walk checks).
    `types` remembers libmagic's answers across messages (`sniff.TypeCache`)."""
    walk = _Walk(raw, limits, deadline=deadline, types=types)
    try:
        walk.message(_Source(raw), 0, len(raw), "", 0)
    except MemoryError:
        raise
    except Exception:  # a bug or an input we did not foresee: a fact, never a pass
        walk.ambiguities.add(Ambiguity.UNPARSEABLE)
    headers = tuple((name, decode_words(value)) for name, value in walk.root_fields)
    first = {}
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
