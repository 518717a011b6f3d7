"""Files encoded inside text parts: uuencode, BinHex 4.0 and yEnc are found and decoded the way a
lenient decoder does, a broken block is still decoded as far as it goes and said to be corrupt,
and no input makes the finders raise, run long or decode past their bound.

The encoders below follow RFC 1741 (BinHex) and the yEnc 1.3 draft; the BinHex one was checked
against Python 3.10's `binhex` module (removed in 3.11) when these tests were written, and the
ClamAV test file, made by another encoder, is decoded too.
"""

from __future__ import annotations

import base64
import binascii
import random
import time
from pathlib import Path

import pytest

from frontfilter.content.decode import (
    RSRC_FORK_SUFFIX, BlockKind, TextBlock, binhex_blocks, has_text_blocks, text_blocks, transfer_decode,
    uu_blocks, yenc_blocks,
)
from tests.content import corpus
from tests.requires import installed

EXE = corpus.pe()
BIG = EXE + random.Random(0).randbytes(6000)     # long enough to cut anywhere, and incompressible
CLAM = Path("/usr/share/clamav-testfiles")

# ---- encoders -------------------------------------------------------------------------------------

HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MARK = b"(This file must be converted with BinHex 4.0)"


def rle90(data: bytes) -> bytes:
    out = bytearray()
    at = 0
    while at < len(data):
        byte = data[at]
        run = 1
        while at + run < len(data) and data[at + run] == byte and run < 255:
            run += 1
        out += b"\x90\x00" if byte == 0x90 else bytes([byte])
        if run > 2:
            out += bytes([0x90, run])
        elif run == 2:
            out += b"\x90\x00" if byte == 0x90 else bytes([byte])
        at += run
    return bytes(out)


def binhex(name: bytes, data: bytes, rsrc: bytes = b"", *, crc_fault: bool = False) -> bytes:
    """A BinHex 4.0 file, lines of 64 characters, the way the Mac encoders wrote it."""
    header = bytes([len(name)]) + name + b"\0" + b"APPLtest" + b"\0\0" \
        + len(data).to_bytes(4, "big") + len(rsrc).to_bytes(4, "big")
    stream = header + binascii.crc_hqx(header, 0).to_bytes(2, "big")
    stream += data + (binascii.crc_hqx(data, 0) ^ crc_fault).to_bytes(2, "big")
    stream += rsrc + binascii.crc_hqx(rsrc, 0).to_bytes(2, "big")
    encoded = base64.b64encode(rle90(stream)).rstrip(b"=").translate(bytes.maketrans(B64, HQX))
    lines = b"\r\n".join(encoded[i:i + 64] for i in range(0, len(encoded), 64))
    return MARK + b"\r\n\r\n:" + lines + b":\r\n"


def yenc(name: str, data: bytes, *, part: tuple[int, int, int] | None = None, total_size: int | None = None,
         end: bool = True, line: int = 128) -> bytes:
    """A yEnc 1.3 block; `part` = (number, total, offset) makes it one part of a larger file."""
    encoded = bytearray()
    for byte in data:
        byte = (byte + 42) & 0xFF
        encoded += bytes([0x3D, (byte + 64) & 0xFF]) if byte in (0x00, 0x0A, 0x0D, 0x3D) else bytes([byte])
    lines = b"\r\n".join(bytes(encoded[i:i + line]) for i in range(0, len(encoded), line))
    size = len(data) if total_size is None else total_size
    if part is None:
        head = f"=ybegin line={line} size={size} name={name}\r\n".encode()
        tail = f"=yend size={len(data)} crc32={binascii.crc32(data):08x}\r\n".encode()
    else:
        number, total, offset = part
        head = (f"=ybegin part={number} total={total} line={line} size={size} name={name}\r\n"
                f"=ypart begin={offset + 1} end={offset + len(data)}\r\n").encode()
        tail = f"=yend size={len(data)} part={number} pcrc32={binascii.crc32(data):08x}\r\n".encode()
    return head + lines + b"\r\n" + (tail if end else b"")


def uuencode(name: str, data: bytes, *, end: bool = True) -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45))
    return f"begin 644 {name}\n".encode() + lines + (b"`\nend\n" if end else b"")


def plain(block: TextBlock) -> tuple[str, bytes, bool, bool]:
    return block.name, block.data, block.corrupt, block.cut


# ---- BinHex ---------------------------------------------------------------------------------------

