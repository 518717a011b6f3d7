"""The spool's group commit, in a process of its own: what makes small messages durable.

Why a process and not a thread (as until issue 21): a thread of the worker takes the GIL back
after each system call of a commit — the fsync, the rename, the directory's open, fsync and
close, the statvfs, the wait for work — and under load the event loop holds it each time, so
every step waited for the loop to let go. Measured on the bench's half-peak 5 KB load (two
workers, 380 msgs/s): the group itself took 0.8 ms at the median, but a message waited 1.8 ms
for it ("spooled in"), 9.5 ms at p99, and the commits were most of the relay's added p99. This
process has no other thread to wait for, and the worker's loop hears from it as from a socket.

The worker writes each message into the page cache as before (`safeio.begin_write`, on its
event loop), then hands this process the open, locked descriptor over a socket pair
(SCM_RIGHTS: the very file written, not a name to look up again). This process takes every
request that has arrived, runs `safeio.commit_group` on them — each file fsynced and renamed,
one fsync of `queue/` for the group — and answers each in order, then says how much space is
free (the statvfs the thread made after each group). The descriptor it was given is closed
after the group; the worker's stays open, and the flock with it (a flock belongs to the open
file, which both descriptors share).

Nothing changes in what is durable when: a message is answered 250 only after this process
said its group was committed. A crash of this process is a lost connection to the worker: the
messages it had not answered are refused (4xx) and their files removed, whichever step they had
reached, and the next message starts a new process. A crash of the worker closes the socket,
and this process ends once it has finished its group.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from frontfilter.delivery.safeio import Pending, commit_group, free_bytes, fsync_dir

Done = Callable[[Pending], None]

# One request: the temporary's path, NUL, the final path (a new name: a queue id). The
# descriptor travels beside it.
# One answer per request: b"+" (renamed, durable), or b"-", then b"g" (the file is gone) or b"h"
# (its name could not be removed: the worker keeps it locked, `Pending.held`), the errno, NUL,
# the error's text, NUL, the file name it was about. After each group: b"=" and the free bytes
# of the spool's filesystem (nothing when statvfs failed).
RECORD_MAX = 16384
# The command that runs the process (the tests run one with faults of their own making).
PROGRAM = [sys.executable, "-m", "frontfilter.delivery.committer"]
# Requests sent and not yet answered, at most; the rest wait in the worker. Descriptors in
# flight over a socket count against the user's RLIMIT_NOFILE, shared by every worker
# (ETOOMANYREFS past it), and a group this big already shares one directory fsync.
IN_FLIGHT_MAX = 256
# How soon a send refused for want of kernel room (ETOOMANYREFS, ENOBUFS) is tried again.
BACKOFF = 0.01
# How long `close` waits for the answers still due; past it they are given up (refused).
CLOSE_WAIT = 30.0

Waiting = tuple[Pending, Done]


class CommitProcess:
    """The worker's side. Everything runs on the worker's event loop but `close`, which is
    called from another thread and hands its work to the loop."""

    def __init__(self, root: Path, free_space: Callable[[int], None] = lambda free: None):
        self._root = root
        self._free_space = free_space       # on the loop, after each group: bytes free
        self._sock: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent: deque[Waiting] = deque()          # sent, in order, answer not yet read
        self._unsent: deque[tuple[Waiting, bytes]] = deque()
        self._settling = 0                  # lost connections whose files are being settled
        self._closing = False
        self._closed: threading.Event | None = None   # set once `close`'s work is done
        self._to_reap: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """On the event loop: the process, unless it runs already. Raises OSError when it
        cannot be started (the message is then refused, 4xx)."""
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # A session of its own: a Ctrl-C to the terminal's group cannot reach it before it
            # has set its signals aside (its worker alone ends it).
            self._child = subprocess.Popen(
                [*PROGRAM, "--fd", str(theirs.fileno()), "--root", os.fspath(self._root)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)
        except OSError as error:
            ours.close()
            raise OSError(error.errno, f"the spool's commit process cannot start: {error.strerror or error}") from error
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ours.fileno(), self._readable)

    def submit(self, pending: Pending, done: Done) -> None:
        """On the event loop: `done(pending)` is called on it once the file is durable, or has
        failed (`pending.error` set, the file gone, its descriptor closed)."""
        if self._closing:
            raise RuntimeError("the spool is closed")
        if not pending.new_name:
            # A file that may replace another (a state file) is not settled here: were its
            # commit lost, removing it under its final name would remove what it replaced.
            raise ValueError(f"only new files are committed by the commit process: {pending.final}")
        self.start()
        request = os.fsencode(pending.temp) + b"\0" + os.fsencode(pending.final)
        self._unsent.append(((pending, done), request))
        self._pump()

    def _pump(self) -> None:
        """Send what waits, in order, while the socket takes it and IN_FLIGHT_MAX allows."""
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        while self._unsent and len(self._sent) < IN_FLIGHT_MAX:
            waiting, request = self._unsent[0]
            try:
                sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [waiting[0].fd]))])
            except (BlockingIOError, InterruptedError):
                loop.add_writer(sock.fileno(), self._pump)
                return
            except OSError as error:
                loop.remove_writer(sock.fileno())
                if error.errno in (errno.ETOOMANYREFS, errno.ENOBUFS, errno.ENOMEM):
                    # Too many descriptors in flight for this user (all workers together), or
                    # no kernel memory for now: a wait, not a loss. Tried again shortly, and
                    # with each answer.
                    loop.call_later(BACKOFF, self._pump_if, sock)
                    return
                # The process is gone: what it answered before it went is read first.
                finished, lost = self._read_answers(sock)
                try:
                    _finish(finished)
                finally:
                    self._lost(lost or error)
                return
            self._unsent.popleft()
            self._sent.append(waiting)
        loop.remove_writer(sock.fileno())

    def _pump_if(self, sock: socket.socket) -> None:
        if self._sock is sock and self._unsent:
            self._pump()

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        finished, lost = self._read_answers(sock)
        try:
            _finish(finished)           # answered before the connection was lost, if it was
        finally:
            if lost is not None:
                self._lost(lost)
            elif self._unsent:
                self._pump()
            self._closed_if_idle()

    def _read_answers(self, sock: socket.socket) -> tuple[list[Waiting], OSError | None]:
        """Every answer waiting on the socket, applied in order: the settled requests, and
        why the connection is lost if it is. Never raises: what it popped is returned."""
        finished: list[Waiting] = []
        lost: OSError | None = None
        try:
            while True:
                try:
                    record = sock.recv(RECORD_MAX)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionResetError:
                    # The process ended with requests it never read. The error is reported
                    # once, before the answers it did send: those are read on, not lost.
                    if lost is not None:
                        break
                    lost = OSError(errno.ECONNRESET, "the spool's commit process ended")
                    continue
                except OSError as error:
                    lost = lost or error
                    break
                if not record:
                    lost = lost or OSError(errno.EPIPE, "the spool's commit process ended")
                    break
                answer = _parse_answer(record)
                if isinstance(answer, int):
                    self._free_space(answer)
                elif answer is None or not self._sent:
                    lost = OSError(errno.EPROTO, f"the spool's commit process answered {record[:40]!r} out of turn")
                    break
                else:
                    waiting = self._sent.popleft()
                    finished.append(waiting)          # settled whatever happens next
                    _apply(waiting[0], answer)
        except Exception as error:      # not expected; the entries popped are still settled
            lost = OSError(errno.EPROTO, f"answer from the spool's commit process not applied: {error!r}")
        return finished, lost

    def _lost(self, error: OSError) -> None:
        """The process is gone, or no longer to be trusted. What it had not answered is
        refused and its files removed (renamed or not: nobody was told 250) — but only once
        the process is surely dead, so that it renames nothing after; that wait (a process
        stuck in an fsync is not killed before the fsync returns) is made in a thread, not
        here. The next submit starts another process."""
        loop = self._loop
        assert loop is not None
        child = self._disconnect()
        unanswered = list(self._sent) + [waiting for waiting, _ in self._unsent]
        self._sent.clear()
        self._unsent.clear()
        self._settling += 1
        loop.create_task(self._settle_lost(child, unanswered, error))

    async def _settle_lost(self, child: subprocess.Popen[bytes] | None, unanswered: list[Waiting],
                           error: OSError) -> None:
        try:
            exit_code = await asyncio.to_thread(_discard_after, child, [pending for pending, _ in unanswered], error)
            # Imported here: the process itself (this module run as a program) needs none of it.
            from frontfilter import observe
            observe.spool_commit_process_lost(error.strerror or str(error), len(unanswered), exit_code)
        finally:
            # However the settling went, every session waiting on these gets its answer (4xx).
            for pending, _ in unanswered:
                pending.error = pending.error or error
            try:
                _finish(unanswered)
            finally:
                self._settling -= 1
                self._closed_if_idle()

    def close(self) -> None:
        """Blocking, from a thread other than the loop's: no new request from now on; the
        answers still due are waited for, CLOSE_WAIT at most (then given up: refused, their
        files removed), then the process is ended. With no running loop, nothing is in flight
        that could still be answered: the process is simply ended."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            self._closing = True
            child = self._disconnect()
            if child is not None:
                _reap(child)
            return
        closed = threading.Event()
        try:
            loop.call_soon_threadsafe(self._begin_closing, closed)
        except RuntimeError:        # the loop closed meanwhile
            return
        # The loop gives up on the answers after CLOSE_WAIT; this wait is only a backstop.
        closed.wait(CLOSE_WAIT + 10)
        for child in self._to_reap:
            _reap(child)            # here, not on the loop: it may be finishing an fsync

    def _begin_closing(self, closed: threading.Event) -> None:
        self._closing = True
        self._closed = closed
        assert self._loop is not None
        self._loop.call_later(CLOSE_WAIT, self._give_up)
        self._closed_if_idle()

    def _give_up(self) -> None:
        if self._closed is not None and not self._closed.is_set() and (self._sent or self._unsent):
            self._lost(OSError(errno.ETIMEDOUT, f"no answer from the spool's commit process in {CLOSE_WAIT:.0f} s"))

    def _closed_if_idle(self) -> None:
        """Closing, and nothing left to answer: end the process (it reads the end of the
        socket, finishes, exits; `close`'s thread reaps it)."""
        if not self._closing or self._closed is None or self._sent or self._unsent or self._settling:
            return
        child = self._disconnect()
        if child is not None:
            self._to_reap.append(child)
        self._closed.set()

    def _disconnect(self) -> subprocess.Popen[bytes] | None:
        """The socket off the loop and closed (the process reads its end); the process, which
        the caller ends or reaps."""
        sock, child, loop = self._sock, self._child, self._loop
        self._sock = self._child = None
        if sock is not None:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock.fileno())
                loop.remove_writer(sock.fileno())
            sock.close()
        return child


