"""The "fail closed on content" regression corpus, built in code: one builder per case.

Each case is a trick that once carried a Windows executable (or a script, a macro, an active
document) past inspection to the backend while the same payload without the trick was refused.
`CASES` maps a case name to a `Case`: the attack message, the `needles` (byte strings that must
not be decodable from whatever the backend receives: the payload, and the container that
carries it) and a control (the same message without the trick, carrying something harmless),
which must arrive untouched.

The executable is `EXE`: a valid-looking PE32+ header (libmagic types it as a PE) followed by a
marker, so that finding it in a delivered message is exact. Nothing here runs or downloads
anything; the containers are written with libarchive, the stdlib compressors, or by hand for the
formats no writer here knows (RAR 4, CAB, ARJ, SZDD, TNEF, BinHex, yEnc), each stored
(uncompressed), which is the simplest valid form of each.

`decodable(raw)` is the other half: every payload a mail client could get out of a delivered
message (Python's email under both policies, plus the lenient readings Thunderbird makes: an
encoding's first token, an encoded multipart decoded and split).

`python -m tests.content.fail_closed_corpus DIR` writes every attack and control as .eml files,
for trying them with `frontfilter scan` by hand.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import email
import email.policy
import importlib.util
import io
import itertools
import lzma
import quopri
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libarchive

from tests.content import corpus as c

DOCUMENTS = Path(__file__).resolve().parent.parent / "data" / "documents"
_spec = importlib.util.spec_from_file_location("make_documents", DOCUMENTS / "make_documents.py")
documents = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(documents)

EXE = c.pe() + b"frontfilter fail-closed test executable, harmless\0" + bytes(range(256))
SCRIPT = b"var s = new ActiveXObject('WScript.Shell'); s.Run('calc.exe'); // fail-closed test\r\n"
NOTES = b"Meeting notes: nothing to see here.\r\n" * 4
PNG = c.png()


@dataclass(frozen=True)
class Case:
    klass: int                  # the class of the issue (1-10)
    attack: bytes               # the message as the client sends it (CRLF)
    needles: tuple[bytes, ...]  # none of these may be decodable from what is delivered
    control: bytes              # the same message without the trick: delivered untouched


# ---- message assembly -----------------------------------------------------------------------

def wire(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


TOP = "From: Alice <alice@example.net>\nTo: bob@example.org\nSubject: {subject}\nMIME-Version: 1.0\n"
TEXT_PART = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nHello Bob,\r\nsee attached.\r\n"


def leaf(headers: str, body: bytes) -> bytes:
    """A part: `headers` (LF or CRLF, no trailing blank line) then a blank line then `body`."""
    return wire(headers.rstrip("\n") + "\n\n") + body


def attached(data: bytes, content_type: str, filename: str) -> bytes:
    """An ordinary base64 attachment part."""
    return leaf(f'Content-Type: {content_type}; name="{filename}"\n'
                f'Content-Disposition: attachment; filename="{filename}"\n'
                "Content-Transfer-Encoding: base64", b64(data))


def multipart(*parts: bytes, subject: str = "documents", boundary: str = "b1",
              boundary_param: str | None = None) -> bytes:
    """A multipart/mixed message. `boundary_param` is the parameter as written (quotes and
    all) when it differs from the delimiter used."""
    param = boundary_param if boundary_param is not None else f'"{boundary}"'
    head = wire(TOP.format(subject=subject) + f"Content-Type: multipart/mixed; boundary={param}\n\n")
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part.rstrip(b"\r\n") + b"\r\n" for part in parts)
    return head + body + b"--" + boundary.encode() + b"--\r\n"


def with_text(*parts: bytes, **options: str) -> bytes:
    return multipart(TEXT_PART, *parts, **options)


# ---- the payloads -----------------------------------------------------------------------------

def exe_part(filename: str = "invoice.exe") -> bytes:
    return attached(EXE, "application/octet-stream", filename)


def png_part(filename: str = "logo.png") -> bytes:
    return attached(PNG, "image/png", filename)


def text_part(filename: str = "notes.txt") -> bytes:
    return attached(NOTES, "text/plain", filename)


# ---- class 1: a first header line that is a continuation ----------------------------------------

def first_line_continuation() -> Case:
    # RFC 5322 alone: the header block ends at once, one text/plain body. After the Received
    # field the relay puts on top, " x" continues that field and clients see the multipart.
    return Case(1, wire(" x-folded: yes\n") + with_text(exe_part()), (EXE,), with_text(png_part()))


def first_line_tab() -> Case:
    return Case(1, wire("\tx-folded: yes\n") + with_text(exe_part()), (EXE,), with_text(png_part()))


# ---- class 2: a corrupt part before the executable ---------------------------------------------

def bad_deflate_zip() -> bytes:
    """A zip whose only member's deflate stream starts with an invalid block type (BTYPE=11):
    zlib.error in any reader."""
    good = bytearray(c.zip_of({"readme.txt": b"hello " * 200}))
    name_length, extra_length = struct.unpack_from("<HH", good, 26)
    good[30 + name_length + extra_length] = 0x07        # BFINAL=1, BTYPE=11 (reserved)
    return bytes(good)


def _zipcrypto_keys(password: bytes) -> list[int]:
    keys = [0x12345678, 0x23456789, 0x34567890]
    for byte in password:
        _zipcrypto_update(keys, byte)
    return keys


def _crc_byte(crc: int, byte: int) -> int:
    return binascii.crc32(bytes([byte]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _zipcrypto_update(keys: list[int], byte: int) -> None:
    keys[0] = _crc_byte(keys[0], byte)
    keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
    keys[2] = _crc_byte(keys[2], (keys[1] >> 24) & 0xFF)


def _zipcrypto_encrypt(plain: bytes, password: bytes) -> bytes:
    keys = _zipcrypto_keys(password)
    out = bytearray()
    for byte in plain:
        temp = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        _zipcrypto_update(keys, byte)
    return bytes(out)


def zipcrypto_zip(name: str, data: bytes, password: bytes = b"infected",
                  central_flag_cleared: bool = True) -> bytes:
    """A stored zip encrypted with traditional PKWARE encryption (ZipCrypto), its encryption
    flag set in the local header and, when `central_flag_cleared`, cleared in the central
    directory: a reader of the directory alone takes the ciphertext for the file."""
    crc = zlib.crc32(data)
    header = bytes(range(11)) + bytes([crc >> 24])       # 12 bytes; the last checks the password
    encrypted = _zipcrypto_encrypt(header + data, password)
    encoded = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, 0, 0, 0x21, crc, len(encrypted), len(data),
                        len(encoded), 0) + encoded
    central_flags = 0 if central_flag_cleared else 1
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, central_flags, 0, 0, 0x21, crc,
                          len(encrypted), len(data), len(encoded), 0, 0, 0, 0, 0x20, 0) + encoded
    offset = len(local) + len(encrypted)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), offset, 0)
    return local + encrypted + central + end


def corrupt_zip_then_exe() -> Case:
    return Case(2, with_text(attached(bad_deflate_zip(), "application/zip", "archive.zip"), exe_part()),
                (EXE,),
                with_text(attached(c.zip_of({"readme.txt": b"hello " * 200}), "application/zip", "archive.zip"),
                          png_part()))


def zipcrypto_central_cleared_then_exe() -> Case:
    crypted = zipcrypto_zip("invoice.pdf", EXE)
    attack = multipart(leaf("Content-Type: text/plain", b"The password is: infected\r\n"),
                       attached(crypted, "application/zip", "invoice.zip"), exe_part())
    control = multipart(leaf("Content-Type: text/plain", b"The password is: infected\r\n"),
                        attached(c.zip_of({"readme.txt": NOTES}), "application/zip", "invoice.zip"), png_part())
    return Case(2, attack, (EXE, crypted), control)


# ---- class 3: part headers a naive reader ends early ---------------------------------------------

EXE_FIELDS = ('Content-Type: application/octet-stream; name="invoice.exe"\n'
              'Content-Disposition: attachment; filename="invoice.exe"\n'
              "Content-Transfer-Encoding: base64\n")
PNG_FIELDS = ('Content-Type: image/png; name="logo.png"\n'
              'Content-Disposition: attachment; filename="logo.png"\n'
              "Content-Transfer-Encoding: base64\n")


def _junk_in_part_headers(junk: str, first: bool) -> Case:
    fields = (junk + EXE_FIELDS) if first else ("X-Mailer-Part: 1\n" + junk + EXE_FIELDS)
    control = ("X-Mailer-Part: 1\n" + PNG_FIELDS)
    return Case(3, with_text(leaf(fields, b64(EXE))), (EXE,), with_text(leaf(control, b64(PNG))))


def part_header_first_line_space() -> Case:
    return _junk_in_part_headers(" x\n", first=True)


def part_header_first_line_tab() -> Case:
    return _junk_in_part_headers("\tx\n", first=True)


def part_header_colon_line() -> Case:
    return _junk_in_part_headers(":x\n", first=False)


def part_header_from_line() -> Case:
    return _junk_in_part_headers("From someone@example.net Thu Jul 31 13:49:50 2008\n", first=False)


def part_header_junk_line() -> Case:
    return _junk_in_part_headers("this line is not a field\n", first=False)


def _encoding_token(cte: str) -> Case:
    fields = ('Content-Type: application/octet-stream; name="invoice.exe"\n'
              'Content-Disposition: attachment; filename="invoice.exe"\n'
              f"Content-Transfer-Encoding: {cte}\n")
    return Case(3, with_text(leaf(fields, b64(EXE))), (EXE,), with_text(leaf(PNG_FIELDS, b64(PNG))))


def encoding_base64_space_token() -> Case:
    return _encoding_token("base64 x")


def encoding_base64_semicolon_token() -> Case:
    return _encoding_token("base64;x")


# ---- class 4: boundaries read two ways ---------------------------------------------------------

def boundary_trailing_blank() -> Case:
    # Python's email rstrips the quoted value: the delimiter "--abc" splits the message for it.
    return Case(4, with_text(exe_part(), boundary="abc", boundary_param='"abc "'), (EXE,),
                with_text(png_part(), boundary="abc"))


def boundary_backslash() -> Case:
    return Case(4, with_text(exe_part(), boundary="a\\b", boundary_param='"a\\b"'), (EXE,),
                with_text(png_part(), boundary="ab"))


# ---- class 5: a transfer encoding on a multipart ---------------------------------------------------

def _encoded_multipart(encoding: str) -> Case:
    inner = b"".join(b"--in\r\n" + p + b"\r\n" for p in (TEXT_PART, exe_part())) + b"--in--\r\n"
    body = b64(inner) if encoding == "base64" else quopri.encodestring(inner).replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n")
    attack = wire(TOP.format(subject="documents") + 'Content-Type: multipart/mixed; boundary="in"\n'
                  f"Content-Transfer-Encoding: {encoding}\n\n") + body
    return Case(5, attack, (EXE,), multipart(TEXT_PART, png_part(), boundary="in"))


def base64_multipart() -> Case:
    return _encoded_multipart("base64")


def quoted_printable_multipart() -> Case:
    return _encoded_multipart("quoted-printable")


# ---- class 6: containers -------------------------------------------------------------------------

def libarchive_write(fmt: str, filt: str | None, members: dict[str, bytes]) -> bytes:
    out = bytearray()

    def sink(chunk: bytes) -> int:
        out.extend(chunk)
        return len(chunk)

    with libarchive.custom_writer(sink, fmt, filter_name=filt) as archive:
        for name, data in members.items():
            archive.add_file_from_memory(name, len(data), data)
    return bytes(out)


def rar4(name: str, data: bytes) -> bytes:
    """A RAR 4 archive holding one stored file (method 0x30)."""
    def block(head_type: int, flags: int, body: bytes) -> bytes:
        rest = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest
    encoded = name.encode()
    main = block(0x73, 0, bytes(6))
    file_fields = struct.pack("<IIBIIBBHI", len(data), len(data), 2, zlib.crc32(data), 0x5A210000, 20, 0x30,
                              len(encoded), 0x20) + encoded
    return b"Rar!\x1a\x07\x00" + main + block(0x74, 0x8000, file_fields) + data + block(0x7B, 0x4000, b"")


def cab(name: str, data: bytes) -> bytes:
    """A Microsoft cabinet holding one file in one uncompressed folder ([MS-CAB])."""
    entry = struct.pack("<IIHHHH", len(data), 0, 0, 0x5A21, 0, 0x20) + name.encode() + b"\0"
    files_at = 36 + 8
    data_at = files_at + len(entry)
    block = struct.pack("<IHH", 0, len(data), len(data)) + data       # checksum 0: not computed
    total = data_at + len(block)
    header = struct.pack("<4sIIIIIBBHHHHH", b"MSCF", 0, total, 0, files_at, 0, 3, 1, 1, 1, 0, 0, 0)
    folder = struct.pack("<IHH", data_at, 1, 0)
    return header + folder + entry + block


def arj(name: str, data: bytes) -> bytes:
    """An ARJ archive holding one stored file (method 0)."""
    def header(file_type: int, filename: bytes, size: int, crc: int) -> bytes:
        basic = struct.pack("<BBBBBBBBIIIIHHBB", 30, 11, 1, 0, 0, 0, file_type, 0, 0x5A210000, size, size,
                            crc, 0, 0x20, 0, 0) + filename + b"\0" + b"\0"
        return (b"\x60\xea" + struct.pack("<H", len(basic)) + basic + struct.pack("<I", zlib.crc32(basic))
                + struct.pack("<H", 0))
    return (header(2, b"ARCHIVE.ARJ", 0, 0) + header(0, name.encode(), len(data), zlib.crc32(data)) + data
            + b"\x60\xea\x00\x00")


def szdd(data: bytes, last_char: str = "e") -> bytes:
    """MS-DOS COMPRESS.EXE's SZDD format, every byte a literal (LZSS flag bits all 1)."""
    out = bytearray(b"SZDD\x88\xf0\x27\x33A" + last_char.encode() + struct.pack("<I", len(data)))
    for i in range(0, len(data), 8):
        out += b"\xff" + data[i:i + 8]
    return bytes(out)