@installed((CLAM / "clam.exe.binhex").exists(), "clamav-testfiles not installed")
def test_the_clamav_binhex_test_file_gives_its_executable() -> None:
    text = b"Here it is:\r\n\r\n" + (CLAM / "clam.exe.binhex").read_bytes() + b"\r\n-- \r\nSent from a Mac\r\n"
    assert has_text_blocks(text)
    data, rsrc = binhex_blocks(text)
    assert plain(data) == ("clam.exe", (CLAM / "clam.exe").read_bytes(), False, False)
    assert data.data.startswith(b"MZ") and data.kind is BlockKind.BINHEX
    assert plain(rsrc) == ("clam.exe" + RSRC_FORK_SUFFIX, b"1", False, False)


def test_binhex_data_and_resource_forks_with_runs_are_decoded() -> None:
    data = EXE + b"\0" * 3000 + b"\x90" * 700 + b"\x90\x00\x90\x01" + bytes(range(256)) * 4
    rsrc = b"\x90\x90\x90rsrc" + b"\xff" * 300
    name = "Caf\u00e9 tool.exe"
    text = b"see below\r\n" + binhex(name.encode("mac_roman"), data, rsrc) + b"bye\r\n"
    assert [plain(b) for b in binhex_blocks(text)] == [
        (name, data, False, False), (name + RSRC_FORK_SUFFIX, rsrc, False, False)]


def test_binhex_without_resource_fork_gives_one_block_and_several_streams_all() -> None:
    text = binhex(b"a.exe", EXE) + b"and another\r\n" + binhex(b"b.js", b"WScript.Echo(1)")
    assert [plain(b) for b in binhex_blocks(text)] == [("a.exe", EXE, False, False), ("b.js", b"WScript.Echo(1)", False, False)]


