"""Attachment file names: normalise, flag bidi and control characters, list extensions, rank by risk.

A file name is what the recipient sees and what decides which program opens the file, so it is
read the way the recipient's system will read it: NFKC (full-width letters fold to ASCII),
trailing dots and spaces dropped (Windows drops them: "evil.exe. " opens as "evil.exe"), bidi
controls removed (U+202E makes "gpj.exe" display as "exe.jpg") and flagged.

A control character (C0, DEL, C1) has no single reading: a program that treats the name as a C
string stops at a NUL ("run.js\\0.txt" is "run.js"), another deletes it ("run.js.txt"), and
MIME decoders differ on the others. `readings` gives every such reading, and says a control was
there so the caller can record the disagreement; `normalise` gives the first alone.

Guarantees: pure functions, linear, never raise. A name longer than MAX_NAME_CHARS is cut in the
middle, never at its end: the last extension is what the recipient's system acts on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_NAME_CHARS = 1024  # longer than any file system allows (255); the rest is padding
# Of a cut name, the tail kept: it holds the last extensions (no system maps an extension of
# more than a few dozen characters), the head the rest. The two are joined by CUT_MARK, which is
# no dot, so the halves never make an extension that neither had.
NAME_TAIL_CHARS = 768
CUT_MARK = "_"
# Raw names are cut to this before NFKC (which may lengthen a name up to 18 times), so the work
# on a hostile name is bounded before the final cut to MAX_NAME_CHARS.
MAX_RAW_NAME_CHARS = 4 * MAX_NAME_CHARS

# Unicode bidi embedding/override (U+202A–U+202E), isolates (U+2066–U+2069), marks (U+200E/F).
BIDI_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)] + ["\u200e", "\u200f"]
)
_STRIP_BIDI = {ord(c): None for c in BIDI_CONTROLS}
_BIDI = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]")

# C0 controls (NUL to U+001F), DEL and the C1 controls (U+0080–U+009F).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# Extensions that run code, or open something that does, on the recipient's system: used to rank
# two candidate names of one part (which one to report), never to decide anything; the shipped
# rules list their own. One group per reason an attacker sends it.
RISKY_EXTENSIONS = frozenset((
    # Windows programs, libraries, installers and updates.
    "exe scr com pif cpl dll ocx sys drv msi msp mst msu "
    # Script hosts (cmd, Windows Script Host, PowerShell, HTML applications, scriptlets).
    "bat cmd vb vbs vbe js jse ws wsf wsh wsc sct hta htc ps1 ps1xml ps2 ps2xml psc1 psc2 psd1 "
    "psm1 msh msh1 msh2 mshxml msh1xml msh2xml "
    # Interpreters a developer's machine has registered (the py launcher, Perl).
    "py pyc pyo pyw pyz pyzw pl "
    # Shortcuts and locators: open a program, a remote share or a WebDAV search with one click.
    "lnk url website search-ms searchconnector-ms library-ms settingcontent-ms scf xnk shb shs "
    "appref-ms "
    # Disk images: mounted on double-click, and their files lose the Mark of the Web.
    "iso img vhd vhdx dmg udf "
    # Office with macros, and add-ins (an XLL is a DLL Excel loads).
    "docm dotm xlsm xltm xlsb xlam xla xll pptm potm ppam ppsm ppa sldm "
    # Office side doors: OneNote embeds files behind a click, web queries and SYLK run formulas.
    "one onepkg iqy slk "
    # Packages Windows installs: MSIX/AppX, ClickOnce, WPF browser apps, gadgets, Windows Sandbox.
    "msix msixbundle appx appxbundle appinstaller application xbap gadget wsb "
    # Consoles, help and troubleshooters that run what they carry (GrimResource, DogWalk).
    "msc chm hlp diagcab cab "
    # Registry files, setup information, certificates installed with a click.
    "reg inf ins isp cer crt der "
    # Java.
    "jar jnlp "
    # Access projects and databases carry VBA.
    "ade adp mda mdb mde mdt mdw mdz accde "
    # macOS, Linux and Android programs and installers.
    "app command pkg mpkg sh csh ksh elf run appimage desktop deb rpm apk"
).split())


@dataclass(frozen=True)
class NameReadings:
    """Every plausible reading of one raw name. `names`: distinct, non-empty, normalised; the
    first is the whole name with control characters removed, then the name cut at its first
    control (what a C-string reader keeps). Empty when nothing is left of the name."""

    names: tuple[str, ...]
    bidi: bool        # the raw name held a bidi control
    control: bool     # the raw name held a NUL or another control character


def readings(raw: str) -> NameReadings:
    """The names `raw` may be read as; see NameReadings. Controls and bidi controls are looked
    for in the whole raw name (NFKC makes neither), before any cut could drop them."""
    bidi = _BIDI.search(raw) is not None
    first = _CONTROL.search(raw)
    found = [raw] if first is None else [_CONTROL.sub("", raw), raw[:first.start()]]
    names: list[str] = []
    for reading in found:
        reading = unicodedata.normalize("NFKC", _cut(reading, MAX_RAW_NAME_CHARS)).translate(_STRIP_BIDI)
        reading = _cut(reading.rstrip(". "), MAX_NAME_CHARS)
        if reading and reading not in names:
            names.append(reading)
    return NameReadings(tuple(names), bidi, first is not None)


def normalise(name: str | None) -> tuple[str | None, bool]:
    """(normalised name or None, whether the raw name held a bidi control): the first reading."""
    if name is None:
        return None, False
    read = readings(name)
    return (read.names[0] if read.names else None), read.bidi


def _cut(name: str, most: int) -> str:
    """`name` if it is at most `most` characters, else its head and tail joined by CUT_MARK."""
    if len(name) <= most:
        return name
    tail = min(NAME_TAIL_CHARS * most // MAX_NAME_CHARS, most - 1)
    return name[:most - tail - len(CUT_MARK)] + CUT_MARK + name[-tail:]


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
