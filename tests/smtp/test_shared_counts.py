"""The per-address counts the workers share (smtp/shared_counts.py): what one process adds, the
others see; a worker's row is cleared when it ends."""

from __future__ import annotations

import os

from frontfilter.smtp.shared_counts import SharedCounts


def test_a_count_written_in_a_forked_worker_is_seen_by_the_others_and_cleared_with_its_row() -> None:
    counts = SharedCounts(rows=2)
    bucket = counts.bucket("192.0.2.7")
    pid = os.fork()
    if pid == 0:                               # a worker in slot 1 takes two sessions
        counts.row = 1
        counts.add(bucket, 1)
        counts.add(bucket, 1)
        os._exit(0)
    os.waitpid(pid, 0)
    counts.row = 0
    counts.add(bucket, 1)                      # and this one, in slot 0, a third
    assert counts.count(bucket) == 3
    counts.clear_row(1)                        # slot 1's worker ended: its sessions with it
    assert counts.count(bucket) == 1
    counts.add(bucket, -5)                     # never below zero
    assert counts.count(bucket) == 0


def test_the_bucket_depends_on_a_secret_drawn_at_start() -> None:
    one, two = SharedCounts(rows=1), SharedCounts(rows=1)
    keys = [f"198.51.100.{n}" for n in range(50)]
    assert [one.bucket(k) for k in keys] != [two.bucket(k) for k in keys]
    assert [one.bucket(k) for k in keys] == [one.bucket(k) for k in keys]
