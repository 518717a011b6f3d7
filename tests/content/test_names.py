"""File names read as the recipient's system reads them: the extension survives any length, and
a control character inside a name gives every reading a program may make of it."""

from __future__ import annotations

import time

import pytest

from frontfilter.content import names
from frontfilter.content.names import MAX_NAME_CHARS, NameReadings, extensions, normalise, readings


@pytest.mark.parametrize("raw", ["a" * 2000 + ".js", "a" * 2000 + ".pdf.exe", "x." * 3000 + "scr",
                                 "a" * (MAX_NAME_CHARS + 1) + ".hta", "\uff41" * 5000 + ".\uff45\uff58\uff45"])
def test_a_long_name_keeps_its_last_extension(raw: str) -> None:
    """Cut in the middle, never at the end: the last extension is what decides what opens it."""
    [name] = readings(raw).names
    assert len(name) <= MAX_NAME_CHARS
    assert extensions(name)[-1] == raw.rsplit(".", 1)[1].replace("\uff45", "e").replace("\uff58", "x")
    assert normalise(raw)[0] == name


def test_a_cut_never_makes_an_extension_neither_half_had() -> None:
    """Head ".ex" and tail "e." would join into ".exe." without a mark between them."""
    tail = "e." + "c" * 762 + ".txt"
    raw = "a" * 252 + ".ex" + "Z" * 500 + tail
    [name] = readings(raw).names
    assert name.endswith(tail) and "exe" not in extensions(name) and extensions(name)[-1] == "txt"


def test_a_name_within_the_bound_is_kept_whole() -> None:
    raw = "b" * (MAX_NAME_CHARS - 4) + ".exe"
    assert readings(raw).names == (raw,)


@pytest.mark.parametrize("raw, expected", [
    ("run.js\0.txt", ("run.js.txt", "run.js")),          # deleted, or read as a C string
    ("run.js\x01.txt", ("run.js.txt", "run.js")),        # C0
    ("run.js\x7f.txt", ("run.js.txt", "run.js")),        # DEL
    ("run.js\x85.txt", ("run.js.txt", "run.js")),        # C1 (NEL)
    ("in\tvoice.exe", ("invoice.exe", "in")),
    ("invoice.exe\r\n", ("invoice.exe",)),               # both readings alike: one name
    ("\0evil.exe", ("evil.exe",)),                       # the cut reading is empty: left out
])
def test_a_control_character_gives_each_reading(raw: str, expected: tuple[str, ...]) -> None:
    read = readings(raw)
    assert read.names == expected and read.control and not read.bidi


def test_a_name_of_controls_only_has_no_reading() -> None:
    assert readings("\0\x01\x02") == NameReadings((), bidi=False, control=True)
    assert normalise("\0\x01") == (None, False)


def test_a_plain_name_has_one_reading_and_no_flags() -> None:
    assert readings("report.pdf") == NameReadings(("report.pdf",), bidi=False, control=False)


def test_a_control_far_inside_a_long_name_is_still_seen() -> None:
    """Controls are looked for before the cut that bounds the work drops the middle."""
    raw = "a" * 3000 + ".js\0" + "b" * 9000 + ".txt"
    read = readings(raw)
    assert read.control and [extensions(n)[-1] for n in read.names] == ["txt", "js"]


def test_bidi_controls_are_removed_and_flagged() -> None:
    read = readings("invoice\u202egpj.exe")
    assert read.names == ("invoicegpj.exe",) and read.bidi and not read.control
    assert normalise("invoice\u202egpj.exe") == ("invoicegpj.exe", True)


def test_normalise_keeps_its_contract() -> None:
    assert normalise(None) == (None, False)
    assert normalise("evil.exe. ") == ("evil.exe", False)
    assert normalise("\uff45\uff56\uff49\uff4c.exe") == ("evil.exe", False)   # full width
    assert normalise("...") == (None, False)


def test_hostile_names_are_linear() -> None:
    started = time.perf_counter()
    for raw in ["\ufdfa" * 200_000, "\0" * 200_000 + ".exe", "a." * 200_000, "\u202e" * 200_000]:
        readings(raw)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("ext", ["one", "onepkg", "iqy", "slk", "iso", "img", "vhd", "vhdx", "dmg", "lnk",
                                 "url", "website", "search-ms", "searchconnector-ms", "library-ms", "hta",
                                 "msix", "msixbundle", "appx", "appxbundle", "appinstaller", "xll", "xla",
                                 "xlam", "ppa", "wsc", "sct", "cab", "diagcab", "msc", "settingcontent-ms",
                                 "jnlp", "pyz", "application", "gadget", "exe", "js", "docm"])
def test_current_attack_file_types_rank_as_risky(ext: str) -> None:
    assert ext in names.RISKY_EXTENSIONS
    assert names.risk(f"a.{ext}") > names.risk("a.pdf")


def test_common_documents_do_not_rank_as_risky() -> None:
    assert not {"pdf", "docx", "xlsx", "pptx", "txt", "jpg", "png", "zip", "csv", "doc", "xls"} \
        & names.RISKY_EXTENSIONS