def tnef(name: str, data: bytes) -> bytes:
    """A TNEF stream (winmail.dat) with one attachment ([MS-OXTNEF] §2.1.3)."""
    def attribute(level: int, ident: int, value: bytes) -> bytes:
        return (struct.pack("<BII", level, ident, len(value)) + value
                + struct.pack("<H", sum(value) & 0xFFFF))
    return (struct.pack("<IH", 0x223E9F78, 0x0001)
            + attribute(1, 0x00089006, struct.pack("<I", 0x00010000))          # attTnefVersion
            + attribute(1, 0x00069007, struct.pack("<II", 1252, 0))             # attOemCodepage
            + attribute(1, 0x00078008, b"IPM.Microsoft Mail.Note\0")           # attMessageClass
            + attribute(2, 0x00069002, struct.pack("<HIIIH", 1, 0xFFFFFFFF, 0, 0, 0))  # attAttachRendData
            + attribute(2, 0x00018010, name.encode() + b"\0")                   # attAttachTitle
            + attribute(2, 0x0006800F, data))                                  # attAttachData


BINHEX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"


def binhex(name: str, data: bytes) -> bytes:
    """A BinHex 4.0 block: header, data fork, empty resource fork, each with its CRC."""
    encoded = name.encode()
    head = bytes([len(encoded)]) + encoded + b"\0" + b"????????" + b"\0\0" + struct.pack(">II", len(data), 0)
    stream = (head + struct.pack(">H", binascii.crc_hqx(head, 0)) + data
              + struct.pack(">H", binascii.crc_hqx(data, 0)) + struct.pack(">H", 0))
    stream = stream.replace(b"\x90", b"\x90\x00")                      # run-length escape
    bits = int.from_bytes(stream, "big")
    padded = (len(stream) * 8 + 5) // 6
    value = bits << (padded * 6 - len(stream) * 8)
    chars = bytes(BINHEX_ALPHABET[(value >> (6 * (padded - 1 - i))) & 0x3F] for i in range(padded))
    lines = [chars[i:i + 64] for i in range(0, len(chars), 64)]
    return (b"(This file must be converted with BinHex 4.0)\r\n\r\n:" + b"\r\n".join(lines) + b":\r\n")


