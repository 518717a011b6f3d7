"""The durable spool: where a message lives from the client's 250 until the backend took it.

Layout (documented for administrators in docs/spool.md):

    SPOOL/tmp/          files being written; one without a writer's lock was never acknowledged
    SPOOL/queue/ID.msg  the envelope and the message, together, never changed once written
    SPOOL/queue/ID.state  per-recipient delivery state, replaced atomically after each attempt
    SPOOL/deadletter/   ID.msg + ID.state of messages given up on (kept for the administrator)

`ID.msg` is a text line `FRONTFILTER-SPOOL 1`, one line of JSON (the envelope), then the message
bytes exactly as they are forwarded. `ID.state` is JSON; absent means "no attempt yet, every
recipient pending".

Guarantees:
- A message is acknowledged (250) only after `Spool.write` returned OK: written in `tmp/`,
  fsynced, renamed into `queue/`, `queue/` fsynced (see safeio). `ID.msg` is the commit point.
  The writer's lock is kept, and the message goes to the delivery worker locked and in memory
  (`Spool.settle` → `on_spooled`): it is not read back from disk for its first attempt.
- The `.msg` file's flock protects the pair: whoever changes the state, delivers, deletes or
  dead-letters a message holds it — a worker in this or another process (issue 9), or the
  `frontfilter queue` tool. Locks die with their process.
- Crash semantics: delivered → `.msg` is removed first, then `.state`; a crash between leaves
  an orphan `.state` that recovery removes. Dead-lettered → `.msg` moved first, then `.state`
  (recovery moves an orphan after it). A crash before the new state is written means the last
  attempt is repeated: at-least-once, a duplicate only for what was in flight.

Bounds: MAX_ENVELOPE_BYTES on the envelope line; back-pressure limits (count, bytes, free disk)
from `[spool]`, checked at MAIL (cheap, cached) and again at end of DATA (authoritative).
Blocking functions here run in threads; `Spool` is the asyncio face the pipeline uses.
(Past 400 lines on purpose: the file format, its reader and writer, the locked message and the
admission that decides what may be written are one contract, easier to check read together.)
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from frontfilter.config import SpoolConfig
from frontfilter.delivery import safeio
from frontfilter.delivery.committer import CommitProcess
from frontfilter.delivery.spares import SpareFiles
from frontfilter.mapped import MappedText, MessageBytes

MAGIC = b"FRONTFILTER-SPOOL 1\n"
MSG_SUFFIX, STATE_SUFFIX = ".msg", ".state"     # a message's two files: ID.msg, ID.state
STATE_VERSION = 1
# Envelope line: up to a few hundred recipients of 256 octets (RFC 5321 §4.5.3.1.3) plus facts.
MAX_ENVELOPE_BYTES = 1024 * 1024
# Threads writing large messages whole (fsync): concurrent fsyncs share one ext4 journal commit,
# so a few threads raise throughput; more only queue in the kernel.
SPOOL_IO_THREADS = 4
# Messages up to this size are written on the event loop (the page cache: tens of µs for 5 KB)
# and made durable by the group commit (delivery/committer.py); larger ones in a spool thread,
# so that one big write never holds up the small messages committed with it.
GROUPED_WRITE_MAX = 256 * 1024
# Queue ids are model.new_queue_id(): digits and upper-case consonants. Anything else given to
# the queue tool is refused before it becomes a path.
VALID_ID = re.compile(r"^[0-9A-Z]{8,40}$")


class SpoolFormatError(Exception):
    """A spool file that cannot be read as one (damaged, or edited by hand)."""


class Status(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Envelope:
    id: str
    sender: str                       # "" is the null sender
    recipients: tuple[str, ...]
    arrived: float                    # Unix time the client's 250 was sent (about)
    size: int                         # bytes of the message that follows the envelope line
    options: tuple[str, ...] = ()     # MAIL parameters kept for the backend: BODY=, SMTPUTF8
    client: str = ""
    helo: str = ""
    login: str = ""                   # the client's AUTH login, for a backend that takes XCLIENT
    dsn_for: str = ""                 # for a DSN we generated: the queue id it reports on

    def to_json(self) -> bytes:
        # Field by field, not dataclasses.asdict (its deep copy was 2.3 % of a 5 KB message's
        # time on the event loop); tests/delivery/test_spool_files.py checks every field.
        return _json_bytes({"id": self.id, "sender": self.sender, "recipients": list(self.recipients),
                            "arrived": self.arrived, "size": self.size, "options": list(self.options),
                            "client": self.client, "helo": self.helo, "login": self.login,
                            "dsn_for": self.dsn_for})

    def received(self, size: int, arrived: float) -> Envelope:
        """This envelope with the message's size and arrival time, as it is written."""
        return Envelope(self.id, self.sender, self.recipients, arrived, size, self.options, self.client,
                        self.helo, self.login, self.dsn_for)

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        data = json.loads(raw)
        return cls(id=str(data["id"]), sender=str(data["sender"]),
                   recipients=tuple(str(r) for r in data["recipients"]),
                   arrived=float(data["arrived"]), size=int(data["size"]),
                   options=tuple(str(o) for o in data.get("options", ())),
                   client=str(data.get("client", "")), helo=str(data.get("helo", "")),
                   login=str(data.get("login", "")),
                   dsn_for=str(data.get("dsn_for", "")))

    @property
    def smtputf8(self) -> bool:
        return any(o.upper() == "SMTPUTF8" for o in self.options)


