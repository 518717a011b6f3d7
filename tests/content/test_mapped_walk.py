"""A big message is inspected in its spill file, and a big archive in a file of its own: every
fact must be found exactly as for the same bytes in memory (issue 26).

A message past `limits.data_spill_size` reaches the pipeline mapped from its spill file
(`mapped.SpilledMessage`), and an archive decoded from it past that size is moved to a file and
read mapped (`content.scratch`) while its members are read. These are the attachments an
attacker controls, so the walk over a mapping is compared with the walk over bytes on the whole
fail-closed corpus (attacks and controls) and on archives of every reader, with every archive
moved. The decoders read a mapped part in slices: they are compared with the one-pass decoders
on generated input, cut at every small slice size.
"""

from __future__ import annotations

import asyncio
import io
import mmap
import quopri
import random
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from frontfilter.content import archives as readers, decode
from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.scratch import Scratch
from frontfilter.mapped import MappedText, slices, slices_off_the_loop
from tests.content import corpus as c
from tests.content import fail_closed_corpus as cases
from tests.content.test_base64_paths import shapes


def mapped(data: bytes, directory: Path) -> MappedText:
    """`data` as the relay maps a spilled message: an unnamed file, read-only."""
    with open(directory / "spilled", "w+b") as file:
        file.write(data)
        file.flush()
        view = MappedText(file.fileno(), len(data), access=mmap.ACCESS_READ)
    (directory / "spilled").unlink()
    return view


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def deflated_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def archives() -> dict[str, bytes]:
    """Messages whose archives take each reader: zip (stored, deflated, nested, prepended data),
    libarchive (tar.gz), encrypted members."""
    inner = c.zip_of({"setup.exe": c.pe()})
    return {
        "stored zip": c.message(c.attachment(c.zip_of({"a.pdf": c.pdf(), "b.exe": c.pe()}), "application/zip", "a.zip")),
        "deflated zip": c.message(c.attachment(deflated_zip({"notes.txt": b"hello\r\n" * 2000, "run.exe": c.pe()}),
                                               "application/zip", "d.zip")),
        "zip in a zip": c.message(c.attachment(c.zip_of({"inner.zip": inner}), "application/zip", "outer.zip")),
        "self-extractor": c.message(c.attachment(c.pe() + inner, "application/octet-stream", "sfx.exe")),
        "encrypted member": c.message(c.attachment(c.zip_of({"x.exe": c.pe()}, encrypt=frozenset({"x.exe"})),
                                                   "application/zip", "e.zip")),
        "tar.gz": c.message(c.attachment(tar_of({"docs/readme.txt": b"read me\n", "bin/tool": c.elf()}),
                                         "application/gzip", "t.tar.gz")),
        "plain text": c.plain(),
    }


def messages() -> dict[str, bytes]:
    found = dict(archives())
    for name, build in cases.CASES.items():
        case = build()
        found[f"{name} (attack)"] = case.attack
        found[f"{name} (control)"] = case.control
    return found


MESSAGES = messages()


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_a_message_read_from_its_file_gives_every_fact_as_in_memory(name: str, tmp_path: Path) -> None:
    raw = MESSAGES[name]
    limits = InspectionLimits()
    in_memory = inspect(raw, limits)
    # Every archive moved to a file, however small: the mapped readers on every case.
    scratch = RecordingScratch(0, tmp_path)
    in_files = inspect(mapped(raw, tmp_path), limits, scratch=scratch)
    assert in_files == in_memory
    assert list(tmp_path.iterdir()) == []          # the unnamed files leave nothing behind
    if any(readers.kind(b"", part.detected_type) in readers.MAPPED_KINDS for part in in_memory.parts):
        assert scratch.moved, "no archive was read through a mapping"


@dataclass(frozen=True)
class RecordingScratch(Scratch):
    """A Scratch that notes the size of each payload it did move to a file."""
    moved: list[int] = field(default_factory=list)

    def mapped(self, payload: bytes) -> bytes | MappedText:
        result = super().mapped(payload)
        if isinstance(result, MappedText):
            self.moved.append(len(payload))
        return result


def test_an_archive_is_moved_to_a_file_only_when_big(tmp_path: Path) -> None:
    scratch = Scratch(1000, tmp_path)
    archive = c.zip_of({"a.bin": random.Random(1).randbytes(4000)})
    assert isinstance(scratch.mapped(archive), MappedText)
    assert scratch.mapped(archive[:900]) == archive[:900]           # small: stays in memory
    # And what the walk reads through the file is the archive itself.
    moved = scratch.mapped(archive)
    assert moved[:] == archive and moved.startswith(b"PK\x03\x04") and moved.endswith(archive[-22:])