def yenc(name: str, data: bytes) -> bytes:
    """A yEnc block (one part, 128-byte lines; NUL, CR, LF, '=' and a leading dot escaped)."""
    lines, line = [], bytearray()
    for byte in data:
        out = (byte + 42) % 256
        if out in (0, 10, 13, 61) or (out == 46 and not line):
            line += b"=" + bytes([(out + 64) % 256])
        else:
            line.append(out)
        if len(line) >= 128:
            lines.append(bytes(line))
            line = bytearray()
    if line:
        lines.append(bytes(line))
    return (b"=ybegin line=128 size=%d name=%s\r\n" % (len(data), name.encode()) + b"\r\n".join(lines)
            + b"\r\n=yend size=%d crc32=%08x\r\n" % (len(data), zlib.crc32(data)))


def mbox(*messages: bytes) -> bytes:
    return b"".join(b"From alice@example.net Thu Jan  1 00:00:00 2025\r\n" + m + b"\r\n" for m in messages)


def ppt(inner: bytes) -> bytes:
    """A PowerPoint 97 file whose only object is a compressed ExOleObjStg record holding
    `inner` (as PowerPoint stores its VBA project, [MS-PPT] §2.10.34)."""
    body = struct.pack("<I", len(inner)) + zlib.compress(inner)
    record = struct.pack("<HHI", 0x0010, 0x1011, len(body)) + body
    document = struct.pack("<HHI", 0x000F, 0x03E8, 0) + record
    return documents.compound_file({"PowerPoint Document": document, "Current User": bytes(32)})


