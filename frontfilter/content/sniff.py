"""Real type by content (libmagic through python-magic) and the declared/detected comparison.

Guarantees: `detect` classifies the whole decoded payload (libmagic itself reads at most
~7 MiB of it); it never raises — a libmagic failure answers "" (unknown), which is not a
mismatch but is visible to rules. One `magic.Magic` per process, created under a lock and used
under python-magic's own lock: a libmagic cookie is not thread-safe, and creating cookies
concurrently has crashed elsewhere. One, not one per inspection thread: each cookie maps the
compiled database and compiles its regexes (7-8 MiB a cookie, bench/README.md "Memory of a
worker"), and with one worker process per core the threads of one process gain little from
typing in parallel (most of a message's parts are answered by `TypeCache` anyway).
`TypeCache` remembers libmagic's answers by content digest (see there why that is exact).

The benign pairs (`BENIGN` below) are declared/detected disagreements that are normal in real
mail and carry no risk; anything else is a `type_mismatch`.
"""

from __future__ import annotations

import os
import threading

import magic

_create_lock = threading.Lock()
_cookie_of: tuple[int, magic.Magic] | None = None    # (pid, cookie): a forked child makes its own


def _cookie() -> magic.Magic:
    global _cookie_of
    held = _cookie_of
    if held is not None and held[0] == os.getpid():
        return held[1]
    with _create_lock:
        if _cookie_of is None or _cookie_of[0] != os.getpid():
            _cookie_of = (os.getpid(), magic.Magic(mime=True))
        return _cookie_of[1]


def prepare() -> None:
    """Make this process's cookie now (a worker at start): loading the database and its first
    call cost 6-8 MiB and some milliseconds, not the first message's."""
    detect(b"prepare")


def detect(payload: bytes) -> str:
    """libmagic's MIME type of the payload, lower-case; "" when libmagic fails."""
    try:
        answer = _cookie().from_buffer(payload)
    except Exception:
        return ""
    mime = (answer or "").split(";", 1)[0].strip().lower()
    if mime == "application/x-dosexec" and payload[:2] not in (b"MZ", b"ZM"):
        # libmagic's "DOS executable (COM)" guess: one first byte (0x8c, 0xb8, 0xe9, 0xeb …)
        # and a loose look at the next. It calls about 1 in 110 random blocks a program, so
        # every encrypted or compressed attachment would risk rejection as an executable. A COM
        # file has no header and no 64-bit Windows runs one; anything Windows runs starts with
        # MZ, and that stays x-dosexec.
        return "application/octet-stream"
    return mime


class TypeCache:
    """libmagic's answers by SHA-256 of the payload, for content seen before.

    Mail repeats itself: the logo in every signature, a newsletter sent to 500 recipients as
    500 messages, one campaign's attachment. libmagic is the dearest step of the walk (1-3 ms
    for a 5 KB text part: its text tests are regex searches over the whole buffer, compiled
    on every call), a look-up is a microsecond. A hit is exactly what libmagic would answer:
    the answer depends on the bytes only, and no sender can make other bytes with the same
    SHA-256. What libmagic failed on ("") is not kept, so a failure is retried next time.

    Bounded to `entries` (about 150 bytes each), least recently used out first; `entries = 0`
    turns it off. Shared by the inspection threads, so changed under a lock. It counts its hits
    and misses for the metrics (`take_counts`), which are not this pure module's to move.
    """

    def __init__(self, entries: int):
        self._entries = entries
        self._types: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def detect(self, payload: bytes, digest: bytes) -> str:
        """`detect(payload)`; `digest` is the payload's SHA-256, which the caller has anyway."""
        if self._entries <= 0:
            return detect(payload)
        with self._lock:
            known = self._touch(digest)
            if known is not None:
                self._hits += 1
            else:
                self._misses += 1
        if known is not None:
            return known
        detected = detect(payload)
        if detected:
            with self._lock:
                self._types[digest] = detected
                while len(self._types) > self._entries:
                    del self._types[next(iter(self._types))]
        return detected

    def recall(self, digest: bytes) -> str | None:
        """What libmagic answered for this digest before, if remembered; counts nothing."""
        with self._lock:
            return self._touch(digest)

    def _touch(self, digest: bytes) -> str | None:
        """Under the lock: the remembered type, made the most recently used."""
        known = self._types.pop(digest, None)
        if known is not None:
            self._types[digest] = known
        return known

    def count_hits(self, hits: int) -> None:
        with self._lock:
            self._hits += hits

    def take_counts(self) -> tuple[int, int]:
        """(hits, misses) since the last call."""
        with self._lock:
            counts = self._hits, self._misses
            self._hits = self._misses = 0
        return counts

    def __len__(self) -> int:
        return len(self._types)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._types