def test_without_its_directory_an_archive_is_moved_to_the_system_temp_directory(tmp_path: Path) -> None:
    """As a spill is (smtp/door.py): a spool directory removed under a running relay does not
    stop big archives from being read."""
    archive = c.zip_of({"a.bin": b"x" * 4000})
    moved = Scratch(10, tmp_path / "missing").mapped(archive)
    assert isinstance(moved, MappedText) and moved[:] == archive


# ---- the decoders, in slices ------------------------------------------------------------------

class Releases:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def qp_shapes(generator: random.Random) -> bytes:
    """Quoted-printable as written, and as an attacker bends it: soft breaks, escapes cut by a
    line end, bare CR or LF, "=" at the very end, long lines."""
    if generator.random() < 0.5:
        return quopri.encodestring(generator.randbytes(generator.randint(0, 400))).replace(b"\n", b"\r\n")
    pieces = [b"=", b"=\r\n", b"=\n", b"=3D", b"=4", b"=ZZ", b"\r\n", b"\n", b"\r", b" ", b"\t", b"a", b"=\r", b"x" * 90]
    return b"".join(generator.choice(pieces) for _ in range(generator.randint(0, 80)))


def base64_sliced(text: bytes, chunk: int) -> int:
    """Releases at least expected: one a slice where the text is not canonical base64 (that
    is decoded in one pass), none otherwise."""
    return len(text) // chunk if decode._strict_base64(memoryview(text)) is None else 0


@pytest.mark.parametrize("decoder, make, seed, expected", [
    (decode.base64, shapes, 20261206, base64_sliced),
    (decode.quoted_printable, qp_shapes, 7, lambda text, chunk: 1),
], ids=["base64", "quoted-printable"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7, 8, 64, 77])
def test_decoded_in_slices_gives_the_same_bytes_as_in_one_pass(
        decoder: Any, make: Any, seed: int, expected: Any, chunk: int) -> None:
    generator = random.Random(seed + chunk)
    for _ in range(1500):
        text = make(generator)
        released = Releases()
        assert decoder(text, released, chunk=chunk) == decoder(text), text
        if len(text) > chunk:
            assert released.count >= expected(text, chunk)


def test_an_unencoded_part_is_copied_in_slices(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(5000)
    released = Releases()
    assert decode._copied(mapped(data, tmp_path), released, chunk=1024) == data
    assert released.count == 5


# ---- the mapping reads as bytes do -------------------------------------------------------------

def test_a_mapped_message_answers_find_startswith_and_endswith_as_bytes_do(tmp_path: Path) -> None:
    data = b"From x\r\nSubject: hi\r\n\r\nbody\r\n"
    view = mapped(data, tmp_path)
    view.seek(0, 2)     # where zipfile leaves a mapping it read: mmap.find would start there
    for probe in (b"", b"F", b"\r\n", b"body", b"\r\n\r\n", b"x", b"none", data):
        assert view.find(probe) == data.find(probe) and view.rfind(probe) == data.rfind(probe), probe
        for start in (-40, -5, 0, 1, 8, 29, 40):
            for end in (-3, 0, 5, 22, 40):
                assert view.find(probe, start, end) == data.find(probe, start, end), (probe, start, end)
                assert view.find(probe, start) == data.find(probe, start), (probe, start)
                assert view.rfind(probe, start, end) == data.rfind(probe, start, end), (probe, start, end)
    probes = [b"", b"F", b"From ", b"\r\n", b"body\r\n", b"x", (b"q", b"Sub"), (b"nope",), data, data + b"!"]
    for probe in probes:
        for start in (-40, -5, 0, 1, 8, 29, 40):
            for end in (None, -3, 0, 5, 22, 40):
                assert view.startswith(probe, start, end) == data.startswith(probe, start, end), (probe, start, end)
                assert view.endswith(probe, start, end) == data.endswith(probe, start, end), (probe, start, end)


def test_a_mapping_read_in_slices_gives_its_bytes_whole_and_in_order(tmp_path: Path) -> None:
    """What the spool write, the forwarder and clamd send of a big message (`slices`, and
    `slices_off_the_loop` on the event loop): every byte, once, in order, bytes or mapped; a
    mapping's slices copied out (in a thread), bytes in memory given as views, not copied."""
    data = random.Random(9).randbytes(10_000)
    for source in (data, mapped(data, tmp_path)):
        assert b"".join(slices(source, 999)) == data
        assert [len(piece) for piece in slices(source, 4096)] == [4096, 4096, 1808]

        async def gathered(source: bytes | MappedText = source) -> list[bytes | memoryview]:
            return [piece async for piece in slices_off_the_loop(source, 999)]
        pieces = asyncio.run(gathered())
        kind = bytes if isinstance(source, MappedText) else memoryview
        assert b"".join(pieces) == data and all(isinstance(piece, kind) for piece in pieces)