def ppt_without_objects() -> bytes:
    return documents.compound_file({"PowerPoint Document": struct.pack("<HHI", 0x000F, 0x03E8, 0),
                                    "Current User": bytes(32)})


def rtf_with_package(name: str, data: bytes) -> bytes:
    """RTF with an embedded OLE1 Package object (\\objdata) holding `data` as `name`."""
    native = documents.ole_native(name, data)[4:]       # a Package object has no size field
    class_name = b"Package\0"
    ole1 = (struct.pack("<II", 0x00000501, 2) + struct.pack("<I", len(class_name)) + class_name
            + struct.pack("<II", 0, 0) + struct.pack("<I", len(native)) + native)
    return (b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}\\f0 Please see the attached invoice.\\par "
            b"{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata " + binascii.hexlify(ole1) + b"}}}")


RTF_PLAIN = b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}\\f0 Please see the attached invoice.\\par}"
HTML_PLAIN = b"<html><body><p>Your invoice is ready.</p></body></html>\r\n"


def html_with_data_uri(data: bytes) -> bytes:
    return (b"<html><body><p>Your invoice is ready.</p>\r\n<a download=\"invoice.pdf\" "
            b"href=\"data:application/octet-stream;base64," + base64.b64encode(data) + b"\">Download</a>"
            b"</body></html>\r\n")


def _container(member: Callable[[str, bytes], bytes], content_type: str, filename: str,
               control: str = "same-container", control_filename: str | None = None) -> Callable[[], Case]:
    """A container case: the executable inside (named as a PDF, so that only reading the
    member gives it away). The control is the same container holding a text file (named
    `control_filename` where the container's name gives its member's: "setup.exe.xz"
    unpacks to "setup.exe"), or, for formats no honest sender uses (`control="png"`), the
    message with a PNG attached instead of the container."""
    def build() -> Case:
        payload = member("invoice.pdf", EXE)
        attack = with_text(attached(payload, content_type, filename))
        if control == "png":
            harmless = with_text(png_part())
        else:
            harmless = with_text(attached(member("notes.txt", NOTES), content_type, control_filename or filename))
        return Case(6, attack, (EXE, payload), harmless)
    return build


def _single(compress: Callable[[bytes], bytes]) -> Callable[[str, bytes], bytes]:
    return lambda name, data: compress(data)


CONTAINERS: dict[str, Callable[[], Case]] = {
    "7z": _container(lambda n, d: libarchive_write("7zip", None, {n: d}), "application/x-7z-compressed",
                     "documents.7z"),
    "rar": _container(rar4, "application/vnd.rar", "documents.rar"),
    "cab": _container(cab, "application/vnd.ms-cab-compressed", "documents.cab"),
    "arj": _container(arj, "application/x-arj", "documents.arj", control="png"),
    "cpio": _container(lambda n, d: libarchive_write("cpio", None, {n: d}), "application/x-cpio",
                       "documents.cpio"),
    "cpio-newc": _container(lambda n, d: libarchive_write("cpio_newc", None, {n: d}), "application/x-cpio",
                            "documents.cpio"),
    "tar.xz": _container(lambda n, d: libarchive_write("ustar", "xz", {n: d}), "application/x-xz",
                         "documents.tar.xz"),
    "tar.bz2": _container(lambda n, d: libarchive_write("ustar", "bzip2", {n: d}), "application/x-bzip2",
                          "documents.tar.bz2"),
    "tar.zst": _container(lambda n, d: libarchive_write("ustar", "zstd", {n: d}), "application/zstd",
                          "documents.tar.zst"),
    "exe.xz": _container(_single(lzma.compress), "application/x-xz", "setup.exe.xz",
                         control_filename="notes.txt.xz"),
    "exe.bz2": _container(_single(bz2.compress), "application/x-bzip2", "setup.exe.bz2",
                          control_filename="notes.txt.bz2"),
    "szdd": _container(lambda n, d: szdd(d), "application/octet-stream", "SETUP.EX_", control="png"),
    "tnef": _container(tnef, "application/ms-tnef", "winmail.dat"),
    "mbox": _container(lambda n, d: mbox(c.message(c.attachment(d, "application/octet-stream", n))),
                       "application/mbox", "archive.mbox"),
}


def _text_block(block: Callable[[str, bytes], bytes]) -> Callable[[], Case]:
    """An encoded block inside a text body (8bit: yEnc bytes are not ASCII). The control is
    the same text without the block."""
    def text(middle: bytes) -> bytes:
        return (wire(TOP.format(subject="the file") + "Content-Type: text/plain; charset=iso-8859-1\n"
                     "Content-Transfer-Encoding: 8bit\n\n")
                + b"Hello Bob,\r\nthe file you asked for:\r\n\r\n" + middle + b"\r\nBest,\r\nAlice\r\n")

    def build() -> Case:
        encoded = block("readme.txt", EXE)
        return Case(6, text(encoded), (EXE, encoded.strip()), text(b"(see the shared folder)\r\n"))
    return build


def _document(dangerous: Callable[[], bytes], plain: Callable[[], bytes], content_type: str,
              filename: str) -> Callable[[], Case]:
    """A document carrying an object or macros; the control is the same kind of document
    without them."""
    def build() -> Case:
        payload = dangerous()
        return Case(6, with_text(attached(payload, content_type, filename)), (EXE, payload),
                    with_text(attached(plain(), content_type, filename)))
    return build


