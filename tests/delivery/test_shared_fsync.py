"""The spool's directory fsync shared by concurrent writers (a group commit) keeps its promise:
each writer returns only after an fsync of the directory that began after it asked."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from frontfilter.delivery import safeio

WRITERS = 16
ROUNDS = 20


class Recorder:
    """Wraps the real fsync_dir and numbers events, so the order can be checked afterwards."""

    def __init__(self, fail_first: bool = False) -> None:
        self.clock = itertools.count()
        self.lock = threading.Lock()
        self.syncs: list[tuple[int, int]] = []       # (began, ended) of each successful fsync
        self.calls = 0
        self.fail_first = fail_first
        self.real = safeio.fsync_dir

    def tick(self) -> int:
        with self.lock:
            return next(self.clock)

    def __call__(self, directory: Path) -> None:
        began = self.tick()
        with self.lock:
            self.calls += 1
            fail = self.fail_first and self.calls == 1
        self.real(directory)
        if fail:
            raise OSError(5, "injected I/O error")
        self.syncs.append((began, self.tick()))


def run_writers(directory: Path, recorder: Recorder, results: list[tuple[int, int] | BaseException]) -> None:
    barrier = threading.Barrier(WRITERS)

    def writer() -> None:
        for _ in range(ROUNDS):
            barrier.wait()
            asked = recorder.tick()
            try:
                safeio.fsync_dir_shared(directory)
            except OSError as error:
                results.append(error)
                continue
            results.append((asked, recorder.tick()))

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def covered(asked: int, returned: int, syncs: list[tuple[int, int]]) -> bool:
    return any(asked < began and ended < returned for began, ended in syncs)


def test_each_writer_returns_after_an_fsync_that_began_after_it_asked(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(safeio, "fsync_dir", recorder)
    results: list[tuple[int, int] | BaseException] = []
    run_writers(tmp_path, recorder, results)
    assert len(results) == WRITERS * ROUNDS
    assert all(isinstance(r, tuple) and covered(*r, recorder.syncs) for r in results)
    assert len(recorder.syncs) < WRITERS * ROUNDS     # and writers asking at once shared them


def test_a_failed_fsync_covers_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(fail_first=True)
    monkeypatch.setattr(safeio, "fsync_dir", recorder)
    results: list[tuple[int, int] | BaseException] = []
    run_writers(tmp_path, recorder, results)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1                         # its own writer hears of it ...
    assert all(covered(*r, recorder.syncs) for r in results if isinstance(r, tuple))   # ... the rest waited for a good one


def test_a_write_whose_directory_fsync_fails_leaves_no_file_to_deliver(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller refuses the message (451) and the client sends it again: a copy left under its
    # final name would be found by recovery and delivered twice.
    monkeypatch.setattr(safeio, "fsync_dir", Recorder(fail_first=True))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "queue").mkdir()
    with pytest.raises(OSError):
        safeio.write_locked(tmp_path / "tmp", tmp_path / "queue" / "m1", [b"Subject: x\r\n\r\nbody\r\n"])
    assert list((tmp_path / "queue").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