def _json_bytes(value: Any, indent: int | None = None) -> bytes:
    """A spool file's JSON. What a client or a backend sent that was not UTF-8 is held as
    surrogates (surrogateescape: a HELO name, a backend's answer); they go out as JSON's
    \\udcXX escapes, which read back as the same string. Encoded strictly, such a message was
    a 451 for ever, and such an answer left the state unsaved: the recipients delivered in
    that attempt were sent the message again on every retry."""
    return json.dumps(value, ensure_ascii=False, indent=indent).encode("utf-8", "backslashreplace")


@dataclass
class RecipientState:
    address: str
    status: Status = Status.PENDING
    code: int = 0                     # the last answer about this recipient
    enhanced: str = ""
    detail: str = ""                  # the backend's full answer (admin eyes only: never sent out)
    at: float = 0.0


@dataclass
class DeliveryState:
    recipients: list[RecipientState]
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float = 0.0
    dead_reason: str = ""
    # `frontfilter queue retry` asked for the next attempt: it tries every backend, even one
    # that failed a moment ago (backend.skip_failed_for is for the relay's own retries).
    retry_requested: bool = False
    version: int = STATE_VERSION

    @classmethod
    def initial(cls, envelope: Envelope) -> DeliveryState:
        return cls(recipients=[RecipientState(r) for r in envelope.recipients],
                   next_attempt=envelope.arrived)

    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.recipients) if r.status is Status.PENDING]

    def to_json(self) -> bytes:
        data = asdict(self)
        for recipient in data["recipients"]:
            recipient["status"] = recipient["status"].value
        return _json_bytes(data, indent=1) + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, envelope: Envelope) -> DeliveryState:
        data = json.loads(raw)
        recipients = [RecipientState(address=str(r["address"]), status=Status(r["status"]),
                                     code=int(r.get("code", 0)), enhanced=str(r.get("enhanced", "")),
                                     detail=str(r.get("detail", "")), at=float(r.get("at", 0)))
                      for r in data["recipients"]]
        if [r.address for r in recipients] != list(envelope.recipients):
            raise SpoolFormatError("state does not match the envelope's recipients")
        return cls(recipients=recipients, attempts=int(data.get("attempts", 0)),
                   next_attempt=float(data.get("next_attempt", 0)),
                   last_attempt=float(data.get("last_attempt", 0)),
                   dead_reason=str(data.get("dead_reason", "")),
                   retry_requested=bool(data.get("retry_requested", False)))