CONTAINERS.update({
    "binhex-in-text": _text_block(binhex),
    "yenc-in-text": _text_block(yenc),
    "ole-doc-macros": _document(documents.macro_doc, documents.clean_doc, "application/msword", "budget.doc"),
    "ole-ppt-macros": _document(lambda: ppt(documents.vba_project()), ppt_without_objects,
                                "application/vnd.ms-powerpoint", "slides.ppt"),
    "rtf-object": _document(lambda: rtf_with_package("invoice.exe", EXE), lambda: RTF_PLAIN, "application/rtf",
                            "invoice.rtf"),
    "html-data-uri": _document(lambda: html_with_data_uri(EXE), lambda: HTML_PLAIN, "text/html", "invoice.html"),
})


# ---- class 7: zip readers that disagree ---------------------------------------------------------

def concatenated_zips() -> bytes:
    """The executable in the FIRST zip: zipfile reads the last, libarchive and 7-Zip the first."""
    return c.zip_of({"invoice.pdf": EXE}) + c.zip_of({"readme.txt": NOTES})


def zip_without_central_directory() -> bytes:
    whole = c.zip_of({"invoice.pdf": EXE})
    return whole[:whole.index(b"PK\x01\x02")]


def zip_local_name_differs(central: str = "readme.txt", local: str = "evil.exe") -> bytes:
    """One member: the central directory names it `central`, its local header `local`."""
    whole = bytearray(c.zip_of({central: EXE}))
    old, new = central.encode(), local.encode()
    name_length = struct.unpack_from("<H", whole, 26)[0]
    assert whole[30:30 + name_length] == old
    shift = len(new) - len(old)
    patched = whole[:26] + struct.pack("<H", len(new)) + whole[28:30] + new + whole[30 + len(old):]
    end = patched.rindex(b"PK\x05\x06")
    directory_offset = struct.unpack_from("<I", patched, end + 16)[0]
    struct.pack_into("<I", patched, end + 16, directory_offset + shift)
    return bytes(patched)


def _zip_case(build: Callable[[], bytes]) -> Callable[[], Case]:
    def case() -> Case:
        payload = build()
        return Case(7, with_text(attached(payload, "application/zip", "documents.zip")), (EXE, payload),
                    with_text(attached(c.zip_of({"readme.txt": NOTES}), "application/zip", "documents.zip")))
    return case


# ---- class 8: names and active content ------------------------------------------------------------