# Aliases: different spellings of one type, folded before comparing.
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-icon": "image/vnd.microsoft.icon",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "application/x-zip-compressed": "application/zip",
    "application/x-zip": "application/zip",
    "application/zip-compressed": "application/zip",
    "application/x-gzip": "application/gzip",
    "application/x-gtar": "application/x-tar",
    "application/x-rar-compressed": "application/x-rar",
    "application/vnd.rar": "application/x-rar",
    "application/x-pdf": "application/pdf",
    "audio/mp3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "binary/octet-stream": "application/octet-stream",
}

# Families: inside one family libmagic cannot reliably tell the members apart (OOXML by entry
# order, which the sender controls; OLE documents only with the whole file), so a
# disagreement inside a family is noise. Macro-enabled OOXML is in the family on purpose: macros
# are reported by `has_macros`, not by the type. Java archives are NOT in the zip family: a jar
# is code.
def _family(mime: str) -> str | None:
    if mime.startswith("text/") or mime in ("application/xml", "application/json", "message/rfc822"):
        return "text"
    if (
        mime == "application/zip"
        or mime.startswith("application/vnd.openxmlformats-officedocument.")
        or mime.startswith("application/vnd.oasis.opendocument.")
        or (mime.startswith("application/vnd.ms-") and mime.endswith(".macroenabled.12"))
        or mime == "application/epub+zip"
    ):
        return "zip-container"
    if mime in (
        "application/x-ole-storage", "application/cdfv2", "application/msword",
        "application/vnd.ms-excel", "application/vnd.ms-powerpoint", "application/vnd.ms-office",
        "application/vnd.ms-outlook", "application/vnd.visio",
    ):
        return "ole"
    return None


# Types that say "I do not know" rather than claim something.
_UNKNOWN = frozenset({"", "application/octet-stream", "application/unknown", "application/x-unknown"})

BENIGN = (
    "identical after aliases (image/jpg = image/jpeg, x-zip-compressed = zip, x-gzip = gzip …)",
    "either side is application/octet-stream or unknown",
    "both text: text/* with text/*, application/xml, application/json, message/rfc822",
    "both zip containers: zip, OOXML (incl. macro-enabled), ODF, EPUB",
    "both OLE compound files: x-ole-storage, CDFV2, msword, vnd.ms-excel/powerpoint/office/outlook",
)


def canonical(mime: str) -> str:
    mime = mime.strip().lower()
    return ALIASES.get(mime, mime)


def mismatch(declared: str, detected: str) -> bool:
    """True when declared and detected disagree beyond the benign pairs (`BENIGN`)."""
    declared, detected = canonical(declared), canonical(detected)
    if declared == detected or declared in _UNKNOWN or detected in _UNKNOWN:
        return False
    family = _family(declared)
    return family is None or family != _family(detected)


class NotKnown(BaseException):
    """A walk on the event loop (`KnownTypes`) met a part it may not read there.

    A BaseException on purpose: the walk turns any Exception a reader raises into a fact about
    the part (fail closed, content/inspect.py), and this is not a fact about the part: the
    whole walk is made again, from the start, in an inspection thread."""


# Leaves whose reading costs time in proportion to their size only: no archive, no compressed
# stream, no document format (PDF, OLE2, RTF, TNEF), no attached message. What the walk does
# with these, at most a message's size of work, may run on the event loop (pipeline/stages.py,
# Pipeline._on_loop).
CHEAP_LEAVES = frozenset({"text/plain", "text/html", "image/png", "image/jpeg", "image/gif"})


class KnownTypes:
    """`TypeCache.detect` for a walk on the event loop: libmagic never runs. A payload whose type
    is not remembered, or is not one of `CHEAP_LEAVES`, raises NotKnown. Its hits are counted
    in the cache by `commit`, once the walk is over (a walk given up is made again elsewhere,
    and counted there)."""

    def __init__(self, cache: TypeCache):
        self._cache = cache
        self._hits = 0

    def detect(self, payload: bytes, digest: bytes) -> str:
        known = self._cache.recall(digest)
        if known not in CHEAP_LEAVES:
            raise NotKnown(known or "not known")
        self._hits += 1
        return known

    def commit(self) -> None:
        self._cache.count_hits(self._hits)
        self._hits = 0
