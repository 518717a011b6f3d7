"""Small legacy Office documents for the embedded-object and macro tests, written from scratch.

olefile reads compound files but cannot write them, so this is a minimal writer of the
Compound File Binary format ([MS-CFB] version 3: 512-byte sectors, 64-byte mini sectors,
streams under 4096 bytes in the mini stream), enough for olefile and oletools to read.

`python tests/data/documents/make_documents.py` rewrites the fixtures next to this file;
tests/content/test_embedded.py checks that they are what this script makes. Each document
is tiny and harmless: the "executable" is a 300-byte PE header that does nothing.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))   # the repository, when run as a script
from tests.content.corpus import pe  # noqa: E402  (the one test PE of the suite)
SECTOR = 512
MINI_SECTOR = 64
MINI_CUTOFF = 4096            # [MS-CFB] §2.2: streams below this live in the mini stream
FREE, END, FAT_SECTOR = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
NO_STREAM = 0xFFFFFFFF


def compound_file(streams: dict[str, bytes]) -> bytes:
    """A compound file holding `streams`, keyed by "/"-separated paths; storages are implied."""
    # The directory: entry 0 is the root; every storage's children form a balanced binary
    # tree in [MS-CFB] §2.6.4 order (shorter names first, then upper-cased names), all black.
    entries = [{"name": "Root Entry", "type": 5, "children": [], "data": b""}]
    index = {"": 0}
    for path, data in streams.items():
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            key = "/".join(parts[:depth])
            if key in index:
                continue
            is_stream = depth == len(parts)
            index[key] = len(entries)
            entries.append({"name": parts[depth - 1], "type": 2 if is_stream else 1,
                            "children": [], "data": data if is_stream else b""})
            entries[index["/".join(parts[:depth - 1])]]["children"].append(index[key])

    mini = bytearray()
    mini_fat: list[int] = []
    big: list[tuple[dict, bytes]] = []
    for entry in entries[1:]:
        if entry["type"] != 2:
            continue
        data = entry["data"]
        if len(data) < MINI_CUTOFF:
            count = max(1, -(-len(data) // MINI_SECTOR)) if data else 0
            entry["start"] = len(mini_fat) if count else END
            for i in range(count):
                mini_fat.append(len(mini_fat) + 1 if i < count - 1 else END)
            mini += data.ljust(count * MINI_SECTOR, b"\0")
        else:
            big.append((entry, data))

    sectors: list[bytes] = []
    fat: list[int] = []

    def place(data: bytes) -> int:
        count = max(1, -(-len(data) // SECTOR))
        start = len(sectors)
        for i in range(count):
            sectors.append(data[i * SECTOR:(i + 1) * SECTOR].ljust(SECTOR, b"\0"))
            fat.append(start + i + 1 if i < count - 1 else END)
        return start

    for entry, data in big:
        entry["start"] = place(data)
    root = entries[0]
    root["start"] = place(bytes(mini)) if mini else END
    root["size"] = len(mini)
    mini_fat_start = place(b"".join(struct.pack("<I", v) for v in mini_fat).ljust(SECTOR, b"\xff")) \
        if mini_fat else END
    mini_fat_count = -(-len(mini_fat) * 4 // SECTOR)

    left_of: dict[int, int] = {}
    right_of: dict[int, int] = {}

    def tree(kids: list[int]) -> int:
        if not kids:
            return NO_STREAM
        middle = len(kids) // 2
        left_of[kids[middle]] = tree(kids[:middle])
        right_of[kids[middle]] = tree(kids[middle + 1:])
        return kids[middle]

    top: dict[int, int] = {}
    for number, parent in enumerate(entries):
        kids = sorted(parent["children"], key=lambda k: (len(entries[k]["name"]), entries[k]["name"].upper()))
        top[number] = tree(kids)
    directory = bytearray()
    for number, entry in enumerate(entries):
        encoded = (entry["name"] + "\0").encode("utf-16-le")
        record = bytearray(128)
        record[0:len(encoded)] = encoded
        left, right, child = left_of.get(number, NO_STREAM), right_of.get(number, NO_STREAM), top[number]
        size = entry.get("size", len(entry["data"]))
        start = entry.get("start", 0) if entry["type"] in (2, 5) else 0
        struct.pack_into("<HBBIII", record, 64, len(encoded), entry["type"], 1, left, right, child)
        struct.pack_into("<IQ", record, 116, start, size)
        directory += record
    directory_start = place(bytes(directory))

    # FAT sectors go last; each holds 128 entries, itself included.
    fat_count = 1
    while (len(sectors) + fat_count) > fat_count * (SECTOR // 4):
        fat_count += 1
    fat_start = len(sectors)
    fat += [FAT_SECTOR] * fat_count
    fat += [FREE] * (fat_count * (SECTOR // 4) - len(fat))
    table = b"".join(struct.pack("<I", v) for v in fat)
    for i in range(fat_count):
        sectors.append(table[i * SECTOR:(i + 1) * SECTOR])

    header = bytearray(SECTOR)
    header[0:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    struct.pack_into("<HHHHH", header, 24, 0x3E, 3, 0xFFFE, 9, 6)
    struct.pack_into("<IIIIIIIII", header, 40, 0, fat_count, directory_start, 0, MINI_CUTOFF,
                     mini_fat_start, mini_fat_count, END, 0)
    difat = [fat_start + i for i in range(fat_count)] + [FREE] * (109 - fat_count)
    header[76:76 + 436] = b"".join(struct.pack("<I", v) for v in difat)
    return bytes(header) + b"".join(sectors)


def ole_native(filename: str, data: bytes) -> bytes:
    """An `\\x01Ole10Native` stream: an OLE1 Package ([MS-OLEDS] §2.3.6) holding `data`."""
    name = filename.encode("latin-1") + b"\0"
    path = b"C:\\" + name
    body = struct.pack("<H", 2) + name + path + struct.pack("<II", 0x00030000, len(path)) + path \
        + struct.pack("<I", len(data)) + data
    return struct.pack("<I", len(body)) + body


WORD_DOCUMENT = b"\xec\xa5\xc1\x00" + bytes(508)   # a FIB's magic; enough to look like Word


def clean_doc() -> bytes:
    return compound_file({"WordDocument": WORD_DOCUMENT, "1Table": bytes(64)})


def package_doc() -> bytes:
    """A Word document with an OLE Package object carrying an executable (as clam.ole.doc)."""
    return compound_file({
        "WordDocument": WORD_DOCUMENT, "1Table": bytes(64),
        "ObjectPool/_1000/\x01CompObj": bytes(32),
        "ObjectPool/_1000/\x01Ole10Native": ole_native("invoice.exe", pe()),
    })


def macro_doc() -> bytes:
    """A Word document with a VBA project as [MS-OVBA] §2.2.1 lays it out: Macros/PROJECT,
    Macros/VBA/_VBA_PROJECT, Macros/VBA/dir and a module stream."""
    return compound_file({"WordDocument": WORD_DOCUMENT, "1Table": bytes(64),
                          **{f"Macros/{path}": data for path, data in VBA_STREAMS.items()}})


VBA_STREAMS = {
    "PROJECT": b'ID="{00000000-0000-0000-0000-000000000000}"\r\nDocument=ThisDocument/&H00000000\r\n',
    "VBA/_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00",
    "VBA/dir": b"\x01" + bytes(40),
    "VBA/ThisDocument": b"\x00" * 16 + b"\x01\x20\xb0\x00Attribut\x00e VB_Name = \"ThisDocument\"",
}


def vba_project() -> bytes:
    """An OOXML vbaProject.bin: a compound file whose root is the VBA project."""
    return compound_file(VBA_STREAMS)


def xlm_xls() -> bytes:
    """An Excel 97 workbook whose globals substream declares an Excel 4 (XLM) macro sheet:
    a BOUNDSHEET record ([MS-XLS] §2.4.28) of sheet type 1. No VBA anywhere."""
    def record(kind: int, data: bytes) -> bytes:
        return struct.pack("<HH", kind, len(data)) + data
    name = b"Macro1"
    workbook = (record(0x0809, struct.pack("<HHHHII", 0x0600, 0x0005, 0, 0, 0, 0))   # BOF, globals
                + record(0x0085, struct.pack("<IBB", 0, 0, 0x01) + bytes([len(name), 0]) + name)
                + record(0x000A, b""))                                               # EOF
    return compound_file({"Workbook": workbook.ljust(MINI_CUTOFF, b"\0")})


def exe_stream_doc() -> bytes:
    """An executable dropped as a plain stream of its own: found by its signature."""
    return compound_file({"WordDocument": WORD_DOCUMENT, "Data": pe() + bytes(5000)})


def ppt_with_object() -> bytes:
    """A PowerPoint 97 file whose only object is a compressed ExOleObjStg record ([MS-PPT]
    §2.10.34: recInstance 1, a 4-byte decompressed size, then zlib) holding `package_doc()`."""
    inner = package_doc()
    body = struct.pack("<I", len(inner)) + zlib.compress(inner)
    record = struct.pack("<HHI", 0x0010, 0x1011, len(body)) + body
    document = struct.pack("<HHI", 0x000F, 0x03E8, 0) + record   # an empty DocumentContainer
    return compound_file({"PowerPoint Document": document, "Current User": bytes(32)})


FIXTURES = {
    "clean.doc": clean_doc,
    "package.doc": package_doc,
    "macro.doc": macro_doc,
    "vbaProject.bin": vba_project,
    "xlm.xls": xlm_xls,
    "exe-stream.doc": exe_stream_doc,
    "object.ppt": ppt_with_object,
}


if __name__ == "__main__":
    for filename, make in FIXTURES.items():
        (HERE / filename).write_bytes(make())
        print(filename)