def test_binhex_stream_cut_short_gives_what_decoded_and_is_corrupt() -> None:
    whole = binhex(b"a.exe", BIG)
    for stop in (len(MARK) + 8, len(whole) // 3, len(whole) - 10):
        [block] = binhex_blocks(whole[:stop])
        assert block.corrupt and not block.cut and BIG.startswith(block.data)
    [block] = binhex_blocks(whole[:len(whole) // 2])
    assert block.name == "a.exe" and len(block.data) > 2000


def test_binhex_without_closing_colon_is_decoded_and_corrupt() -> None:
    [block] = binhex_blocks(binhex(b"a.exe", EXE).rstrip(b":\r\n"))
    assert block.data == EXE and block.corrupt


@pytest.mark.parametrize("fault", ["crc", "stray character", "no stream"])
def test_a_broken_binhex_block_is_corrupt(fault: str) -> None:
    if fault == "crc":
        text = binhex(b"a.exe", EXE, crc_fault=True)
    elif fault == "stray character":
        text = binhex(b"a.exe", BIG)
        at = len(text) // 2
        text = text[:at] + b"~" + text[at + 1:]
    else:
        text = MARK + b"\r\nno stream here\r\n"
    blocks = binhex_blocks(text)
    assert blocks and all(b.corrupt for b in blocks)
    if fault == "crc":
        assert blocks[0].data == EXE
    elif fault == "stray character":
        assert BIG.startswith(blocks[0].data) and len(blocks[0].data) > 2000
    else:
        assert [plain(b) for b in blocks] == [("", b"", True, False)]


def test_binhex_runs_stop_at_the_bound() -> None:
    """Run-length coding makes 85 bytes of 3: a header that declares 4 GB and a stream of runs
    decodes to `max_bytes`, no further, and says so."""
    header = b"\x01a\0APPLtest\0\0" + (2 ** 32 - 1).to_bytes(4, "big") + b"\0\0\0\0"
    stream = header + binascii.crc_hqx(header, 0).to_bytes(2, "big") + b"A" + b"\x90\xff" * 100_000
    encoded = base64.b64encode(stream).rstrip(b"=").translate(bytes.maketrans(B64, HQX))
    [block] = binhex_blocks(MARK + b"\r\n:" + encoded + b":", max_bytes=1_000_000)
    assert block.cut and len(block.data) == 1_000_000 and set(block.data) == {ord("A")}


def test_binhex_matches_an_independent_decoder_on_random_files() -> None:
    """Random forks, names and runs, encoded here and decoded there; one changed character is
    either a corrupt block or (when it lands where it changes nothing) the same bytes."""
    generator = random.Random(1741)
    for _ in range(150):
        pick = generator.choice
        data = b"".join(pick([generator.randbytes(9), b"\x90" * generator.randint(1, 600),
                              b"\0" * generator.randint(1, 600), b"\x90\0"]) for _ in range(generator.randint(0, 12)))
        rsrc = generator.randbytes(generator.randint(0, 40)) if generator.random() < 0.5 else b""
        name = bytes(pick(b"abXY.\x8e ") for _ in range(generator.randint(1, 63)))
        text = binhex(name, data, rsrc)
        expected = [(name.decode("mac_roman"), data)] + ([(name.decode("mac_roman") + RSRC_FORK_SUFFIX, rsrc)] if rsrc else [])
        blocks = binhex_blocks(text)
        assert [(b.name, b.data) for b in blocks] == expected and not any(b.corrupt for b in blocks)
        at = generator.randrange(text.index(b":") + 1, len(text) - 3)
        if text[at:at + 1] in b"\r\n":
            continue
        changed = text[:at] + bytes([pick(HQX.replace(text[at:at + 1], b""))]) + text[at + 1:]
        blocks = binhex_blocks(changed)
        assert any(b.corrupt for b in blocks) or [(b.name, b.data) for b in blocks] == expected


# ---- yEnc -----------------------------------------------------------------------------------------

def test_yenc_block_is_decoded_with_its_name() -> None:
    data = EXE + bytes(range(256)) * 3
    text = b"Attached:\r\n" + yenc("my tool.exe", data) + b"\r\nbye\r\n"
    [block] = yenc_blocks(text)
    assert plain(block) == ("my tool.exe", data, False, False) and block.kind is BlockKind.YENC


def test_yenc_parts_are_joined_in_part_order() -> None:
    data = BIG
    cut = len(data) // 2
    first = yenc("big.exe", data[:cut], part=(1, 2, 0), total_size=len(data))
    second = yenc("big.exe", data[cut:], part=(2, 2, cut), total_size=len(data))
    assert [plain(b) for b in yenc_blocks(second + first)] == [("big.exe", data, False, False)]


def test_a_missing_yenc_part_makes_the_file_corrupt() -> None:
    [block] = yenc_blocks(yenc("big.exe", BIG[:1000], part=(1, 2, 0), total_size=len(BIG)))
    assert block.data == BIG[:1000] and block.corrupt


def test_yenc_without_yend_runs_to_the_next_block_and_is_corrupt() -> None:
    text = yenc("a.exe", EXE, end=False) + yenc("b.txt", b"hello")
    assert [plain(b) for b in yenc_blocks(text)] == [("a.exe", EXE, True, False), ("b.txt", b"hello", False, False)]
    [block] = yenc_blocks(yenc("a.exe", EXE, end=False))
    assert block.data == EXE and block.corrupt


@pytest.mark.parametrize("fault", ["size", "crc", "lone escape"])
def test_a_broken_yenc_block_is_corrupt(fault: str) -> None:
    text = yenc("a.exe", EXE)
    if fault == "size":
        text = text.replace(f"size={len(EXE)} name".encode(), f"size={len(EXE) + 1} name".encode())
    elif fault == "crc":
        text = text.replace(b"crc32=", b"crc32=1")
    else:
        text = text.replace(b"\r\n=yend", b"=\r\n=yend")
    [block] = yenc_blocks(text)
    assert block.corrupt and block.data == EXE


def test_a_field_inside_the_yenc_name_is_part_of_the_name() -> None:
    [block] = yenc_blocks(yenc("x size=3 part=2.exe", b"MZ" + b"\0" * 100))
    assert plain(block) == ("x size=3 part=2.exe", b"MZ" + b"\0" * 100, False, False)


def test_yenc_escapes_of_anything_are_read() -> None:
    """Encoders may escape more than the critical bytes; "==" is an escaped "=", not two."""
    text = b"=ybegin line=128 size=3 name=e.bin\r\n=}=n==\r\n=yend size=3\r\n"
    [block] = yenc_blocks(text)
    assert block.data == bytes([(0x7D - 106) & 0xFF, (0x6E - 106) & 0xFF, (0x3D - 106) & 0xFF]) and not block.corrupt


# ---- uuencode, and all three together -------------------------------------------------------------

def test_uu_blocks_are_text_blocks_and_still_read_as_pairs() -> None:
    text = b"see\n" + uuencode("tool.exe", EXE) + b"and\n" + uuencode("b.txt", b"hi")
    blocks = uu_blocks(text)
    assert [plain(b) for b in blocks] == [("tool.exe", EXE, False, False), ("b.txt", b"hi", False, False)]
    assert [(name, data) for name, data in blocks] == [("tool.exe", EXE), ("b.txt", b"hi")]
    assert all(b.kind is BlockKind.UUENCODE for b in blocks)


def test_uu_block_without_end_is_decoded_and_corrupt() -> None:
    [block] = uu_blocks(b"see\n" + uuencode("tool.exe", EXE, end=False))
    assert block.data == EXE and block.corrupt


def test_uuencode_transfer_encoding_still_decodes_and_a_broken_block_is_junk() -> None:
    assert transfer_decode(uuencode("t.exe", EXE), "x-uuencode") == (EXE, False, False)
    assert transfer_decode(uuencode("t.exe", EXE, end=False), "x-uuencode") == (EXE, True, False)
    assert transfer_decode(b"no block", "x-uue") == (b"no block", False, True)


def test_every_kind_in_one_text() -> None:
    text = (b"Three files:\r\n" + uuencode("a.exe", EXE).replace(b"\n", b"\r\n") + binhex(b"b.exe", EXE)
            + yenc("c.exe", EXE) + b"Regards\r\n")
    blocks = text_blocks(text)
    assert [(b.kind, b.name, b.data, b.corrupt) for b in blocks] == [
        (BlockKind.UUENCODE, "a.exe", EXE, False), (BlockKind.BINHEX, "b.exe", EXE, False),
        (BlockKind.YENC, "c.exe", EXE, False)]
    assert [b.kind for b in text_blocks(text, max_blocks=2)] == [BlockKind.UUENCODE, BlockKind.BINHEX]
    bounded = text_blocks(text, max_bytes=len(EXE) + 10)
    assert [(b.kind, len(b.data), b.cut) for b in bounded] == [
        (BlockKind.UUENCODE, len(EXE), False), (BlockKind.BINHEX, 10, True)]


@pytest.mark.parametrize("text", [
    b"", b"Hello,\r\n\r\nlet us begin the meeting at ten: agenda below.\r\n",
    b"<html><body><p>Beginning: now</p></body></html>", bytes(range(256)) * 100,
])
def test_ordinary_text_has_no_blocks(text: bytes) -> None:
    assert text_blocks(text) == []
    assert not has_text_blocks(text) or b"begin" in text


def test_the_pre_check_sees_every_kind() -> None:
    for text in (uuencode("a", b"x"), binhex(b"a", b"x"), yenc("a", b"x")):
        assert has_text_blocks(text) and text_blocks(text)


# ---- hostile input --------------------------------------------------------------------------------

HOSTILE = {
    "uu begins without end": b"begin 644 a\r\n" * 50_000,
    "begin mid-line": b"please begin. " * 80_000,
    "yenc begins without end": b"=ybegin line=128 size=3 name=a\r\nabc\r\n" * 30_000,
    "yenc escapes": b"=ybegin line=128 size=3 name=a\r\n" + b"==" * 400_000 + b"\r\n=yend size=3\r\n",
    "binhex marks": (MARK + b"\r\n:!!:\r\n") * 20_000,
    "binhex marks without stream": (MARK + b"\r\n") * 20_000,
    "binhex run markers": MARK + b"\r\n:" + base64.b64encode(b"\x01a\0APPLtest\0\0\xff\xff\xff\xff\0\0\0\0\0\0A"
                                                     + b"\x90\x02" * 150_000).translate(bytes.maketrans(B64, HQX)),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_linear_and_bounded(name: str) -> None:
    text = HOSTILE[name]
    started = time.perf_counter()
    blocks = text_blocks(text, max_bytes=2_000_000)
    assert time.perf_counter() - started < 1.0
    assert len(blocks) <= 100 and sum(len(b.data) for b in blocks) <= 2_000_000


def test_no_mangled_block_makes_a_finder_raise() -> None:
    generator = random.Random(4)
    seeds = [uuencode("a.exe", EXE[:300]), binhex(b"b.exe", EXE[:300], b"r" * 20), yenc("c.exe", EXE[:300]),
             yenc("d", EXE[:200], part=(1, 2, 0), total_size=400) + yenc("d", EXE[:200], part=(2, 2, 200), total_size=400)]
    for _ in range(3000):
        text = bytearray(generator.choice(seeds))
        for _ in range(generator.randint(1, 4)):
            at = generator.randrange(len(text))
            action = generator.randrange(3)
            if action == 0:
                text[at] = generator.randrange(256)
            elif action == 1:
                del text[at:at + generator.randint(1, 40)]
            else:
                text[at:at] = generator.choice([b"\r\n", b":", b"=", b"\x90", b"=yend\r\n", b"=ybegin ", b"begin 644 x\n"])
        for block in text_blocks(bytes(text), max_bytes=100_000):
            assert isinstance(block.name, str) and isinstance(block.data, bytes) and len(block.data) <= 100_000