def _pdf(objects: dict[int, bytes], in_stream: dict[int, bytes], root: int) -> bytes:
    """A PDF 1.5: `objects` written plainly, `in_stream` inside one FlateDecode /ObjStm, and a
    cross-reference stream (so the compressed objects are reachable as a reader expects)."""
    stream_number = max([*objects, *in_stream]) + 1
    xref_number = stream_number + 1
    numbers = sorted(in_stream)
    bodies = b""
    offsets_table = []
    for number in numbers:
        offsets_table.append(b"%d %d" % (number, len(bodies)))
        bodies += in_stream[number] + b"\n"
    table = b" ".join(offsets_table) + b"\n"
    packed = zlib.compress(table + bodies)
    all_objects = dict(objects)
    all_objects[stream_number] = (b"<< /Type /ObjStm /N %d /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
                                  % (len(numbers), len(table), len(packed)) + packed + b"\nendstream")
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    where: dict[int, bytes] = {}
    for number in sorted(all_objects):
        where[number] = b"\x01" + struct.pack(">IH", len(out), 0)
        out += b"%d 0 obj\n" % number + all_objects[number] + b"\nendobj\n"
    for index, number in enumerate(numbers):
        where[number] = b"\x02" + struct.pack(">IH", stream_number, index)
    xref_at = len(out)
    where[xref_number] = b"\x01" + struct.pack(">IH", xref_at, 0)
    rows = b"\x00" + struct.pack(">IH", 0, 0xFFFF) + b"".join(where[n] for n in range(1, xref_number + 1))
    out += (b"%d 0 obj\n<< /Type /XRef /Size %d /Root %d 0 R /W [1 4 2] /Length %d >>\nstream\n"
            % (xref_number, xref_number + 1, root, len(rows)) + rows + b"\nendstream\nendobj\n")
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def pdf_javascript_in_object_stream(javascript: bool = True) -> bytes:
    """Catalog and its /OpenAction JavaScript only inside a compressed object stream."""
    catalog = b"<< /Type /Catalog /Pages 2 0 R" + (b" /OpenAction 4 0 R" if javascript else b"") + b" >>"
    action = (b"<< /Type /Action /S /JavaScript /JS (app.alert\\('fail-closed test'\\);) >>" if javascript
              else b"<< /Producer (frontfilter tests) >>")
    return _pdf({2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>"},
                {1: catalog, 4: action}, root=1)


def utf16_html(script: bool = True) -> bytes:
    text = "<html><head><title>Invoice</title></head><body>"
    text += "<script>document.location='https://example.invalid/'</script>" if script else "<p>Invoice</p>"
    return (text + "</body></html>\r\n").encode("utf-16")       # with its byte order mark


ONENOTE_MAGIC = bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3")


def _named(attack_part: bytes, needle: bytes, control_part: bytes) -> Case:
    return Case(8, with_text(attack_part), (needle,), with_text(control_part))


def pdf_js_object_stream() -> Case:
    payload = pdf_javascript_in_object_stream()
    return _named(attached(payload, "application/pdf", "invoice.pdf"), payload,
                  attached(pdf_javascript_in_object_stream(javascript=False), "application/pdf", "invoice.pdf"))


def html_utf16_script() -> Case:
    payload = utf16_html()
    return _named(attached(payload, "text/html", "invoice.html"), payload,
                  attached(utf16_html(script=False), "text/html", "invoice.html"))


def _by_extension(extension: str, payload: bytes) -> Callable[[], Case]:
    return lambda: _named(attached(payload, "application/octet-stream", f"invoice.{extension}"), payload,
                          text_part())


def _script_with_disposition(disposition: str) -> bytes:
    return leaf(f"Content-Type: text/plain\nContent-Disposition: {disposition}\n"
                "Content-Transfer-Encoding: base64", b64(SCRIPT))


def _notes_with_disposition(disposition: str) -> bytes:
    return leaf(f"Content-Type: text/plain\nContent-Disposition: {disposition}\n"
                "Content-Transfer-Encoding: base64", b64(NOTES))


def rfc2231_continuations(name: str, size: int = 60) -> str:
    pieces = [name[i:i + size] for i in range(0, len(name), size)]
    return "attachment;" + ";".join(f'\n filename*{n}="{piece}"' for n, piece in enumerate(pieces))


def long_js_name() -> Case:
    name = "invoice_" + "x" * 1100 + ".js"
    return _named(_script_with_disposition(rfc2231_continuations(name)), SCRIPT,
                  _notes_with_disposition(rfc2231_continuations("meeting_notes.txt", 8)))


def nul_in_name() -> Case:
    return _named(_script_with_disposition("attachment; filename*=utf-8''run.js%00.txt"), SCRIPT,
                  _notes_with_disposition("attachment; filename*=utf-8''notes.txt"))


def unquoted_name_with_blank() -> Case:
    return _named(_script_with_disposition("attachment; filename=run.js x"), SCRIPT,
                  _notes_with_disposition("attachment; filename=notes.txt"))


# ---- the cases ---------------------------------------------------------------------------------------

CASES: dict[str, Callable[[], Case]] = {
    "1-first-line-space": first_line_continuation,
    "1-first-line-tab": first_line_tab,
    "2-corrupt-zip-then-exe": corrupt_zip_then_exe,
    "2-zipcrypto-central-flag-cleared-then-exe": zipcrypto_central_cleared_then_exe,
    "3-part-header-first-line-space": part_header_first_line_space,
    "3-part-header-first-line-tab": part_header_first_line_tab,
    "3-part-header-colon-line": part_header_colon_line,
    "3-part-header-from-line": part_header_from_line,
    "3-part-header-junk-line": part_header_junk_line,
    "3-encoding-base64-space-token": encoding_base64_space_token,
    "3-encoding-base64-semicolon-token": encoding_base64_semicolon_token,
    "4-boundary-trailing-blank": boundary_trailing_blank,
    "4-boundary-backslash": boundary_backslash,
    "5-base64-multipart": base64_multipart,
    "5-quoted-printable-multipart": quoted_printable_multipart,
    **{f"6-{name}": build for name, build in CONTAINERS.items()},
    "7-concatenated-zips": _zip_case(concatenated_zips),
    "7-zip-without-central-directory": _zip_case(zip_without_central_directory),
    "7-zip-local-name-differs": _zip_case(zip_local_name_differs),
    "8-pdf-javascript-in-object-stream": pdf_js_object_stream,
    "8-html-utf16-script": html_utf16_script,
    "8-onenote": _by_extension("one", ONENOTE_MAGIC + bytes(64) + b"fail-closed onenote test"),
    "8-iqy": _by_extension("iqy", b"WEB\r\n1\r\nhttps://example.invalid/fail-closed-test.iqy\r\n"),
    "8-slk": _by_extension("slk", b"ID;P\r\nC;Y1;X1;K\"fail-closed\";EEXEC(\"calc.exe\")\r\nE\r\n"),
    "8-long-js-name": long_js_name,
    "8-nul-in-rfc2231-name": nul_in_name,
    "8-unquoted-name-with-blank": unquoted_name_with_blank,
}


# ---- class 9: NUL in DATA -------------------------------------------------------------------------

def nul_dot_smuggling() -> tuple[bytes, bytes]:
    """(attack, control) as DATA bytes, terminator included. A reader that drops NUL sees
    "\\r\\n.\\r\\n" and takes what follows for a second, smuggled transaction."""
    outer = wire(TOP.format(subject="hello") + "\nHello Bob.\n")
    smuggled = (b"\x00.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                + with_text(exe_part()) + b".\r\n")
    return outer + smuggled, outer + b".\r\n"


# ---- class 10: a message that takes long to inspect --------------------------------------------------

def slow_message(dangerous: bool = True) -> bytes:
    """450 distinct small attachments (each typed by libmagic: some 100 ms of inspection, far
    past a 1 ms deadline, under the default `max_parts`) and, last, the executable: a relay
    that passed what it had not read by its deadline would deliver it."""
    parts = [attached(struct.pack(">I", n) * 128, "application/octet-stream", f"part{n}.bin") for n in range(450)]
    return with_text(*parts, exe_part() if dangerous else png_part())


# ---- the clean corpus: ordinary mail that must pass untouched -----------------------------------

def odt() -> bytes:
    """An OpenDocument text: the stored "mimetype" member first, as ODF 1.2 §3.3 requires."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), b"application/vnd.oasis.opendocument.text",
                         compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/manifest.xml",
                         b'<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
                         b'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" '
                         b'manifest:version="1.2">'
                         b'<manifest:file-entry manifest:full-path="/" manifest:media-type='
                         b'"application/vnd.oasis.opendocument.text"/><manifest:file-entry '
                         b'manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>')
        archive.writestr("content.xml",
                         b'<?xml version="1.0" encoding="UTF-8"?><office:document-content '
                         b'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
                         b'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
                         b'<office:body><office:text><text:p>Minutes</text:p></office:text></office:body>'
                         b'</office:document-content>')
    return buffer.getvalue()


def pdf_with_compressed_streams() -> bytes:
    """A PDF 1.5 as current producers write it: a FlateDecode page content stream, the
    catalog and the info dictionary in a compressed object stream, a cross-reference stream."""
    content = zlib.compress(b"BT /F1 12 Tf 10 50 Td (Quarterly report) Tj ET")
    return _pdf({2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] /Contents 5 0 R /Resources "
                    b"<< /Font << /F1 6 0 R >> >> >>",
                 5: b"<< /Filter /FlateDecode /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"},
                {1: b"<< /Type /Catalog /Pages 2 0 R >>", 4: b"<< /Producer (frontfilter tests) >>",
                 6: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}, root=1)


def jpeg() -> bytes:
    """An 8x8 grey baseline JPEG: one block, DC difference 0, every AC coefficient 0. Each
    Huffman table holds one code ("0"), so the scan is the two bits "00" padded with ones."""
    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">HH", 0xFF00 | marker, len(body) + 2) + body
    one_code = bytes([1] + [0] * 15)
    return (b"\xff\xd8"
            + segment(0xE0, b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + segment(0xDB, b"\x00" + bytes([1] * 64))
            + segment(0xC0, struct.pack(">BHHB", 8, 8, 8, 1) + b"\x01\x11\x00")
            + segment(0xC4, b"\x00" + one_code + b"\x00")
            + segment(0xC4, b"\x10" + one_code + b"\x00")
            + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
            + b"\x3f\xff\xd9")


def big_png(width: int = 1024, height: int = 1024) -> bytes:
    """A width x height RGB PNG of seeded noise: about 3 MB that no compressor shrinks."""
    import random
    noise = random.Random(2025)
    rows = b"".join(b"\0" + noise.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def smime_signed() -> bytes:
    """A real S/MIME detached signature (multipart/signed, application/pkcs7-signature) by a
    self-signed certificate made here."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs7
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@example.net")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    signed = (pkcs7.PKCS7SignatureBuilder().set_data(b"Content-Type: text/plain\r\n\r\nSigned hello.\r\n")
              .add_signer(cert, key, hashes.SHA256())
              .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature]))
    # RFC 8551's type, as Thunderbird and Outlook write it (cryptography writes the older x- one).
    signed = signed.replace(b"application/x-pkcs7-signature", b"application/pkcs7-signature")
    return wire("From: Alice <alice@example.net>\nTo: bob@example.org\nSubject: signed\n") + wire(signed)


