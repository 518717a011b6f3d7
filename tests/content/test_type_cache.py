"""Content types remembered by digest (`sniff.TypeCache`): the walk sees what libmagic would say.

A wrong cache would let a disguised executable through as the type of other bytes, so each
test compares whole views with the cache against views without it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from frontfilter.content import sniff
from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits

from tests.content import corpus as c
from tests.harness import REPO, write_config

LIMITS = InspectionLimits()

MESSAGES = [
    c.plain(),
    c.message(c.attachment(c.pe(), "image/jpeg", "photo.jpg")),
    c.message(c.attachment(c.zip_of({"inner.zip": c.zip_of({"readme.txt": c.pe()})}), "application/zip", "a.zip")),
    c.message(c.attachment(c.docx(macros=True), "application/pdf", "report.pdf")),
    c.message(c.attachment(c.elf(), "text/plain", "notes.txt"), c.attachment(c.png(), "image/png", "logo.png")),
    c.message(c.attachment(c.pdf(), "application/pdf", "invoice.pdf")),
]


def test_views_are_the_same_with_the_cache_cold_and_warm() -> None:
    cache = sniff.TypeCache(1000)
    uncached = [inspect(raw, LIMITS) for raw in MESSAGES]
    typed = [part.sha256 for view in uncached for part in view.parts if part.sha256]
    cold = [inspect(raw, LIMITS, types=cache) for raw in MESSAGES]
    # libmagic was asked once per distinct payload (the greeting text and the PE repeat)
    assert cache.take_counts() == (len(typed) - len(set(typed)), len(set(typed)))
    warm = [inspect(raw, LIMITS, types=cache) for raw in MESSAGES]
    assert cache.take_counts() == (len(typed), 0)
    assert cold == uncached and warm == uncached
    detected = {part.detected_type for view in warm for part in view.parts}
    assert {"application/vnd.microsoft.portable-executable", "application/x-executable",
            "image/png", "application/pdf", "text/plain"} <= detected


def test_a_disguised_executable_is_refused_again_from_the_cache() -> None:
    cache = sniff.TypeCache(1000)
    disguised = c.message(c.attachment(c.pe(), "image/jpeg", "photo.jpg"))
    for _ in range(2):
        (_, part) = inspect(disguised, LIMITS, types=cache).parts
        assert part.detected_type == "application/vnd.microsoft.portable-executable"
        assert part.type_mismatch


def test_the_cache_keeps_at_most_its_entries_least_recently_used_out_first() -> None:
    cache = sniff.TypeCache(2)
    payloads = {name: data for name, data in (("pe", c.pe()), ("png", c.png()), ("pdf", c.pdf()))}
    digests = {name: hashlib.sha256(data).digest() for name, data in payloads.items()}
    for name in ("pe", "png", "pe", "pdf"):   # pe used again, so png is the oldest when pdf comes
        cache.detect(payloads[name], digests[name])
    assert len(cache) == 2
    assert digests["pe"] in cache and digests["pdf"] in cache and digests["png"] not in cache


def test_zero_entries_asks_libmagic_every_time() -> None:
    cache = sniff.TypeCache(0)
    for _ in range(2):
        assert cache.detect(c.pe(), hashlib.sha256(c.pe()).digest()) == \
            "application/vnd.microsoft.portable-executable"
    assert len(cache) == 0 and cache.take_counts() == (0, 0)


def test_a_negative_type_cache_is_a_config_error_naming_file_and_key(tmp_path: Path) -> None:
    """`inspection.type_cache`: 0 turns the cache off; below that is a typo, said in one line."""
    config = write_config(tmp_path, [2526], inspection={"type_cache": -1})
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode != 0
    assert f"{config}: inspection.type_cache: must not be negative" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_walk_on_the_event_loop_sees_what_a_walk_in_a_thread_sees() -> None:
    """`sniff.KnownTypes` (pipeline: a small message decided on the event loop) either gives
    up (NotKnown, and the thread walks it) or finds every fact the walk with libmagic finds:
    checked on the whole fail-closed corpus, attacks and controls, with every type known."""
    from tests.content import fail_closed_corpus as cases
    cache = sniff.TypeCache(100_000)
    messages = list(MESSAGES)
    for build in cases.CASES.values():
        case = build()
        messages += [case.attack, case.control]
    on_loop = 0
    for raw in messages:
        expected = inspect(raw, LIMITS, types=cache)     # every type now known
        known = sniff.KnownTypes(cache)
        try:
            view = inspect(raw, LIMITS, types=known)
        except sniff.NotKnown:
            continue
        assert view == expected
        on_loop += 1
    assert 0 < on_loop < len(messages)


def test_the_walk_on_the_loop_gives_up_on_what_only_a_thread_may_read() -> None:
    """A type not remembered (libmagic would have to run) and, remembered or not, anything but
    a cheap leaf: a program, an archive, a document."""
    cache = sniff.TypeCache(1000)
    plain, disguised, zipped, docx = MESSAGES[0], MESSAGES[1], MESSAGES[2], MESSAGES[3]
    with pytest.raises(sniff.NotKnown):
        inspect(plain, LIMITS, types=sniff.KnownTypes(cache))        # never seen: libmagic's job
    for raw in (plain, disguised, zipped, docx):
        inspect(raw, LIMITS, types=cache)
    cache.take_counts()
    known = sniff.KnownTypes(cache)
    assert inspect(plain, LIMITS, types=known) == inspect(plain, LIMITS)
    for raw in (disguised, zipped, docx):
        with pytest.raises(sniff.NotKnown):
            inspect(raw, LIMITS, types=sniff.KnownTypes(cache))
    # Hits are counted once the walk is over, not for a walk given up and made again.
    assert cache.take_counts() == (0, 0)
    known.commit()
    assert cache.take_counts() == (1, 0)
