"""Differential fuzz: whatever a lenient reader can pull an executable out of, the relay refused
or stripped.

Messages are generated with a Windows executable placed at random in a MIME tree, maybe inside
a container, and then mutated the ways readers disagree on: header blocks with junk or
continuation lines, boundaries quoted oddly, transfer encodings with trailing tokens or on a
multipart, file names and types that lie. Each message goes through the relay's own decision
(inspection + the shipped rules, as `frontfilter scan` and the pipeline run them). If it is
delivered, the delivered bytes (the added fields on top, as the backend gets them) are read by
Python's `email` under both policies, and every part's decoded payload — and every member of
every archive in it, read by libarchive — is searched for the executable. Finding it is a
failure: the relay let through what a mail program would hand to the user.

Seeded and bounded: `make test` runs FUZZ_EXAMPLES (default 150) examples derandomized, so a
failure is the same on every machine; `make fuzz` runs many more with a fresh seed.
"""

from __future__ import annotations

import base64
import bz2
import email
import email.policy
import gzip
import ipaddress
import lzma
import os
import quopri
import random
from pathlib import Path

import libarchive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontfilter.content.limits import InspectionLimits
from frontfilter.pipeline.decision import decide
from frontfilter.model import EnvelopeFacts, Peer, SessionFacts, Stage
from frontfilter.rules.facts import Facts
from frontfilter.rules.loader import load_ruleset
from frontfilter.rules.model import Action
from tests.content import corpus

RULES = load_ruleset(Path(__file__).resolve().parents[2] / "rules")
FACTS = Facts(stage=Stage.DATA, session=SessionFacts(peer=Peer(ipaddress.ip_address("192.0.2.7"), 25), helo="x"),
              envelope=EnvelopeFacts(sender="a@example.net", recipients=("b@example.org",)))
TRACE = (("Received", "from x (192.0.2.7) by relay.example.org with ESMTP"),)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
REFUSED = {Action.REJECT, Action.TEMPFAIL, Action.QUARANTINE, Action.DISCARD}


def _marker(seed: int) -> bytes:
    # A real PE header, then a unique tail: the needle searched for in what is delivered.
    return corpus.pe() + b"FUZZ-EXE-%08d" % seed + bytes(random.Random(seed).randbytes(64))


# --- containers (the field's writers: libarchive, the stdlib compressors) ----------------------

def _archive(fmt: str, filt: str | None, name: str, data: bytes) -> bytes:
    out = bytearray()

    def sink(chunk: bytes) -> int:
        out.extend(chunk)
        return len(chunk)

    with libarchive.custom_writer(sink, fmt, filter_name=filt) as archive:
        archive.add_file_from_memory(name, len(data), data)
    return bytes(out)


CONTAINERS = {
    "none": lambda name, data: data,
    "zip": lambda name, data: corpus.zip_of({name: data}),
    "zip-in-zip": lambda name, data: corpus.zip_of({"inner.zip": corpus.zip_of({name: data})}),
    "concatenated-zip": lambda name, data: corpus.zip_of({name: data}) + corpus.zip_of({"readme.txt": b"hello"}),
    "tar.gz": lambda name, data: _archive("ustar", "gzip", name, data),
    "tar.xz": lambda name, data: _archive("pax", "xz", name, data),
    "7z": lambda name, data: _archive("7zip", None, name, data),
    "cpio": lambda name, data: _archive("cpio", None, name, data),
    "gz": lambda name, data: gzip.compress(data),
    "bz2": lambda name, data: bz2.compress(data),
    "xz": lambda name, data: lzma.compress(data),
}


def _unpack(data: bytes, depth: int = 0) -> list[bytes]:
    """`data` and, recursively, every member libarchive reads out of it (raw for compressors)."""
    found = [data]
    if depth >= 3:
        return found
    for fmt in ("all", "raw"):
        try:
            with libarchive.memory_reader(data, format_name=fmt) as archive:
                for entry in archive:
                    member = b"".join(entry.get_blocks())
                    if member != data:
                        found += _unpack(member, depth + 1)
            break
        except libarchive.ArchiveError:
            continue
    return found


def _lenient_reader_finds(raw: bytes, needle: bytes) -> bool:
    """Python's `email` (compat32 and default) + libarchive: can a user get at the bytes?"""
    for policy in (email.policy.compat32, email.policy.default):
        try:
            message = email.message_from_bytes(raw, policy=policy)
            parts = list(message.walk())
        except Exception:       # a parser that gives up hands the user nothing
            continue
        for part in parts:
            try:
                payload = part.get_payload(decode=True)
            except Exception:
                continue
            if not payload:
                continue
            if any(needle in blob for blob in _unpack(payload)):
                return True
    return False