# Armored blocks of the right shape (the relay reads them as text; nothing verifies them here).
PGP_SIGNATURE = ("-----BEGIN PGP SIGNATURE-----\n\n"
                 "iHUEARYKAB0WIQTfailclosedtestsignatureAAAAAAAAAAUCZ1AAAAAACgkQAAAA\n"
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
                 "=AAAA\n-----END PGP SIGNATURE-----\n")
PGP_MESSAGE = ("-----BEGIN PGP MESSAGE-----\n\n"
               "hF4DAAAAAAAAAAASAQdAfailclosedtestmessageAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
               "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
               "=AAAA\n-----END PGP MESSAGE-----\n")


def pgp_signed() -> bytes:
    return wire(TOP.format(subject="signed") + 'Content-Type: multipart/signed; boundary="s1";\n'
                ' micalg=pgp-sha256; protocol="application/pgp-signature"\n\n'
                "--s1\nContent-Type: text/plain; charset=us-ascii\n\nSigned hello.\n"
                '--s1\nContent-Type: application/pgp-signature; name="signature.asc"\n'
                'Content-Disposition: attachment; filename="signature.asc"\n\n' + PGP_SIGNATURE + "--s1--\n")


def pgp_encrypted() -> bytes:
    return wire(TOP.format(subject="secret") + 'Content-Type: multipart/encrypted; boundary="e1";\n'
                ' protocol="application/pgp-encrypted"\n\n'
                "--e1\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n"
                '--e1\nContent-Type: application/octet-stream; name="encrypted.asc"\n'
                'Content-Disposition: inline; filename="encrypted.asc"\n\n' + PGP_MESSAGE + "--e1--\n")


ICS = ("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//frontfilter tests//EN\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
       "UID:fail-closed-test@example.net\nDTSTAMP:20250101T090000Z\nDTSTART:20250102T100000Z\n"
       "DTEND:20250102T110000Z\nSUMMARY:Planning\nORGANIZER:mailto:alice@example.net\n"
       "ATTENDEE;RSVP=TRUE:mailto:bob@example.org\nEND:VEVENT\nEND:VCALENDAR\n")


def calendar_invite() -> bytes:
    return wire(TOP.format(subject="Invitation: Planning") + 'Content-Type: multipart/mixed; boundary="m1"\n\n'
                '--m1\nContent-Type: multipart/alternative; boundary="a1"\n\n'
                "--a1\nContent-Type: text/plain; charset=utf-8\n\nPlanning, Thursday 10:00.\n"
                '--a1\nContent-Type: text/calendar; charset=utf-8; method=REQUEST\n\n' + ICS + "--a1--\n"
                '--m1\nContent-Type: application/ics; name="invite.ics"\n'
                'Content-Disposition: attachment; filename="invite.ics"\nContent-Transfer-Encoding: base64\n\n'
                + base64.encodebytes(ICS.replace("\n", "\r\n").encode()).decode() + "--m1--\n")


def forwarded() -> bytes:
    inner = c.message(c.attachment(c.pdf(), "application/pdf", "report.pdf"))
    return with_text(leaf('Content-Type: message/rfc822\nContent-Disposition: attachment; filename="fwd.eml"',
                          inner))