@dataclass(frozen=True)
class Layout:
    """The spool's directories. Made once each (a `Path` join is a parse: a few µs, a dozen
    times per message, 4 % of the relay's time in the bench profile before)."""

    root: Path

    @functools.cached_property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @functools.cached_property
    def queue(self) -> Path:
        return self.root / "queue"

    @functools.cached_property
    def dead(self) -> Path:
        return self.root / "deadletter"

    def msg(self, queue_id: str, dead: bool = False) -> Path:
        return (self.dead if dead else self.queue) / f"{queue_id}{MSG_SUFFIX}"

    def state(self, queue_id: str, dead: bool = False) -> Path:
        return (self.dead if dead else self.queue) / f"{queue_id}{STATE_SUFFIX}"

    def create(self) -> None:
        for directory in (self.root, self.tmp, self.queue, self.dead):
            safeio.ensure_dir(directory)


# ---- files (blocking: call from threads) ------------------------------------------------------

def write_message(layout: Layout, envelope: Envelope, data: MessageBytes, head: bytes = b"",
                  owner: tuple[int, int] | None = None) -> None:
    """Write a message durably and let go of it. `owner` (uid, gid): see safeio.write_atomically
    (a tool run as root, `frontfilter quarantine release`, leaves the file to the daemon's user)."""
    write_message_locked(layout, envelope, data, head, owner).close()


def write_message_locked(layout: Layout, envelope: Envelope, data: MessageBytes, head: bytes = b"",
                         owner: tuple[int, int] | None = None, spares: SpareFiles | None = None) -> Message:
    """Write a message durably; it comes back locked and in memory (close it to let go).

    `head`, header fields to go on top, is written before `data` (the file holds the whole
    message) but kept apart in memory, so a big message is never copied to join them.
    `spares`: written in one of them if there is one (delivery/spares.py)."""
    stat, lock = safeio.write_locked(layout.tmp, layout.msg(envelope.id), _file_chunks(envelope, data, head), owner,
                                     spares.take() if spares is not None else None)
    return Message.written(layout, envelope, data, lock, stat, head)


def begin_message(layout: Layout, envelope: Envelope, data: MessageBytes, head: bytes = b"",
                  spares: SpareFiles | None = None) -> safeio.Pending:
    """`write_message_locked`'s first half, the page cache only: a group commit finishes it."""
    pending = safeio.begin_write(layout.tmp, layout.msg(envelope.id), _file_chunks(envelope, data, head),
                                 spare=spares.take() if spares is not None else None)
    pending.new_name = True         # a new queue id: nothing there to replace
    return pending


def _file_chunks(envelope: Envelope, data: MessageBytes, head: bytes) -> tuple[safeio.Chunk, ...]:
    header = envelope.to_json()
    if len(header) > MAX_ENVELOPE_BYTES or b"\n" in header:
        raise SpoolFormatError("envelope too large")
    return (MAGIC, header, b"\n", head, data) if head else (MAGIC, header, b"\n", data)


def parse_envelope(head: bytes) -> tuple[Envelope, int]:
    """The envelope line at the start of a spool file (or of its first bytes), and where the
    message after it begins."""
    if not head.startswith(MAGIC):
        raise SpoolFormatError("not a frontfilter spool file (bad first line)")
    end = head.find(b"\n", len(MAGIC), len(MAGIC) + MAX_ENVELOPE_BYTES + 1)
    if end < 0:
        raise SpoolFormatError("envelope line missing or too long")
    try:
        return Envelope.from_json(head[len(MAGIC):end]), end + 1
    except (ValueError, KeyError, TypeError) as error:
        raise SpoolFormatError(f"envelope unreadable: {error}") from None


def read_state(layout: Layout, envelope: Envelope, dead: bool = False) -> DeliveryState:
    """A message's delivery state: its state file, or the initial state when it has none."""
    try:
        raw = layout.state(envelope.id, dead).read_bytes()
    except FileNotFoundError:
        return DeliveryState.initial(envelope)
    try:
        return DeliveryState.from_json(raw, envelope)
    except (ValueError, KeyError, TypeError) as error:
        raise SpoolFormatError(f"state unreadable: {error}") from None


