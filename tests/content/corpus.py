"""Test payloads and messages built in code: small, valid, and each what it claims to be."""

from __future__ import annotations

import functools
import io
import pathlib
import random
import struct
import zipfile
import zlib
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email import encoders, policy

import magic

DOCUMENTS = pathlib.Path(__file__).resolve().parents[1] / "data" / "documents"


def pe() -> bytes:
    """A minimal PE32+: DOS header whose e_lfanew points at "PE\\0\\0" + COFF + optional header."""
    dos = bytearray(64)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 64)
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0xF0, 0x22)
    optional = bytearray(0xF0)
    struct.pack_into("<H", optional, 0, 0x20B)
    return bytes(dos) + b"PE\0\0" + coff + bytes(optional)


@functools.cache
def com_lookalike(size: int = 4096) -> bytes:
    """High-entropy bytes (as in any encrypted or compressed file) that libmagic itself types as
    a DOS COM program: the first of a fixed series of pseudo-random blocks it guesses so for."""
    guess = magic.Magic(mime=True)                  # libmagic itself, not frontfilter's view of it
    for seed in range(20_000):                      # about 1 in 110 blocks qualifies
        block = random.Random(seed).randbytes(size)
        if guess.from_buffer(block) == "application/x-dosexec":
            return block
    raise AssertionError("libmagic typed no random block as a DOS COM program")


def elf() -> bytes:
    """A minimal ELF64 little-endian x86-64 executable header (ET_EXEC)."""
    header = bytearray(64)
    header[0:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHI", header, 16, 2, 0x3E, 1)
    struct.pack_into("<H", header, 52, 64)
    return bytes(header)


def png() -> bytes:
    """A 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\x80")) + chunk(b"IEND", b"")


def pdf(extra: bytes = b"") -> bytes:
    """A tiny one-page PDF; `extra` goes into the catalog dictionary (e.g. an OpenAction)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R " + extra + b">>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def zip_of(members: dict[str, bytes], encrypt: frozenset[str] = frozenset()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = bytearray(buffer.getvalue())
    # zipfile cannot encrypt: set bit 0 of the flags in both headers of the chosen members.
    for name in encrypt:
        encoded = name.encode()
        for signature, flag_offset, name_offset in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
            position = data.find(signature)
            while position != -1:
                length = struct.unpack_from("<H", data, position + name_offset - (2 if signature == b"PK\x03\x04" else 18))[0]
                if data[position + name_offset:position + name_offset + length] == encoded:
                    data[position + flag_offset] |= 1
                position = data.find(signature, position + 1)
    return bytes(data)


CONTENT_TYPES = (b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                 b'<Default Extension="xml" ContentType="application/xml"/>'
                 b'<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')


def docx(macros: bool = False) -> bytes:
    members = {
        "[Content_Types].xml": CONTENT_TYPES,
        "_rels/.rels": b'<?xml version="1.0"?><Relationships/>',
        "word/document.xml": b'<?xml version="1.0"?><w:document/>',
    }
    if macros:
        members["word/vbaProject.bin"] = ole_with_vba()
    return zip_of(members)


def ole_with_vba() -> bytes:
    """A real (tiny) OLE compound file holding a VBA project, as Office writes vbaProject.bin:
    made by tests/data/documents/make_documents.py. A mock of the directory bytes alone is no
    longer enough: a compound file olefile cannot open is reported corrupt, and refused."""
    return (DOCUMENTS / "vbaProject.bin").read_bytes()


def attachment(data: bytes, content_type: str, filename: str | None, rfc2231: bool = False) -> MIMEBase:
    maintype, subtype = content_type.split("/")
    part = MIMEBase(maintype, subtype)
    part.set_payload(data)
    encoders.encode_base64(part)
    if filename is not None:
        if rfc2231:
            part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", filename))
        else:
            part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def message(*attachments: MIMEBase, text: str = "Hello,\nsee attached.\n") -> bytes:
    outer = MIMEMultipart()
    outer["From"] = "Alice <alice@example.org>"
    outer["To"] = "bob@example.com"
    outer["Subject"] = "Test message"
    outer.attach(MIMEText(text, "plain", "utf-8"))
    for part in attachments:
        outer.attach(part)
    return crlf(outer.as_bytes(policy=policy.compat32))


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def plain(text: str = "Hello Bob,\nlunch at noon?\n") -> bytes:
    msg = MIMEText(text, "plain", "utf-8")
    msg["From"] = "Alice <alice@example.org>"
    msg["Subject"] = "=?utf-8?q?Gr=C3=BC=C3=9Fe?="
    return crlf(msg.as_bytes(policy=policy.compat32))


def hand(headers: str, body: str) -> bytes:
    """A hand-written message: `headers` and `body` with LF, turned to CRLF."""
    return crlf((headers.strip("\n") + "\n\n" + body).encode("utf-8"))


