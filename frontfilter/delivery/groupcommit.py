"""The spool's group commit: one thread makes the small messages written meanwhile durable together.

Why a thread of its own and not the spool's pool: with the GIL, a thread that wakes up for each
system call of a write (open, flock, write, fsync, rename, the directory's fsync) takes the GIL
back after each, and under load the event loop is holding it every time. Measured on the 5 KB
bench load (one worker, `perf stat`): 115 futex calls and 63 context switches per message with
the whole write in a pool thread, 14 and 16 with no thread at all. So the write itself, which
only fills the page cache, is made on the event loop (`safeio.begin_write`), and this thread
does only what waits for the disk — an fsync and a rename per message, then one fsync of
`queue/` for everything that arrived while the last group was being committed — and wakes the
event loop once per group.

Nothing is acknowledged before its group is committed: `submit`'s callback runs on the event
loop only after `safeio.commit_group` returned. A crash before that leaves a temporary whose
lock died with the process, which recovery discards, or a message renamed into `queue/` that
the client was never told of and sends again: as with `safeio.write_locked`, at least once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from frontfilter.delivery.safeio import Pending, commit_group

Done = Callable[[Pending], None]


class GroupCommit:
    """Commits `Pending` files in groups, in a thread started on first use; `close` ends it."""

    def __init__(self, after_group: Callable[[], None] = lambda: None):
        self._waiting: list[tuple[Pending, asyncio.AbstractEventLoop, Done]] = []
        self._changed = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._after_group = after_group     # in the thread, once per group (the spool: free space)

    def submit(self, pending: Pending, done: Done) -> None:
        """On an event loop: `done(pending)` is called on that loop once the file is durable,
        or has failed (`pending.error`, the file then gone)."""
        loop = asyncio.get_running_loop()
        with self._changed:
            if self._closing:
                raise RuntimeError("the spool is closed")
            if self._thread is None or not self._thread.is_alive():
                # Started here, and again should it ever have ended: a message waiting for a
                # thread that is not there would wait for ever. A thread that cannot start
                # (the process's thread limit) raises: this message is refused (451).
                thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
                thread.start()
                self._thread = thread
            self._waiting.append((pending, loop, done))
            self._changed.notify()

    def close(self) -> None:
        """Blocking: commit what was submitted, then end the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closing:
                    self._changed.wait()
                if not self._waiting:
                    return
                group, self._waiting = self._waiting, []
            try:
                self._commit(group)
            finally:
                # Whatever happened above, every message of the group gets its answer.
                self._hand_back(group)

    def _commit(self, group: list[tuple[Pending, asyncio.AbstractEventLoop, Done]]) -> None:
        try:
            commit_group([pending for pending, _, _ in group])
        except Exception as error:      # not an OSError (commit_group takes those per file)
            for pending, _, _ in group:
                if pending.error is None:
                    pending.discard(OSError(f"group commit failed: {error!r}"))
        try:
            self._after_group()         # before the hand-back: the free space, then the room
        except Exception:
            pass                        # the last figure stays; the next group tries again

    @staticmethod
    def _hand_back(group: list[tuple[Pending, asyncio.AbstractEventLoop, Done]]) -> None:
        """One wake-up per event loop for the whole group."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Pending, Done]]] = {}
        for pending, loop, done in group:
            by_loop.setdefault(loop, []).append((pending, done))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_finish, items)
            except RuntimeError:
                # The loop is closed: nobody is waiting to answer 250. The files stay spooled
                # (durable) and are delivered after recovery; their locks go with these fds.
                for pending, _ in items:
                    if pending.error is None:
                        pending.locked().close()


def _finish(items: list[tuple[Pending, Done]]) -> None:
    """On the loop: every callback runs, even after one raised (each owns a locked file)."""
    failure: Exception | None = None
    for pending, done in items:
        try:
            done(pending)
        except Exception as error:
            failure = failure or error
    if failure is not None:
        raise failure