def parse_message(raw: bytes) -> tuple[Envelope, bytes]:
    envelope, start = parse_envelope(raw)
    body = raw[start:]
    if len(body) != envelope.size:
        raise SpoolFormatError(f"message is {len(body)} bytes, the envelope says {envelope.size}")
    return envelope, body


class Message:
    """A spooled message, locked: read it, change its state, remove or dead-letter it."""

    def __init__(self, layout: Layout, queue_id: str, lock: safeio.LockedFile, dead: bool):
        self.layout = layout
        self.id = queue_id
        self.dead = dead
        self._lock = lock
        self.problem: str | None = None
        self.envelope: Envelope | None = None
        self.head = b""         # fields on top of `body`, kept apart when just written (see written)
        self.body: MessageBytes = b""
        self.state: DeliveryState | None = None
        stat = lock.stat()
        self._owner = (stat.st_uid, stat.st_gid)
        self.mtime = stat.st_mtime
        self.size = stat.st_size
        try:
            self.envelope, self.body = parse_message(lock.read_all())
            if self.envelope.id != queue_id:
                raise SpoolFormatError(f"file says it is {self.envelope.id}")
            self.state = read_state(self.layout, self.envelope, self.dead)
        except SpoolFormatError as error:
            self.problem = str(error)

    @classmethod
    def written(cls, layout: Layout, envelope: Envelope, body: MessageBytes, lock: safeio.LockedFile,
                stat: os.stat_result, head: bytes = b"") -> Message:
        """The message this process just wrote, still locked: nothing to read back, and no
        state file yet (nobody else could have written one: the lock was ours from the start)."""
        message = cls.__new__(cls)
        message.layout, message.id, message.dead, message._lock = layout, envelope.id, False, lock
        message.problem, message.envelope, message.head, message.body = None, envelope, head, body
        message.state = DeliveryState.initial(envelope)
        message._owner, message.mtime, message.size = (stat.st_uid, stat.st_gid), stat.st_mtime, stat.st_size
        return message

    def save(self, state: DeliveryState) -> os.stat_result:
        stat = safeio.write_atomically(self.layout.tmp, self.layout.state(self.id, self.dead),
                                       (state.to_json(),), owner=self._owner)
        self.state = state
        return stat

    def remove(self) -> None:
        """Delivered (or deleted): the message first, so a crash between leaves only an orphan
        state for recovery — never a message that would be delivered again."""
        safeio.unlink_durably(self.layout.msg(self.id, self.dead), self.layout.state(self.id, self.dead))

    def unlink(self) -> None:
        """`remove` without the directory fsync, for `remove_delivered` (one fsync for many)."""
        directory = os.fspath(self.layout.dead if self.dead else self.layout.queue)
        for name in (self.id + MSG_SUFFIX, self.id + STATE_SUFFIX):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass

    def retire(self, spare: Path) -> None:
        """`unlink` that keeps the file, renamed to `spare` in tmp/ and still open and locked:
        `remove_delivered` makes it a spare (delivery/spares.py) once the removal is durable,
        and takes the descriptor over (`close` no longer closes it)."""
        os.rename(self.layout.msg(self.id, self.dead), spare)
        try:
            os.unlink(self.layout.state(self.id, self.dead))
        except FileNotFoundError:
            pass

    def hand_over(self) -> int:
        """The locked descriptor, no longer this message's to close."""
        fd, self._lock = self._lock.fd, safeio.LockedFile(self._lock.path, -1)
        return fd

    def move_to_dead_letters(self) -> None:
        if self.dead:
            return
        os.rename(self.layout.msg(self.id), self.layout.msg(self.id, dead=True))
        safeio.fsync_dir(self.layout.dead)
        safeio.fsync_dir(self.layout.queue)
        try:
            os.rename(self.layout.state(self.id), self.layout.state(self.id, dead=True))
        except FileNotFoundError:
            pass
        else:
            safeio.fsync_dir(self.layout.dead)
            safeio.fsync_dir(self.layout.queue)
        self.dead = True

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_delivered(layout: Layout, messages: list[Message], spares: SpareFiles | None = None) -> list[OSError | None]:
    """Remove delivered messages together (`Message.remove`'s order for each), release their
    locks, then make the removals durable with one fsync of queue/ for the whole batch: under
    load the delivery worker finishes messages in bunches, and a directory fsync is a journal
    commit. Each message's error, if any, in order. A lock is released only after its
    message's name is gone: held until then, nobody else can deliver it again.

    With `spares`, as many files as it has room for are kept rather than removed: renamed into
    tmp/, still locked, and made spares once the directory fsync has made the removal durable."""
    errors: list[OSError | None] = []
    kept: list[tuple[int, Path]] = []
    for message in messages:
        spare = spares.claim() if spares is not None else None
        try:
            if spare is None:
                message.unlink()
            else:
                message.retire(spare)
                kept.append((message.hand_over(), spare))
            errors.append(None)
        except OSError as error:
            errors.append(error)
            if spares is not None and spare is not None:
                spares.unclaim()
        finally:
            message.close()
    durable = True
    if any(error is None for error in errors):
        try:
            safeio.fsync_dir(layout.queue)
        except OSError as error:
            errors = [e if e is not None else error for e in errors]
            durable = False
    for fd, path in kept:
        assert spares is not None
        if durable:
            spares.keep(fd, path)
        else:       # a crash could yet bring the message back under its name: not emptied
            spares.unclaim()
            os.close(fd)
    return errors


