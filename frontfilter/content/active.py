"""Active content in documents: Office macros, PDF actions, HTML scripts. Byte searches only.

These are cheap, linear byte searches over the decoded payload, deliberately simple; they
report that a document *can* run code, never what the code does. Known blind spots: PDF names
inside compressed object streams (/ObjStm) are not inflated, and HTML obfuscated beyond
entities-free text (e.g. `java&#x73;cript:`) is not decoded.

- OOXML macros: a zip member named `vbaProject.bin` (any case, any folder) — checked by
  `archives` while listing members, since it needs the member names.
- OLE macros: the compound file's directory holds a `VBA` storage or `_VBA_PROJECT` stream.
  Directory entry names are UTF-16LE; we search the bytes for `_VBA_PROJECT` anywhere and for
  `VBA\\0` at the start of a 128-byte directory entry (entries are 128-byte aligned in the
  file: sectors start at multiples of 512 and hold 4 or 32 entries). A byte search may find a
  name in an unallocated slot: a false positive we accept (it errs towards flagging).
"""

from __future__ import annotations

import re

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_VBA_PROJECT = "_VBA_PROJECT".encode("utf-16-le")
_VBA_ENTRY = "VBA\0".encode("utf-16-le")


def ole_has_macros(payload: bytes) -> bool:
    if not payload.startswith(OLE_MAGIC):
        return False
    if _VBA_PROJECT in payload:
        return True
    position = payload.find(_VBA_ENTRY)
    while position != -1:
        if position % 128 == 0:
            return True
        position = payload.find(_VBA_ENTRY, position + 1)
    return False


# PDF names (ISO 32000 §7.3.5) may spell any byte as #xx: /J#61vaScript is /JavaScript.
_PDF_ACTIVE_NAMES = frozenset({b"javascript", b"js", b"launch", b"embeddedfile", b"embeddedfiles",
                               b"richmedia", b"xfa"})
# One pass over the PDF, not two: each name is either an active one written plainly (group 1),
# or one with #xx escapes to decode and look up. Neither kind holds a "/", so no match of one
# kind can hide a match of the other.
_PDF_NAME = re.compile(rb"/(?:(JavaScript|JS|Launch|EmbeddedFiles?|RichMedia|XFA)(?![A-Za-z0-9#])"
                       rb"|[A-Za-z0-9]*#[0-9A-Fa-f]{2}[A-Za-z0-9#]*)")
_HEX_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")


def is_pdf(payload: bytes) -> bool:
    # Readers accept the header anywhere in the first 1024 bytes.
    return b"%PDF-" in payload[:1024]


def pdf_active_content(payload: bytes) -> bool:
    """JavaScript, launch actions, embedded files, rich media or XFA forms, escaped or not.
    An /OpenAction pointing at JavaScript is caught by the /JavaScript or /JS it must name."""
    for match in _PDF_NAME.finditer(payload):
        if match.group(1) is not None:
            return True
        name = _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), match.group(0))
        if name[1:].lower() in _PDF_ACTIVE_NAMES:
            return True
    return False


_HTML_SCRIPT = re.compile(
    rb"<\s*script\b|[\s/\"'`]on[a-z]{3,30}\s*=|javascript\s*:|vbscript\s*:", re.I
)
HTML_EXTENSIONS = frozenset({"htm", "html", "xhtml", "shtml", "hta", "svg", "mht", "mhtml"})


def html_script(payload: bytes) -> bool:
    return _HTML_SCRIPT.search(payload) is not None