# --- message generation ------------------------------------------------------------------------

NAMES = ["invoice.pdf", "photo.jpg", "data.bin", "report.exe", None, "notes.txt", "setup.zip"]
TYPES = ["application/octet-stream", "application/pdf", "image/jpeg", "text/plain", "application/zip"]


@st.composite
def messages(draw):
    seed = draw(st.integers(0, 10**8))
    needle = _marker(seed)
    container = draw(st.sampled_from(sorted(CONTAINERS)))
    payload = CONTAINERS[container]("setup.exe", needle)
    name = draw(st.sampled_from(NAMES))
    ctype = draw(st.sampled_from(TYPES))
    cte = draw(st.sampled_from(["base64", "base64 x", "base64;x", "Base64", "quoted-printable"]))
    encoded = (quopri.encodestring(payload) if cte == "quoted-printable"
               else base64.encodebytes(payload)).decode("ascii")
    part_headers = [f"Content-Type: {ctype}" + (f'; name="{name}"' if name else ""),
                    f"Content-Transfer-Encoding: {cte}"]
    if name and draw(st.booleans()):
        part_headers.append(f'Content-Disposition: attachment; filename="{name}"')
    junk = draw(st.sampled_from([None, " x", ":x", "From a@b Thu Jul 31 13:49:50 2008", "junk line"]))
    if junk is not None:
        part_headers.insert(draw(st.integers(0, len(part_headers))), junk)
    exe_part = "\n".join(part_headers) + "\n\n" + encoded

    boundary = "b" + str(draw(st.integers(0, 999)))
    quoting = draw(st.sampled_from(["plain", "quoted", "trailing-blank", "backslash"]))
    written, used = {"plain": (boundary, boundary), "quoted": (f'"{boundary}"', boundary),
                     "trailing-blank": (f'"{boundary} "', boundary),
                     "backslash": (f'"{boundary}\\x"', f"{boundary}\\x")}[quoting]
    siblings = ["Content-Type: text/plain\n\nhello\n",
                "Content-Type: image/png\nContent-Transfer-Encoding: base64\n\n"
                + base64.encodebytes(corpus.png()).decode()]
    position = draw(st.integers(0, len(siblings)))
    children = siblings[:position] + [exe_part] + siblings[position:]
    body = "".join(f"--{used}\n{child}\n" for child in children) + f"--{used}--\n"
    nested = draw(st.booleans())
    if nested:   # one more level: the multipart above inside an outer one
        inner_headers = f"Content-Type: multipart/mixed; boundary={written}\n\n"
        body = f"--outer\n{inner_headers}{body}\n--outer--\n"
        written = "outer"
    multipart_cte = draw(st.sampled_from([None, None, None, "base64", "quoted-printable"]))
    top = ["From: a@example.net", "To: b@example.org", "Subject: fuzz", "MIME-Version: 1.0",
           f"Content-Type: multipart/mixed; boundary={written}"]
    body_bytes = body.replace("\n", "\r\n").encode()
    if multipart_cte is not None:
        top.append(f"Content-Transfer-Encoding: {multipart_cte}")
        body_bytes = (base64.encodebytes(body_bytes) if multipart_cte == "base64"
                      else quopri.encodestring(body_bytes)).replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        top.insert(0, " continued")             # a first line that continues our Received field
    head = "\r\n".join(top).encode() + b"\r\n\r\n"
    return head + body_bytes, needle


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages())
def test_nothing_a_lenient_reader_extracts_is_delivered(case):
    raw, needle = case
    decision = decide(raw, FACTS, RULES, InspectionLimits(), trace=TRACE)
    if decision.verdict.action in REFUSED:
        return
    delivered = decision.head + decision.message
    assert not _lenient_reader_finds(delivered, needle), (
        f"delivered an executable a client can extract; parts seen: "
        f"{[(p.path, p.detected_type, p.filename) for p in decision.view.parts]}, "
        f"ambiguities {sorted(a.value for a in decision.view.ambiguities)}, "
        f"rules {[m.rule for m in decision.verdict.matches]}")


def test_the_oracle_finds_the_executable_where_it_is():
    # The oracle itself can fail: it must see the executable in a plain attachment, in a
    # zip and in a tar.gz, or the property above proves nothing.
    needle = _marker(1)
    for container in ("none", "zip", "tar.gz", "7z", "bz2"):
        payload = CONTAINERS[container]("setup.exe", needle)
        raw = corpus.message(corpus.attachment(payload, "application/octet-stream", "x.bin"))
        assert _lenient_reader_finds(raw, needle), container
    assert not _lenient_reader_finds(corpus.message(corpus.attachment(corpus.png(), "image/png", "a.png")), needle)