def open_message(layout: Layout, queue_id: str, wait: float = 0.0, dead: bool = False) -> Message:
    """Lock and read one message. Raises safeio.Gone or safeio.Busy."""
    lock = safeio.lock_file(layout.msg(queue_id, dead), wait=wait)
    try:
        return Message(layout, queue_id, lock, dead)
    except BaseException:
        lock.close()
        raise


# Which version of a `.state` file the worker last saw: its inode and its mtime. The inode alone
# is not enough: ext4 hands a freed inode straight back, so two rewrites between two scans (the
# queue tool run twice) can leave a new file with the very inode seen last.
StateStamp = tuple[int, int]
NO_STATE: StateStamp = (0, 0)


def state_stamp(stat: os.stat_result) -> StateStamp:
    return (stat.st_ino, stat.st_mtime_ns)


@dataclass(frozen=True)
class ScanItem:
    size: int            # bytes of the .msg file
    mtime: float         # when it was written (about the client's 250)
    state: StateStamp    # NO_STATE without a state file: tells a state replaced by someone else


def scan(layout: Layout) -> dict[str, ScanItem]:
    """Every complete message in queue/, from one directory read (and a stat per file)."""
    states: dict[str, StateStamp] = {}
    messages: dict[str, tuple[int, float]] = {}
    with os.scandir(layout.queue) as entries:
        for entry in entries:
            name, _, suffix = entry.name.rpartition(".")
            if suffix not in ("state", "msg"):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            if suffix == "state":
                states[name] = state_stamp(stat)
            else:
                messages[name] = (stat.st_size, stat.st_mtime)
    return {name: ScanItem(size, mtime, states.get(name, NO_STATE))
            for name, (size, mtime) in messages.items()}