@dataclass(frozen=True)
class _Outcome:
    """The process's answer on one file: committed (no error), or not — its name removed, or
    `held` when that removal failed."""
    error: OSError | None = None
    held: bool = False


def _parse_answer(record: bytes) -> int | _Outcome | None:
    """A record of the process: the free bytes (an int), a file's outcome, or None for what
    this process never sends."""
    if record == b"+":
        return _Outcome()
    if record[:1] == b"=" and record[1:].isdigit():
        return int(record[1:])
    if record[:1] == b"-" and record[1:2] in (b"g", b"h") and record.count(b"\0") == 2:
        number, text, name = record[2:].split(b"\0")
        if number.isdigit():
            error = OSError(int(number), text.decode(errors="replace"), os.fsdecode(name))
            return _Outcome(error, held=record[1:2] == b"h")
    return None


def _apply(pending: Pending, outcome: _Outcome) -> None:
    """The process's answer on one file, as `commit_group` would have left it here."""
    if outcome.error is None:
        pending.renamed = True
        return
    pending.error = outcome.error
    if outcome.held:
        # Its name could not be removed: the lock stays, so the scan cannot deliver mail whose
        # client is being refused (`Pending.held`).
        pending.held = True
    else:
        os.close(pending.fd)        # the process removed the file and closed its descriptor


