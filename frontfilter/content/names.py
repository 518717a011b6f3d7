"""Attachment file names: normalise, flag bidi controls, list extensions, rank by risk.

A file name is what the recipient sees and what decides which program opens the file, so it is
read the way the recipient's system will read it: NFKC (full-width letters fold to ASCII),
trailing dots and spaces dropped (Windows drops them: "evil.exe. " opens as "evil.exe"), bidi
controls removed (U+202E makes "gpj.exe" display as "exe.jpg") and flagged.

Guarantees: pure functions, linear, never raise. Names are cut to MAX_NAME_CHARS first.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 1024  # longer than any file system allows (255); the rest is padding

# Unicode bidi embedding/override (U+202A–U+202E), isolates (U+2066–U+2069), marks (U+200E/F).
BIDI_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)] + ["\u200e", "\u200f"]
)
_STRIP_BIDI = {ord(c): None for c in BIDI_CONTROLS}

# Extensions Windows/macOS run or that carry code; used only to rank two candidate names of
# one part (which one to report), never to decide anything.
RISKY_EXTENSIONS = frozenset(
    "exe scr com pif bat cmd vbs vbe js jse wsf wsh hta msi msp dll cpl jar ps1 psm1 lnk reg "
    "iso img vhd vhdx docm xlsm pptm dotm xltm potm xlam ppam sldm one chm url scf inf "
    "app command sh elf apk".split()
)


def normalise(name: str | None) -> tuple[str | None, bool]:
    """(normalised name or None, whether the raw name held a bidi control)."""
    if name is None:
        return None, False
    name = name[:MAX_NAME_CHARS]
    bidi = any(c in BIDI_CONTROLS for c in name)
    name = unicodedata.normalize("NFKC", name).translate(_STRIP_BIDI)
    name = name.replace("\x00", "").rstrip(". \t\r\n")
    return (name or None), bidi


def basename(name: str) -> str:
    """The last path component, for either separator (archive members use both)."""
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def extensions(name: str | None) -> tuple[str, ...]:
    """Every extension, lower-case: "invoice.PDF.exe" -> ("pdf", "exe"). A leading dot does
    not start an extension (".profile" has none)."""
    if not name:
        return ()
    pieces = basename(name).lstrip(".").split(".")[1:]
    return tuple(p.strip().lower() for p in pieces if p.strip())


def risk(name: str | None, bidi: bool = False) -> tuple[int, int, int]:
    """A sort key: the riskier name of two sorts higher."""
    exts = extensions(name)
    last_risky = 1 if exts and exts[-1] in RISKY_EXTENSIONS else 0
    any_risky = sum(1 for e in exts if e in RISKY_EXTENSIONS)
    return (last_risky + int(bidi), any_risky, len(exts))