DMARC_XML = (b'<?xml version="1.0" encoding="UTF-8"?>\n<feedback><report_metadata><org_name>example.com'
             b"</org_name><report_id>1700000000</report_id></report_metadata><policy_published><domain>"
             b"example.org</domain><p>none</p></policy_published><record><row><source_ip>192.0.2.1"
             b"</source_ip><count>2</count></row></record></feedback>\n")


def dmarc_zip() -> bytes:
    name = "example.com!example.org!1700000000!1700086400"
    return with_text(attached(c.zip_of({f"{name}.xml": DMARC_XML}), "application/zip", f"{name}.zip"))


def dmarc_gzip() -> bytes:
    import gzip
    name = "example.com!example.org!1700000000!1700086400.xml.gz"
    return with_text(attached(gzip.compress(DMARC_XML, mtime=0), "application/gzip", name))


def rfc2231_names() -> bytes:
    return with_text(
        leaf("Content-Type: application/pdf\nContent-Disposition: attachment;\n"
             " filename*=utf-8''R%C3%A9sum%C3%A9%20%E2%80%93%202025.pdf\nContent-Transfer-Encoding: base64",
             b64(c.pdf())),
        leaf("Content-Type: image/png\nContent-Disposition: attachment;\n filename*0*=utf-8''%E6%97%A5%E6%9C%AC;\n"
             " filename*1*=%E8%AA%9E%20logo.png\nContent-Transfer-Encoding: base64", b64(PNG)))


CLEAN: dict[str, Callable[[], bytes]] = {
    "docx": lambda: with_text(attached(c.docx(), "application/vnd.openxmlformats-officedocument."
                                       "wordprocessingml.document", "letter.docx")),
    "odt": lambda: with_text(attached(odt(), "application/vnd.oasis.opendocument.text", "minutes.odt")),
    "pdf-compressed-streams": lambda: with_text(attached(pdf_with_compressed_streams(), "application/pdf",
                                                         "report.pdf")),
    "png": lambda: with_text(png_part()),
    "jpeg": lambda: with_text(attached(jpeg(), "image/jpeg", "photo.jpg")),
    "smime-signed": smime_signed,
    "pgp-mime-signed": pgp_signed,
    "pgp-mime-encrypted": pgp_encrypted,
    "calendar-invite": calendar_invite,
    "forwarded-message": forwarded,
    "dmarc-report-zip": dmarc_zip,
    "dmarc-report-gzip": dmarc_gzip,
    "rfc2231-names": rfc2231_names,
    "3mb-attachment": lambda: with_text(attached(big_png(), "image/png", "scan.png")),
}


# ---- what a client can get out of a delivered message -----------------------------------------------

_FIRST_TOKEN = re.compile(r"[\s;(]")


def decodable(raw: bytes, depth: int = 0) -> list[bytes]:
    """Every payload a mail client could decode out of `raw`: each leaf's decoded body under
    Python's email (compat32 and default), the body decoded by the first token of its
    Content-Transfer-Encoding ("base64 x" as base64, as Thunderbird does), and the body of an
    encoded multipart decoded and read again as a message."""
    found: list[bytes] = [raw]
    readings = (raw, without_junk_header_lines(raw))
    for reading, policy in itertools.product(readings, (email.policy.compat32, email.policy.default)):
        message = email.message_from_bytes(reading, policy=policy)
        for part in message.walk():
            encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
            token = _FIRST_TOKEN.split(encoding, 1)[0] if encoding else ""
            body = part.get_payload()
            if isinstance(body, str) and token in ("base64", "quoted-printable"):
                found.append(_decode(token, body.encode("utf-8", "surrogateescape")))
            if part.get_content_maintype() == "multipart" and token in ("base64", "quoted-printable") \
                    and depth < 3:
                # A decoding client decodes the entity's body, then splits it (RFC 2045 §6.4
                # forbids the encoding; clients do it anyway).
                if isinstance(body, str):
                    encoded = body.encode("utf-8", "surrogateescape")
                else:
                    rendered = part.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
                    encoded = re.split(rb"\r?\n\r?\n", rendered, maxsplit=1)[-1]
                inner = _decode(token, encoded).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                found += decodable(f"Content-Type: {part.get('Content-Type')}\r\n\r\n".encode() + inner,
                                   depth + 1)
            if not part.is_multipart():
                try:
                    payload = part.get_payload(decode=True)
                except Exception:                # a client that cannot decode shows nothing
                    payload = None
                if payload:
                    found.append(payload)
    return found


_FIELD = re.compile(rb"[!-9;-~]+:")


def without_junk_header_lines(raw: bytes) -> bytes:
    """`raw` as Thunderbird reads header blocks: a line that is neither a field nor a
    continuation (":x", "From ...", any junk) is skipped, not the end of the block. A header
    block is the message's and the one after each line starting with "--"."""
    out, in_headers = [], True
    for line in raw.split(b"\r\n"):
        if in_headers:
            if line == b"":
                in_headers = False
            elif not (line[:1] in (b" ", b"\t") or _FIELD.match(line)):
                continue
        elif line.startswith(b"--"):
            in_headers = True
        out.append(line)
    return b"\r\n".join(out)


def _decode(token: str, data: bytes) -> bytes:
    return _b64_lenient(data) if token == "base64" else quopri.decodestring(data)


def _b64_lenient(data: bytes) -> bytes:
    """Base64 as lenient clients decode it: characters outside the alphabet skipped."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        return binascii.a2b_base64(clean[: len(clean) - len(clean) % 4])


def carries(raw: bytes, needles: tuple[bytes, ...]) -> list[bytes]:
    """The needles a client can decode out of `raw` (empty: nothing dangerous is left)."""
    payloads = decodable(raw)
    return [needle for needle in needles if any(needle in payload for payload in payloads)]


def write_all(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, build in CASES.items():
        case = build()
        (directory / f"{name}.eml").write_bytes(case.attack)
        (directory / f"{name}.control.eml").write_bytes(case.control)


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("fail-closed-corpus"))