def read_state_file(layout: Layout, queue_id: str) -> tuple[float, StateStamp] | None:
    """(next_attempt, stamp) from a state file without locking; None if absent or unreadable.
    Used by the scan only as a hint: the attempt itself re-reads under the lock."""
    path = layout.state(queue_id)
    try:
        with open(path, "rb") as handle:
            stamp = state_stamp(os.fstat(handle.fileno()))
            data = json.loads(handle.read())
        return float(data.get("next_attempt", 0)), stamp
    except (OSError, ValueError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class Recovery:
    messages: int
    temps_discarded: int
    orphan_states: int


def recover(layout: Layout) -> Recovery:
    """Start-up: drop what was never acknowledged (unlocked temporaries) and orphan states."""
    layout.create()
    temps = safeio.discard_stale_temps(layout.tmp)
    orphans = 0
    found = scan(layout)
    for entry in os.listdir(layout.queue):
        name, _, suffix = entry.rpartition(".")
        if suffix != "state" or name in found:
            continue
        # Another worker may have spooled this message after the scan above (server.workers):
        # look again before calling its state an orphan.
        if layout.msg(name).exists():
            continue
        orphans += 1
        try:
            if layout.msg(name, dead=True).exists():
                os.replace(layout.state(name), layout.state(name, dead=True))
            else:
                layout.state(name).unlink(missing_ok=True)
        except FileNotFoundError:      # moved or removed by another worker meanwhile
            pass
    if orphans:
        safeio.fsync_dir(layout.queue)
        safeio.fsync_dir(layout.dead)
    return Recovery(messages=len(found), temps_discarded=temps, orphan_states=orphans)


# ---- the asyncio face: admission and acknowledged writes -------------------------------------

class Admission(enum.Enum):
    OK = "ok"
    FULL = "full"          # a limit or the disk: answer 452 4.3.1
    FAILED = "failed"      # an I/O error: answer 451 4.3.0


@dataclass
class Spooled:
    result: Admission
    seconds: float = 0.0
    reason: str = ""
    message: Message | None = None     # what was written, locked, until `Spool.settle` hands it on


class _Full(Exception):
    pass


def _when_written(loop: asyncio.AbstractEventLoop, job: asyncio.Future[Spooled], written: Future[Spooled]) -> None:
    """In the spool thread, a large message's write over: if nobody will take the message (its
    future cancelled, or the event loop closed), its lock is let go and the worker finds it on
    a scan. On the loop, after `job` got its state (wrap_future's callback came first)."""
    try:
        loop.call_soon_threadsafe(_let_go_if_cancelled, job, written)
    except RuntimeError:                # the loop is closed: nobody answers for it
        _let_go_if_cancelled(None, written)


def _let_go_if_cancelled(job: asyncio.Future[Spooled] | None, written: Future[Spooled]) -> None:
    if (job is None or job.cancelled()) and not written.cancelled() and written.exception() is None:
        message = written.result().message
        if message is not None:
            message.close()


def _not_written(error: OSError, started: float) -> Spooled:
    if safeio.is_disk_full(error):
        return Spooled(Admission.FULL, time.monotonic() - started, "disk full")
    return Spooled(Admission.FAILED, time.monotonic() - started,
                   f"{type(error).__name__}: {error.strerror or error}")


@dataclass
class Reservation:
    """Room claimed for one message between the admission check and its write."""

    size: int
    force: bool = False
    settled: bool = False


@dataclass
class _Usage:
    sizes: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    reserved_count: int = 0
    reserved_bytes: int = 0


class Spool:
    """Admission control and durable writes for the acknowledge path; shared with the worker."""

    def __init__(self, config: SpoolConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self.layout = Layout(config.dir)
        self._clock = clock
        self._executor = ThreadPoolExecutor(SPOOL_IO_THREADS, thread_name_prefix="spool")
        self._commits = CommitProcess(self.layout.root, free_space=self._set_free_space)
        self._usage = _Usage()
        self._free: int | None = None     # bytes free on the spool's disk, last we looked
        # Delivered messages' files, kept to write the next ones in (the worker keeps them).
        self.spares = SpareFiles(self.layout.tmp)
        # Takes each message written here, locked and in memory (the delivery worker).
        self.on_spooled: Callable[[Message], None] | None = None
        # Waited for at MAIL, before a new message is taken on (the worker's Worker.in_flow).
        self.in_flow: Callable[[], Awaitable[None]] | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> Recovery:
        recovery: Recovery = await self.run(recover, self.layout)
        items: dict[str, ScanItem] = await self.run(scan, self.layout)
        self.set_contents({name: item.size for name, item in items.items()})
        await self.run(self.refresh_free_space)
        return recovery

    def start_committing(self) -> None:
        """On the event loop: start the commit process now rather than with the first small
        message (delivery/committer.py). OSError when it cannot start."""
        self._commits.start()

    def shutdown(self) -> None:
        self._commits.close()
        self._executor.shutdown(wait=True)
        self.spares.close()

    # ---- what is in the spool (kept by the worker's scans and by our own writes) ----

    @property
    def count(self) -> int:
        return len(self._usage.sizes)

    def set_contents(self, sizes: dict[str, int]) -> None:
        self._usage.sizes = dict(sizes)
        self._usage.bytes = sum(self._usage.sizes.values())

    def track(self, queue_id: str, size: int) -> None:
        self.forget(queue_id)
        self._usage.sizes[queue_id] = size
        self._usage.bytes += size

    def forget(self, queue_id: str) -> None:
        self._usage.bytes -= self._usage.sizes.pop(queue_id, 0)

    # ---- admission ----

    def admit(self, size: int = 0) -> Admission:
        """Cheap check (no I/O but a cached statvfs) for MAIL: is there room for `size` more?"""
        usage, config = self._usage, self.config
        if self.count + usage.reserved_count + 1 > config.max_messages:
            return Admission.FULL
        if usage.bytes + usage.reserved_bytes + size > config.max_size:
            return Admission.FULL
        # The free-space figure comes from the last write, group commit or scan: no statvfs
        # per MAIL. A large message's write checks it afresh; a small one's uses the last
        # group's figure (_write_grouped), written on the loop into the page cache, which is
        # why the spool wants a local disk (docs/spool.md).
        if self._short_of_space(self._free, usage.reserved_bytes + size):
            return Admission.FULL
        return Admission.OK

    def _short_of_space(self, free: int | None, needed: int) -> bool:
        """`needed` more bytes would leave less than `spool.min_free_space` free (None: not
        known yet, so not refused)."""
        return free is not None and free - needed < self.config.min_free_space

    def _set_free_space(self, free: int) -> None:
        self._free = free

    def refresh_free_space(self) -> None:
        """Blocking (statvfs): from the worker's scan thread and a large write (after each group
        commit the commit process reports the figure: _set_free_space)."""
        self._free = safeio.free_bytes(self.layout.root)

    def reserve(self, size: int, force: bool = False) -> Reservation | Admission:
        """On the event loop: claim room for a message of about `size` bytes, or say why not.
        Every reservation must be `settle`d, whether or not it was written.

        `force` skips the count and size limits (not the disk): for DSNs, which must not be
        lost because the spool is busy with the mail they report on."""
        if not force:
            admission = self.admit(size)
            if admission is not Admission.OK:
                return admission
        self._usage.reserved_count += 1
        self._usage.reserved_bytes += size
        return Reservation(size, force)

    def write(self, reservation: Reservation, envelope: Envelope, data: MessageBytes, head: bytes = b"") -> Spooled:
        """Blocking, in any thread: the durable write of `head` + `data`. Only `Admission.OK` may
        be answered 250, and only once `settle` has seen it."""
        started = time.monotonic()
        try:
            if not reservation.force:
                self.refresh_free_space()
                if self._short_of_space(self._free, len(head) + len(data)):
                    raise _Full()
            message = write_message_locked(self.layout, envelope, data, head, spares=self.spares)
        except _Full:
            return Spooled(Admission.FULL, time.monotonic() - started, "disk nearly full")
        except OSError as error:
            return _not_written(error, started)
        return Spooled(Admission.OK, time.monotonic() - started, message=message)

    def settle(self, reservation: Reservation, spooled: Spooled | None) -> None:
        """On the event loop, once the write is over (or was never made: `spooled` None): the
        room is given back, and a written message is counted and handed, still locked, to
        `on_spooled` (the delivery worker), which owns the lock from then on."""
        if reservation.settled:
            return
        reservation.settled = True
        self._usage.reserved_count -= 1
        self._usage.reserved_bytes -= reservation.size
        if spooled is None or spooled.message is None:
            return
        message, spooled.message = spooled.message, None
        assert message.envelope is not None
        self.track(message.id, message.size)
        if self.on_spooled is not None:
            self.on_spooled(message)
        else:
            message.close()

    def settle_when_done(self, reservation: Reservation, future: asyncio.Future[Any],
                         result: Callable[[Any], Spooled | None] = lambda spooled: spooled) -> None:
        """Settle when `future` (a job that calls `write`) ends, whatever became of the task
        that awaited it: a session cancelled mid-write must not leave its message locked and
        unknown to the worker. `result` picks the `Spooled` out of the job's result."""
        def done(job: asyncio.Future[Any]) -> None:
            value = None if job.cancelled() or job.exception() is not None else result(job.result())
            self.settle(reservation, value)
        future.add_done_callback(done)

    def write_soon(self, reservation: Reservation, envelope: Envelope, data: MessageBytes,
                   head: bytes = b"") -> asyncio.Future[Spooled]:
        """`write`, settled when it ends (whatever becomes of the caller): a small message
        through the group commit, a large one whole in a spool thread."""
        loop = asyncio.get_running_loop()
        # Not a message read through a mapping: its pages may have to come back from disk.
        if len(head) + len(data) <= GROUPED_WRITE_MAX and not isinstance(data, MappedText):
            job = self._write_grouped(reservation, envelope, data, head)
        else:
            try:
                written = self._executor.submit(self.write, reservation, envelope, data, head)
            except RuntimeError as error:       # shut down: this message is refused, not lost
                job = loop.create_future()
                job.set_result(Spooled(Admission.FAILED, 0.0, str(error)))
            else:
                job = asyncio.wrap_future(written, loop=loop)
                written.add_done_callback(functools.partial(_when_written, loop, job))
        self.settle_when_done(reservation, job)
        return job

    def _write_grouped(self, reservation: Reservation, envelope: Envelope, data: MessageBytes,
                       head: bytes) -> asyncio.Future[Spooled]:
        """`write` for a small message: written here into the page cache, made durable by the
        group commit. The free space is the figure of the last group (or scan), not a statvfs
        per message; a disk that fills up meanwhile still fails the write (ENOSPC: 452)."""
        started = time.monotonic()
        job: asyncio.Future[Spooled] = asyncio.get_running_loop().create_future()
        if not reservation.force and self._short_of_space(self._free, len(head) + len(data)):
            job.set_result(Spooled(Admission.FULL, 0.0, "disk nearly full"))
            return job
        try:
            pending = begin_message(self.layout, envelope, data, head, self.spares)
        except OSError as error:
            job.set_result(_not_written(error, started))
            return job
        except Exception as error:     # SpoolFormatError and the like: raised by the job, as `write` does
            job.set_exception(error)
            return job

        def committed(pending: safeio.Pending) -> None:
            if job.cancelled():       # nobody will answer for it: the worker finds it on a scan
                if pending.error is None:
                    pending.locked().close()
            elif pending.error is not None:
                job.set_result(_not_written(pending.error, started))
            else:
                job.set_result(Spooled(Admission.OK, time.monotonic() - started, message=Message.written(
                    self.layout, envelope, data, pending.locked(), pending.stat, head)))

        try:
            self._commits.submit(pending, committed)
        except RuntimeError as error:       # shut down: this message is refused, not lost
            pending.discard()
            job.set_result(Spooled(Admission.FAILED, time.monotonic() - started, str(error)))
        except OSError as error:            # the commit process could not be started
            pending.discard(error)
            job.set_result(_not_written(error, started))
        return job

    async def submit(self, envelope: Envelope, data: bytes, force: bool = False) -> Spooled:
        """Reserve, write in a spool thread, settle: for messages that are not inspected
        first (DSNs). Client mail is written once its verdict is in (pipeline/endofdata.py)."""
        reservation = self.reserve(len(data), force)
        if not isinstance(reservation, Reservation):
            return Spooled(reservation, reason="spool limits")
        spooled: Spooled = await asyncio.shield(self.write_soon(reservation, envelope, data))
        return spooled