def _discard_after(child: subprocess.Popen[bytes] | None, unanswered: list[Pending], error: OSError) -> int | None:
    """In a thread: once `child` is dead, remove each unanswered file under whichever name
    it has (it may have been renamed), then make the removals durable. Its exit status.

    A child that does not die within CLOSE_WAIT (stuck in an fsync on a dead disk) may yet
    rename: its files are left as they are, locked, for recovery at the next start."""
    exit_code = None
    if child is not None:
        child.kill()                # gone already, as a rule: then this does nothing
        try:
            exit_code = child.wait(CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            return None
    directories = {directory for pending in unanswered if (directory := pending.discard_either(error)) is not None}
    for directory in directories:
        try:
            fsync_dir(directory)
        except OSError:
            pass            # at worst a crash brings one back: delivered, and sent again
    return exit_code


def _finish(items: list[Waiting]) -> None:
    """Every callback runs, even after one raised (each owns a locked file)."""
    failure: Exception | None = None
    for pending, done in items:
        try:
            done(pending)
        except Exception as error:
            failure = failure or error
    if failure is not None:
        raise failure


def _reap(child: subprocess.Popen[bytes]) -> None:
    try:
        child.wait(CLOSE_WAIT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# ---- the process ---------------------------------------------------------------------------

def serve(sock: socket.socket, root: Path) -> None:
    """Commit what arrives, a group at a time, until the worker closes its end."""
    ended = False
    while not ended:
        group, ended = _take_group(sock)
        if group:
            _commit(sock, group)
            try:
                free = free_bytes(root)
            except OSError:
                continue
            sock.send(b"=%d" % free)


def _take_group(sock: socket.socket) -> tuple[list[Pending], bool]:
    """Every request that has arrived (waiting for the first); True once the worker's end is
    closed."""
    group: list[Pending] = []
    blocking = True
    while True:
        try:
            # Not socket.recv_fds: it drops its flags argument (3.11), and MSG_DONTWAIT with it.
            request, ancillary, _, _ = sock.recvmsg(RECORD_MAX, FD_SPACE, 0 if blocking else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return group, False
        if not request:
            return group, True
        blocking = False
        temp, final = request.split(b"\0")
        fd = _received_fd(ancillary)
        group.append(Pending(fd, Path(os.fsdecode(temp)), Path(os.fsdecode(final)), _NO_STAT, new_name=True))


def _commit(sock: socket.socket, group: list[Pending]) -> None:
    commit_group(group)
    answers = []
    for pending in group:
        if pending.error is None or pending.held:
            os.close(pending.fd)        # the worker's descriptor keeps the lock
        if pending.error is None:
            answers.append(b"+")
        else:
            error = pending.error
            answers.append(b"-%s%d\0%s\0%s" % (b"h" if pending.held else b"g", error.errno or errno.EIO,
                                               (error.strerror or str(error)).encode(),
                                               os.fsencode(error.filename or pending.temp)))
    for answer in answers:
        sock.send(answer)


def _received_fd(ancillary: list[tuple[int, int, bytes]]) -> int:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a commit request came with {len(fds)} descriptors, not one")
    return fds[0]


FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)
_NO_STAT = os.stat_result((0,) * 10)     # the worker has the file's stat; this side needs none


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="frontfilter's spool commit process (started by a worker)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    # Its worker alone ends it, by closing the socket: a signal to the whole group (Ctrl-C, the
    # service's stop) must not cut the commits the worker still answers during its grace.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        serve(sock, args.root)
    except (BrokenPipeError, ConnectionResetError):
        pass            # the worker is gone: nobody is waiting for an answer
    return 0


if __name__ == "__main__":
    sys.exit(main())
