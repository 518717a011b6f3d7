"""frontfilter vs Postfix vs the direct limit: messages per second on loopback, in one run.

    make bench                 # the full run (several minutes), table to stdout and bench/results.json
    python bench/run.py --quick   # a tiny load, as `make test` runs it so the harness cannot rot

Load: Postfix's `smtp-source` (20 sessions) into `smtp-sink` (the backend for everyone), and
bench/pipeliner.py (20 sessions, EHLO, MAIL/RCPT/DATA pipelined as one group) for "5KB pipelined".
Contenders, each measured "until the backend has them all":
  limit        the load's client (smtp-source, or the pipeliner) straight into smtp-sink
  postfix      a throw-away Postfix (temp dir, loopback ports, queue with fsync, no filter)
  ff-queue     frontfilter with the shipped rules, queue mode, server.workers = --workers ("auto")
  ff-sync      frontfilter with the shipped rules, sync mode (before-queue proxy), the same workers
  ff-queue-nocache  ff-queue with inspection.type_cache = 0 (full runs only): each load repeats
               one message, so the cache types all but the first; this row asks libmagic for
               every part, as mail never seen before
  floor-queue, floor-sync  bench/floor.py: frontfilter's own SMTP session (SmtpSession, a
               handler that decides nothing) and its own backend client, relaying and doing nothing else
               (queue mode's fsynced file included), as many processes as frontfilter: the
               stack's own limit before any filtering
  ff-*-1p      the same as one process (full runs only), to show what the workers bring
Loads: 5 KB plain, 5 KB pipelined (a 5 KB message, five per connection, each transaction's
MAIL, RCPT and DATA in one write after EHLO, as Postfix's smtp client sends), 100 KB
with a PDF attachment, and a mix where some messages carry an attachment that is stripped
(.docm) or rejected (.exe) — rejected ones never reach the sink, so the mix counts messages
*decided* per second.

Reported: msgs/s (median of --runs), ratios to Postfix and to the limit, CPU seconds per 1,000
messages (the relay's whole process tree), peak RSS of frontfilter, and added latency
(p50/p99 of sequential sends through the relay minus straight into the sink). Every process
this starts is stopped; nothing binds port 25.

Then, each contender (postfix, ff-queue) started afresh for it (issue 26):
  large messages  a 25 MB message (--large-mib) sent LARGE_SENDS times, one after the other: an
               attachment of random bytes, and a real zip of a PDF and random bytes; the peak RSS
               growth of the worker that grew most ÷ the message's size
  a crowd      5,000 sessions (--crowd) from 127.1.0.1 and up, CROWD_PER_ADDRESS per address,
               most idle after EHLO, CROWD_SLOW of them sending DATA at 1 KB/s (bench/crowd.py),
               held open while the 20-session 5 KB load runs: its rate beside the crowd ÷ alone,
               the p99 of a probe client beside it, and the relay's memory (sum of RSS and PSS)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from frontfilter.config import parse_workers  # noqa: E402  (what "auto" means to frontfilter)
from tests.content import corpus  # noqa: E402  (payload builders shared with the tests)

SESSIONS = 20
# Sequential sends per latency figure: a p99 of 300 was its 3rd-worst send, and moved 2-5x from
# run to run (Postfix: 2.96 to 16.54 ms); of 1,000 it is the 10th.
LATENCY_SENDS = 1000
PIPELINED_PER_CONNECTION = 5  # messages per connection of the pipelined load: an MTA reuses a session
# One RCPT per group, as smtp-source's loads have: the 5 KB columns then differ only in how the
# client talks. A second recipient costs Postfix more than frontfilter (its queue file and queue
# manager work per recipient), so it would tilt the ratio; `pipeliner.py --to A --to B` measures it.
PIPELINED_RECIPIENTS = ("user@example.org",)
WAIT_LIMIT = 300.0           # seconds: a contender slower than this is reported as failed
SURPLUS_WAIT = 0.2           # seconds, untimed, after a load's last message arrived: time for a
                             # message delivered twice (or split per recipient) to show as surplus
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the backend --------------------------------------------------------------------------

class Sink:
    """smtp-sink with its running counter read from stdout ("... mesg=N\\r")."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pattern = re.compile(rb"mesg=(\d+)")
        buffer = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buffer = (buffer + chunk)[-256:]
            found = pattern.findall(buffer)
            if found:
                self.count = int(found[-1])

    def wait_for(self, count: int, limit: float = WAIT_LIMIT) -> bool:
        deadline = time.monotonic() + limit
        while self.count < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def wait_port(port: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# ---- contenders ---------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    port: int
    pids: Callable[[], list[int]] = lambda: []
    stop: Callable[[], None] = lambda: None
    rss_pid: int | None = None
    filters: bool = True        # False: relays what frontfilter refuses too, so the sink gets it all


@contextmanager
def direct(sink: Sink) -> Iterator[Contender]:
    yield Contender("limit", sink.port, filters=False)


@contextmanager
def postfix(sink: Sink, workdir: Path, extra: str = "") -> Iterator[Contender]:
    """A throw-away Postfix (its own directories under `workdir`, which its processes must be
    able to reach; loopback ports; its log in `workdir`/postfix/maillog) relaying to `sink`.
    `extra`: more main.cf lines (the tests add XFORWARD trust)."""
    base = workdir / "postfix"
    for sub in ("etc", "spool", "data"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    shutil.chown(base / "data", "postfix")
    port = free_port()
    (base / "etc" / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localdomain
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = example.org
relayhost = [127.0.0.1]:{sink.port}
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
alias_maps =
alias_database =
local_recipient_maps =
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
""" + extra)
    master = Path("/etc/postfix/master.cf").read_text()
    master = re.sub(r"(?m)^smtp\s+inet.*$", f"127.0.0.1:{port} inet n - y - - smtpd", master)
    (base / "etc" / "master.cf").write_text(master)
    os.chmod(workdir, 0o755)      # postfix's own processes must reach their data directory
    checked = subprocess.run(["postfix", "-c", str(base / "etc"), "check"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"postfix check failed: {checked.stderr.strip()}")
    proc = subprocess.Popen(["postfix", "-c", str(base / "etc"), "start-fg"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield Contender("postfix", port, pids=lambda: tree(proc.pid), filters=False)
    finally:
        subprocess.run(["postfix", "-c", str(base / "etc"), "stop"], capture_output=True)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def frontfilter(sink: Sink, workdir: Path, mode: str, rules: Path = REPO / "rules",
                label: str | None = None, workers: int | str = 1,
                backend_extra: str = "", type_cache: int | None = None,
                trusted: str = "127.0.0.0/8", extra: str = "") -> Iterator[Contender]:
    """`trusted`: the relay's trusted network (the load clients are in it, as in Postfix's
    mynetworks); `extra`: more config tables (the crowd's [limits])."""
    port = free_port()
    name = label or f"ff-{mode}"
    directory = workdir / re.sub(r"[^\w.-]+", "-", name)
    directory.mkdir(exist_ok=True)
    config = directory / "frontfilter.toml"
    config.write_text(f"""
[server]
hostname = "bench.localdomain"
listen = ["127.0.0.1:{port}"]
max_message_size = "64MiB"
workers = {json.dumps(workers)}
[relay]
domains = ["example.org"]
trusted_networks = ["{trusted}"]   # like Postfix's mynetworks above: the load client is exempt
                                     # from per-IP connection limits, as Postfix exempts it
[backend]
servers = ["127.0.0.1:{sink.port}"]
mode = "{mode}"
{backend_extra}
[spool]
dir = "spool"
[rules]
dir = "{rules}"
watch = false
[log]
format = "json"
""" + ("" if type_cache is None else f"[inspection]\ntype_cache = {type_cache}\n") + extra)
    log = (directory / "relay.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_port(port)
        yield Contender(name, port, pids=lambda: tree(proc.pid), rss_pid=proc.pid)
    finally:
        terminate(proc)
        log.close()


@contextmanager
def floor(sink: Sink, workdir: Path, mode: str, workers: int) -> Iterator[Contender]:
    """bench/floor.py: frontfilter's SMTP session and its backend client, relaying and doing nothing else."""
    port = free_port()
    directory = workdir / f"floor-{mode}"
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor.py"), "--port", str(port),
                             "--backend", str(sink.port), "--mode", mode, "--spool", str(directory),
                             "--workers", str(workers)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield Contender(f"floor-{mode}", port, pids=lambda: tree(proc.pid), filters=False)
    finally:
        terminate(proc)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a relay's graceful stop), and SIGKILL if it has not ended after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ---- process accounting -------------------------------------------------------------------

def tree(root: int) -> list[int]:
    """root and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    result, todo = [], [root]
    while todo:
        pid = todo.pop()
        result.append(pid)
        todo.extend(children.get(pid, []))
    return result


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of each process, plus what its reaped children used (cutime+cstime)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_mib(pid: int | None, field_name: str) -> float | None:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in MiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """The sum of VmRSS, and of PSS, over `pids`, in MiB. RSS counts a page shared by several
    processes (libraries, the workers' pages inherited from the supervisor at fork) in each;
    PSS divides it among them, so the sum of PSS is what the processes take together."""
    rss = pss = 0.0
    for pid in pids:
        rss += rss_mib(pid, "VmRSS") or 0.0
        try:
            found = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        except OSError:
            continue
        pss += int(found[1]) / 1024 if found else 0.0
    return rss, pss


# ---- loads --------------------------------------------------------------------------------

class Sender(Enum):
    """The client that offers a stream's mail."""
    SMTP_SOURCE = "smtp-source"   # Postfix's load tool: HELO, one reply awaited per command
    SMTPLIB = "smtplib"           # Python threads that take a 5xx as an answer: mail to be refused
    PIPELINER = "pipeliner"       # bench/pipeliner.py: EHLO, MAIL/RCPT/DATA in one write (RFC 2920)


@dataclass
class Stream:
    """`count` messages over `sessions` concurrent sessions: smtp-source's own 5 KB text (no
    files), or the message files taken in turn by each session (so each session alternates
    between them). `sender` says which client sends them."""
    sessions: int
    count: int
    files: tuple[Path, ...] = ()
    sender: Sender = Sender.SMTP_SOURCE

    def plan(self) -> list[list[Path]]:
        """The files each session sends, in order."""
        share, extra = divmod(self.count, self.sessions)
        return [[self.files[(session + i) % len(self.files)] for i in range(share + (session < extra))]
                for session in range(self.sessions)]

    @property
    def delivered(self) -> int:
        if not self.files:
            return self.count
        return sum(not refused(path) for session in self.plan() for path in session)


def refused(path: Path) -> bool:
    """Message files the shipped rules refuse are named so."""
    return "reject" in path.name


@dataclass
class Load:
    name: str
    streams: list[Stream]
    size: int = 5 * 1024                         # of smtp-source's generated messages

    @property
    def total(self) -> int:
        return sum(stream.count for stream in self.streams)

    @property
    def delivered(self) -> int:
        return sum(stream.delivered for stream in self.streams)


def make_loads(workdir: Path, scale: float) -> list[Load]:
    def n(count: int) -> int:
        return max(20, int(count * scale))

    def write(name: str, data: bytes) -> Path:
        path = workdir / name
        # smtp-source -F sends the file line by line and adds CRLF itself: store bare LF
        path.write_bytes(data.replace(b"\r\n", b"\n"))
        return path

    pdf = corpus.pdf() + b"%" + os.urandom(70 * 1024).hex().encode()[: 95 * 1024] + b"\n"
    with_pdf = write("pdf-100k.eml", corpus.message(corpus.attachment(pdf, "application/pdf", "report.pdf")))
    docm = write("strip-docm.eml", corpus.message(corpus.attachment(
        corpus.docx(macros=True), "application/vnd.ms-word.document.macroEnabled.12", "budget.docm")))
    exe = write("reject-exe.eml", corpus.message(corpus.attachment(corpus.pe(), "image/jpeg", "photo.jpg")))
    plain = write("plain-5k.eml", corpus.hand("From: bench@example.net\nTo: user@example.org\nSubject: bench\n",
                                              ("lorem ipsum dolor sit amet " * 3 + "\n") * 60))
    return [
        Load("5KB plain", [Stream(SESSIONS, n(5000))]),
        Load("5KB pipelined", [Stream(SESSIONS, n(5000), (plain,), Sender.PIPELINER)]),
        Load("100KB + PDF", [Stream(SESSIONS, n(2000), (with_pdf,))]),
        # The refused messages travel between accepted ones, as in a real relay's sessions: a
        # session of nothing but refusals is a spam run and gets the tarpit (Postfix's too).
        Load("mix", [Stream(14, n(2100), (plain,)), Stream(6, 2 * n(450), (docm, exe), Sender.SMTPLIB)]),
    ]


class Source:
    """smtp-source sending one stream. It exits at the first reply it did not expect, so a
    relay's 4xx/5xx ends the run: that is reported, not hidden."""

    def __init__(self, stream: Stream, size: int, port: int) -> None:
        command = ["smtp-source", "-s", str(stream.sessions), "-m", str(stream.count),
                   "-f", "bench@example.net", "-t", "user@example.org"]
        command += ["-F", str(stream.files[0])] if stream.files else ["-l", str(size)]
        self.command = command + [f"127.0.0.1:{port}"]

    def start(self) -> None:
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.errors)

    def wait(self, timeout: float) -> str | None:
        """None, or what went wrong."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"smtp-source still sending after {timeout:.0f} s"
        self.errors.seek(0)
        said = self.errors.read().decode(errors="replace").strip().splitlines()
        self.errors.close()
        return f"smtp-source exit {code}: {said[-1] if said else ''}" if code else None


class Refusable:
    """A stream with messages to be refused, sent from threads (one per session): smtp-source
    gives up at the first refusal (to it a fatal error), so it cannot offer mail that a filter
    rejects. A 5xx after DATA to a message meant to be refused is an answer; anything else is a
    failure of the run."""

    def __init__(self, stream: Stream, port: int) -> None:
        self.problems: list[str] = []
        self.threads = [threading.Thread(target=self._session, args=(port, files), daemon=True)
                        for files in stream.plan()]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _session(self, port: int, files: list[Path]) -> None:
        data = {path: path.read_bytes().replace(b"\n", b"\r\n") for path in set(files)}
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                for path in files:
                    try:
                        client.sendmail("bench@example.net", ["user@example.org"], data[path])
                    except smtplib.SMTPDataError as refusal:
                        if refusal.smtp_code < 500 or not refused(path):
                            raise
        except (OSError, smtplib.SMTPException) as error:
            self.problems.append(f"{type(error).__name__}: {error}")

    def wait(self, timeout: float) -> str | None:
        """None, or what went wrong."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self.threads):
            return f"still sending after {timeout:.0f} s"
        return self.problems[0] if self.problems else None


class Pipelined:
    """bench/pipeliner.py sending one stream, in a process of its own like smtp-source (not a
    thread of this interpreter, whose GIL the sink's reader holds). It is started when made and
    waits, prepared, for `start`: the interpreter's start-up is not timed. It exits at the first
    reply it did not expect, and says which; it must also report every message taken (250
    after the terminator), or the run fails."""

    def __init__(self, stream: Stream, port: int) -> None:
        (message,) = stream.files
        if stream.delivered != stream.count:
            raise ValueError("the pipelined load sends only mail to be taken: a refusal stops it")
        self.expected = stream.count
        command = [sys.executable, str(REPO / "bench" / "pipeliner.py"), "--wait-for-go",
                   "--port", str(port), "--sessions", str(stream.sessions),
                   "--messages", str(stream.count), "--per-connection", str(PIPELINED_PER_CONNECTION),
                   "--from", "bench@example.net"]
        command += [arg for rcpt in PIPELINED_RECIPIENTS for arg in ("--to", rcpt)]
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command + [str(message)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errors)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.ready = self.proc.stdout.readline().strip() == b"ready"

    def start(self) -> None:
        assert self.proc.stdin is not None
        try:
            if self.ready:
                self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()      # not ready: it has exited, and says why on stderr
        except BrokenPipeError:
            pass                         # it has exited since: `wait` reports why

    def wait(self, timeout: float) -> str | None:
        """None, or what went wrong."""
        assert self.proc.stdout is not None
        try:
            self.proc.wait(timeout)          # it writes one short line: the pipe cannot fill
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"pipeliner still sending after {timeout:.0f} s"
        finally:
            out = self.proc.stdout.read()
            self.proc.stdout.close()
        self.errors.seek(0)
        said = self.errors.read().decode(errors="replace").strip().splitlines()
        self.errors.close()
        if self.proc.returncode:
            return f"pipeliner exit {self.proc.returncode}: {said[-1] if said else ''}"
        accepted = re.search(rb"accepted=(\d+)", out)
        if not accepted or int(accepted[1]) != self.expected:
            return f"pipeliner: {accepted[1].decode() if accepted else 'no count'} of {self.expected} messages taken"
        return None


def offer(load: Load, port: int) -> list[Source | Refusable | Pipelined]:
    """The load's senders, prepared but not yet sending: `start` each when the clock runs."""
    senders: list[Source | Refusable | Pipelined] = []
    for stream in load.streams:
        if stream.sender is Sender.SMTP_SOURCE:
            if stream.delivered != stream.count:
                raise ValueError("smtp-source stops at the first refusal: send mail to be refused with Sender.SMTPLIB")
            senders.append(Source(stream, load.size, port))
        elif stream.sender is Sender.SMTPLIB:
            senders.append(Refusable(stream, port))
        else:
            senders.append(Pipelined(stream, port))
    return senders


@dataclass
class Result:
    contender: str
    load: str
    rates: list[float] = field(default_factory=list)
    cpu_per_1000: list[float] = field(default_factory=list)
    rss_mib: float | None = None
    worker_peak_mib: float | None = None    # the first load, first run: its worker's VmHWM
    failed: str | None = None

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_per_1000) if self.cpu_per_1000 else 0.0


def measure_once(contender: Contender, sink: Sink, load: Load, result: Result) -> None:
    """One run of `load` through `contender`, added to `result` (or its failure recorded)."""
    senders = offer(load, contender.port)
    # A contender that does not filter relays the mix's refused messages too: waiting for them
    # keeps them from arriving during the next measurement.
    arriving = load.delivered if contender.filters else load.total
    expected = sink.count + arriving
    cpu_before = cpu_seconds(contender.pids())
    started = time.monotonic()
    for sender in senders:
        sender.start()
    problems = [problem for sender in senders if (problem := sender.wait(WAIT_LIMIT)) is not None]
    if problems:
        result.failed = problems[0]
        return
    if not sink.wait_for(expected):
        result.failed = f"only {sink.count - (expected - arriving)} of {arriving} arrived"
        return
    elapsed = time.monotonic() - started
    used = cpu_seconds(contender.pids()) - cpu_before
    time.sleep(SURPLUS_WAIT)
    if sink.count > expected:              # the rate would count half-done work: not a result
        result.failed = (f"the sink got {sink.count - expected} more than the {arriving} expected "
                         "(a message delivered twice, or split per recipient)")
        return
    result.rates.append(load.total / elapsed)
    if contender.name != "limit":
        result.cpu_per_1000.append(used * 1000 / load.total)


def interleaved(contenders: list[Contender], sink: Sink, loads: list[Load], runs: int) -> list[Result]:
    """Every contender on every load once per run, the contenders' order rotating from run to
    run: a machine that speeds up or slows down during the bench (shared, virtualised) weighs
    on all of them alike, so the ratios stay honest. All contenders run throughout, idle but
    for their turn. Results by contender, then load."""
    results = {(c.name, load.name): Result(c.name, load.name) for c in contenders for load in loads}
    for run in range(runs if contenders else 0):
        turn = run % len(contenders)
        for load in loads:
            for contender in contenders[turn:] + contenders[:turn]:
                result = results[(contender.name, load.name)]
                if result.failed is None:
                    measure_once(contender, sink, load, result)
                if run == 0 and load is loads[0] and contender.rss_pid is not None:
                    result.worker_peak_mib = worker_peak(contender)
    for contender in contenders:     # the relay: every process of it (the workers' peaks summed)
        if contender.rss_pid is not None:
            peak = sum(rss_mib(pid, "VmHWM") or 0.0 for pid in contender.pids())
            for load in loads:
                results[(contender.name, load.name)].rss_mib = peak
    return list(results.values())


def worker_peak(contender: Contender) -> float:
    """The highest VmHWM of the relay's workers (of the relay itself when it runs as one
    process): after the first load of the first run, a worker's peak under that load alone,
    issue 26's "peak RSS per worker under the 20-session 5 KB load"."""
    workers = [pid for pid in contender.pids() if pid != contender.rss_pid] or [contender.rss_pid]
    return max((rss_mib(pid, "VmHWM") or 0.0 for pid in workers if pid is not None), default=0.0)


LATENCY_BODY = b"Subject: latency\r\n\r\n" + (b"x" * 70 + b"\r\n") * 70   # 5 KB


def send_times(port: int, count: int) -> list[float]:
    """Milliseconds per sendmail of `count` sequential 5 KB messages on one connection, sorted."""
    values = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.sendmail("bench@example.net", ["user@example.org"], LATENCY_BODY)
            values.append((time.perf_counter() - started) * 1000)
    return sorted(values)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))]


@dataclass
class Paced:
    sent: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


@contextmanager
def paced_load(port: int, rate: float, workdir: Path, clients: int = 8) -> Iterator[Paced]:
    """Background 5 KB mail at about `rate` msgs/s from `clients` connections, for as long as
    the block runs: bench/paced.py, in a process of its own so that its clients do not share
    the measuring client's GIL. What it sent is filled in when the block ends; a client that
    got an answer it did not expect fails the measurement with that answer."""
    message = workdir / "latency.eml"
    message.write_bytes(LATENCY_BODY)
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "paced.py"), "--port", str(port),
                             "--rate", str(rate), "--clients", str(clients), str(message)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    paced = Paced()
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the paced load did not start: exit status {proc.wait(30)}")
        yield paced
    finally:
        try:
            proc.stdin.write("stop\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        lines = proc.stdout.read().split("\n")
        status = proc.wait(60)
    counts = dict(pair.split("=") for pair in lines[0].split()) if lines and lines[0].startswith("sent=") else {}
    paced.sent, paced.seconds = int(counts.get("sent", 0)), float(counts.get("seconds", 0))
    if status != 0:
        raise RuntimeError(f"the paced load: {' '.join(lines).strip() or f'exit status {status}'}")


def added_latency(relay_port: int, sink_port: int, count: int, load_rate: float | None,
                  workdir: Path) -> dict[str, float]:
    """p50/p99 ms of sequential 5 KB sends through the relay minus straight into the sink: on an
    idle relay, and (with `load_rate`) while background mail arrives at that rate."""
    direct = send_times(sink_port, count)
    idle = send_times(relay_port, count)
    result = {"idle_p50": pct(idle, 0.50) - pct(direct, 0.50), "idle_p99": pct(idle, 0.99) - pct(direct, 0.99)}
    if load_rate:
        with paced_load(relay_port, load_rate, workdir) as paced:
            loaded = send_times(relay_port, count)
        result |= {"load_rate": paced.rate, "loaded_p50": pct(loaded, 0.50) - pct(direct, 0.50),
                   "loaded_p99": pct(loaded, 0.99) - pct(direct, 0.99)}
    return result


# ---- scaling ------------------------------------------------------------------------------

def rule_sets(workdir: Path, extra_rules: int, list_entries: int) -> dict[str, Path]:
    """The shipped rules alone, plus `extra_rules` rules, plus one rule on a list of `list_entries`.

    The added rules never fire on bench mail, so each set does the same work apart from
    evaluating them: the throughput change is the price of the rules themselves."""
    def ruleset(name: str, extra: str, lists: dict[str, str] | None = None) -> Path:
        directory = workdir / "rulesets" / name
        directory.mkdir(parents=True, exist_ok=True)
        for shipped in (REPO / "rules").glob("*.toml"):
            shutil.copy(shipped, directory)
        (directory / "90-bench.toml").write_text(extra)
        for list_name, text in (lists or {}).items():
            (directory / "lists").mkdir(exist_ok=True)
            (directory / "lists" / list_name).write_text(text)
        return directory

    stages = [
        ('stage = "mail"', 'sender.domain = "spam{i}.example"'),
        ('stage = "rcpt"', 'recipient.address = "nobody{i}@example.org"'),
        ('stage = "data"', 'subject = "*lottery winner {i}*"'),
        ('stage = "data"', 'header.X-Mailer = {{ regex = "bulkmailer-{i}[.]" }}'),
        ('stage = "data"', 'attachment.filename = "*.bench{i}"'),
    ]
    many = "".join(
        f'[[rule]]\nname = "bench-{i}"\n{stages[i % len(stages)][0]}\n'
        f'{stages[i % len(stages)][1].format(i=i)}\naction = "reject"\n\n'
        for i in range(extra_rules))
    listed = "".join(f"sender{i}@blocked{i % 997}.example\n" for i in range(list_entries))
    one_list = ('[[rule]]\nname = "bench-list"\nstage = "mail"\n'
                'sender.address = "@lists/blocked.txt"\naction = "reject"\n')
    shipped_count = sum(path.read_text().count("[[rule]]") for path in (REPO / "rules").glob("*.toml"))
    return {
        f"{shipped_count} rules (shipped)": ruleset("shipped", ""),
        f"{shipped_count + extra_rules} rules": ruleset("many", many),
        f"{shipped_count + 1} rules, {list_entries:,}-entry list": ruleset("list", one_list,
                                                                          {"blocked.txt": listed}),
    }


# ---- large messages -----------------------------------------------------------------------

LARGE_SENDS = 2          # each large message is sent this many times, one after the other
# Postfix's one default changed for them: its message_size_limit is 10,240,000 bytes (a 25 MB
# message gets 552 5.3.4); frontfilter's bench config allows 64 MiB, so Postfix does too.
LARGE_POSTFIX = "message_size_limit = 67108864\n"


def large_messages(size_mib: int) -> dict[str, bytes]:
    """Two messages of about `size_mib` MiB on the wire: random bytes as an attachment (decoded,
    typed and spooled like any large attachment), and a real zip of a PDF and random bytes
    (stored: random data does not deflate), which inspection opens with libarchive."""
    raw = os.urandom(size_mib * 1024 * 1024 * 3 // 4)
    octets = corpus.message(corpus.attachment(raw, "application/octet-stream", "data.bin"))
    archive = corpus.zip_of({"report.pdf": corpus.pdf(), "data.bin": raw[: len(raw) - 4096]})
    zipped = corpus.message(corpus.attachment(archive, "application/zip", "data.zip"))
    return {"octet-stream": octets, "zip": zipped}


class PeakSampler:
    """The highest VmHWM each process of a contender reached, read every SAMPLE_EVERY while the
    block runs: Postfix's smtpd and cleanup come and go, so their peaks are taken while they live."""

    SAMPLE_EVERY = 0.05

    def __init__(self, contender: Contender) -> None:
        self.contender = contender
        self.peaks: dict[int, float] = {}                 # pid -> MiB
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        for pid in self.contender.pids():
            peak = rss_mib(pid, "VmHWM")
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))

    def __enter__(self) -> "PeakSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()


def measure_large(contender: Contender, sink: Sink, message: bytes) -> dict[str, float | str]:
    """`message` sent LARGE_SENDS times, one after the other, through `contender`; the seconds
    each took until it reached the sink, and memory. For frontfilter:
    the RSS of each process when idle and the highest VmHWM after, so the growth of the worker
    that grew most over its own idle RSS, divided by the message's size (issue 26's target:
    below 1.5). For Postfix the largest peak of any one of its processes (smtpd, cleanup...
    start fresh for a session, so they have no idle size)."""
    time.sleep(1.0)                                   # let start-up allocation settle
    idle = {pid: rss_mib(pid, "VmRSS") or 0.0 for pid in contender.pids()}
    got: dict[str, float | str] = {}
    seconds: list[float] = []
    with PeakSampler(contender) as sampler:
        for _ in range(LARGE_SENDS):
            before = sink.count
            started = time.monotonic()
            try:
                with smtplib.SMTP("127.0.0.1", contender.port, timeout=120) as client:
                    client.sendmail("bench@example.net", ["user@example.org"], message)
            except (OSError, smtplib.SMTPException) as error:
                return {"failed": f"{type(error).__name__}: {error}"}
            if not sink.wait_for(before + 1, limit=120):
                return {"failed": "the message did not reach the sink in 120 s"}
            seconds.append(time.monotonic() - started)
    size = len(message) / (1024 * 1024)
    got |= {"message_mib": size, "seconds_per_message": statistics.median(seconds)}
    if contender.rss_pid is not None:                 # frontfilter: growth over idle, per process
        growth = {pid: sampler.peaks.get(pid, 0.0) - idle.get(pid, 0.0) for pid in sampler.peaks}
        worst = max(growth, key=growth.__getitem__)
        got |= {"idle_mib": idle.get(worst, 0.0), "peak_mib": sampler.peaks[worst],
                "growth_mib": growth[worst], "growth_per_size": growth[worst] / size,
                "peak_all_mib": sum(sampler.peaks.values())}
    else:
        got |= {"peak_mib": max(sampler.peaks.values(), default=0.0),
                "peak_all_mib": sum(sampler.peaks.values())}
    return got


# ---- a crowd ------------------------------------------------------------------------------

CROWD_PER_ADDRESS = 10      # sessions per source address: half the relay's per-address limit
CROWD_SLOW = 0.05           # share of the crowd sending DATA slowly (bench/crowd.py)
CROWD_WAIT = 60.0           # seconds for the 20-session load beside the crowd: a relay the crowd
                            # has stopped is reported as such, not waited for WAIT_LIMIT
CROWD_FREE_TRUSTED = "127.0.0.1/32"   # the load and probe come from here; the crowd does not


class Crowd:
    """bench/crowd.py in a process of its own: up when made, closed by `close`."""

    def __init__(self, port: int, sessions: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "crowd.py"), "--port", str(port), "--sessions", str(sessions),
             "--per-address", str(CROWD_PER_ADDRESS), "--slow", str(CROWD_SLOW)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.ready = dict(re.findall(r"(\w+)=(\d+)", self.proc.stdout.readline().decode()))

    def close(self) -> dict[str, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        said = self.proc.stdout.read().decode()
        self.proc.wait(60)
        return dict(re.findall(r"(\w+)=(\d+)", said))


def probed_load(contender: Contender, sink: Sink, count: int) -> dict[str, float | str]:
    """smtp-source's 20-session 5 KB load of `count` messages, and beside it one client sending
    5 KB messages one after the other on one connection for as long as the load runs: msgs/s of
    the load (timed until the sink has its messages and the probe's), p50/p99 ms of the probe."""
    source = Source(Stream(SESSIONS, count), 5 * 1024, contender.port)
    times: list[float] = []
    problems: list[str] = []
    done = threading.Event()

    def probe() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", contender.port, timeout=60) as client:
                while not done.is_set():
                    started = time.perf_counter()
                    client.sendmail("bench@example.net", ["user@example.org"], LATENCY_BODY)
                    times.append((time.perf_counter() - started) * 1000)
        except (OSError, smtplib.SMTPException) as error:
            problems.append(f"probe: {type(error).__name__}: {error}")

    before = sink.count
    cpu_before = cpu_seconds(contender.pids())
    started = time.monotonic()
    source.start()
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    problem = source.wait(CROWD_WAIT)
    done.set()
    prober.join(60)
    if problem:
        return {"failed": problem}
    if not sink.wait_for(before + count + len(times), limit=CROWD_WAIT):
        return {"failed": f"only {sink.count - before} of {count + len(times)} arrived"}
    elapsed = time.monotonic() - started
    used = cpu_seconds(contender.pids()) - cpu_before
    if problems or not times:
        return {"failed": problems[0] if problems else "the probe sent nothing"}
    times.sort()
    return {"rate": count / elapsed, "p50": pct(times, 0.50), "p99": pct(times, 0.99), "probes": len(times),
            "cpu_ms": used * 1000 / (count + len(times)), "seconds": elapsed}


def measure_crowd(contender: Contender, sink: Sink, sessions: int, count: int, runs: int) -> dict[str, float | str]:
    """`runs` pairs: the 20-session load alone, then with `sessions` held open beside it
    (bench/crowd.py, up before the load starts, closed after it). Reported: the medians of each
    pair's rate with ÷ without the crowd, of the probe's p99 with − without, of each figure;
    what the crowd held; and the relay's memory (the sums of VmRSS and PSS over its processes:
    before the first crowd, with it up, as the load beside it ends: the largest of the runs). A
    contender that fails beside the crowd is not given more runs."""
    pairs: list[tuple[dict[str, float | str], dict[str, float | str]]] = []
    got: dict[str, float | str] = {"sessions": sessions}
    memory: dict[str, float] = {}
    for _ in range(runs):
        alone = probed_load(contender, sink, count)
        if "failed" in alone:
            return got | {"failed": f"without the crowd: {alone['failed']}"}
        readings = {"before": memory_mib(contender.pids())}
        crowd = Crowd(contender.port, sessions)
        try:
            readings["crowd"] = memory_mib(contender.pids())
            crowd_cpu = cpu_seconds([crowd.proc.pid])
            beside = probed_load(contender, sink, count)
            crowd_cpu = cpu_seconds([crowd.proc.pid]) - crowd_cpu
            readings["load"] = memory_mib(contender.pids())
        finally:
            ended = crowd.close()
        for when, (rss, pss) in readings.items():
            if when == "before" and memory:
                continue          # a later run's "before" holds what the first crowd left behind
            memory[f"rss_{when}_mib"] = max(rss, memory.get(f"rss_{when}_mib", 0.0))
            memory[f"pss_{when}_mib"] = max(pss, memory.get(f"pss_{when}_mib", 0.0))
        got |= memory | {
            "opened": float(min(int(crowd.ready.get("opened", 0)), int(got.get("opened", sessions)))),
            "held_at_end": float(min(int(ended.get("held", 0)), int(got.get("held_at_end", sessions)))),
            "processes": float(len(contender.pids())),
            "peak_one_mib": max((rss_mib(pid, "VmHWM") or 0.0 for pid in contender.pids()), default=0.0),
            "rate_alone": float(alone["rate"]), "p99_alone": float(alone["p99"])}
        if "failed" in beside:
            return got | {"failed": f"beside the crowd: {beside['failed']}"}
        # the crowd's own client, on the same two cores: its share of one core during the load
        beside["crowd_client_cpu"] = crowd_cpu / float(beside["seconds"])
        pairs.append((alone, beside))

    def median(key: str, which: int) -> float:
        return statistics.median(float(pair[which][key]) for pair in pairs)

    return got | {
        "runs": float(len(pairs)),
        "rate_alone": median("rate", 0), "rate_crowd": median("rate", 1),
        "ratio": statistics.median(float(b["rate"]) / float(a["rate"]) for a, b in pairs),
        "p99_alone": median("p99", 0), "p99_crowd": median("p99", 1),
        "added_p99": statistics.median(float(b["p99"]) - float(a["p99"]) for a, b in pairs),
        "cpu_ms_alone": median("cpu_ms", 0), "cpu_ms_crowd": median("cpu_ms", 1),
        "crowd_client_cpu": median("crowd_client_cpu", 1)}


def crowd_limits(sessions: int) -> str:
    """The crowd's frontfilter config: room for the whole crowd in one worker (the kernel does
    not share connections out evenly), the per-address limit left at its default."""
    return f"[limits]\nmax_connections = {sessions + 4 * SESSIONS + 100}\n"


# ---- the run ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny load, to check the harness works")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--only", action="append", help="contenders to run (limit, postfix, ff-queue, ff-sync, ff-queue-nocache, "
                        "floor-queue, floor-sync, ff-queue-1p, ff-sync-1p)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--no-scaling", action="store_true", help="skip the rule sets")
    parser.add_argument("--no-large", action="store_true", help="skip the large messages")
    parser.add_argument("--no-crowd", action="store_true", help="skip the crowd")
    parser.add_argument("--crowd", type=int, default=5000, help="sessions of the crowd (--quick: 50)")
    parser.add_argument("--large-mib", type=int, default=25, help="size of the large messages (--quick: 2)")
    parser.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                        help='frontfilter\'s server.workers (default "auto": one per CPU)')
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, spools)")
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) as Ctrl-C: the contenders are stopped on the way out, Postfix included,
    # which would otherwise go on running from the deleted temp dir.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.quick:
        args.runs, args.scale, args.crowd, args.large_mib = 1, 0.01, 50, 2
    missing = [tool for tool in ("smtp-source", "smtp-sink", "postfix") if shutil.which(tool) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)} (Debian package postfix)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as temp:
        workdir = Path(temp)
        if args.keep:
            workdir = args.keep
            workdir.mkdir(parents=True, exist_ok=True)
        loads = make_loads(workdir, args.scale)
        sink = Sink()
        results: list[Result] = []
        latency: dict[str, dict[str, float]] = {}
        try:
            makers: list[tuple[str, Callable[[], object]]] = [
                ("limit", lambda: direct(sink)),
                ("postfix", lambda: postfix(sink, workdir)),
                ("ff-queue", lambda: frontfilter(sink, workdir, "queue", workers=args.workers)),
                ("ff-sync", lambda: frontfilter(sink, workdir, "sync", workers=args.workers)),
            ]
            if not args.quick:
                # Every message of a load is the same, so the type cache answers for all but the
                # first: this row types every part with libmagic, as for mail never seen before.
                makers += [("ff-queue-nocache", lambda: frontfilter(
                    sink, workdir, "queue", label="ff-queue-nocache", workers=args.workers, type_cache=0))]
            # The libraries alone (no parse, no rules, no log), as many processes as frontfilter.
            processes = parse_workers(args.workers)
            makers += [("floor-queue", lambda: floor(sink, workdir, "queue", processes)),
                       ("floor-sync", lambda: floor(sink, workdir, "sync", processes))]
            if not args.quick and args.workers != 1:    # and as one process, for comparison
                makers += [("ff-queue-1p", lambda: frontfilter(sink, workdir, "queue", label="ff-queue-1p")),
                           ("ff-sync-1p", lambda: frontfilter(sink, workdir, "sync", label="ff-sync-1p"))]
            chosen = [make for name, make in makers if not args.only or name in args.only]
            with ExitStack() as stack:
                contenders: list[Contender] = [stack.enter_context(make()) for make in chosen]  # type: ignore[arg-type]
                results = interleaved(contenders, sink, loads, args.runs)
                progress(results, lambda r: f"{r.contender:9} {r.load:12}")
                for contender in contenders:
                    if contender.name == "limit":
                        continue
                    # Under half the peak this contender reached on 5 KB mail (issue 9's target).
                    peak = next(r.rate for r in results if r.contender == contender.name and r.load == loads[0].name)
                    latency[contender.name] = added_latency(contender.port, sink.port, 30 if args.quick else LATENCY_SENDS,
                                                            peak / 2 if peak else None, workdir)
            scaling: list[Result] = []
            large: dict[str, dict[str, float | str]] = {}
            crowd: dict[str, dict[str, float | str]] = {}
            if not args.no_scaling:
                five_kb = loads[0]
                sets = rule_sets(workdir, extra_rules=50 if args.quick else 1000,
                                 list_entries=1000 if args.quick else 100_000)
                with ExitStack() as stack:
                    relays = [stack.enter_context(frontfilter(sink, workdir, "queue", rules=rules, label=label))
                              for label, rules in sets.items()]
                    scaling = interleaved(relays, sink, [five_kb], args.runs)
                progress(scaling, lambda r: f"{r.contender:40}")
            os.chmod(workdir, 0o755)      # the Postfixes below live in subdirectories of it
            if not args.no_large:
                # A fresh relay for each kind of message: VmHWM only grows, so one relay for both
                # would hide the smaller peak.
                for kind, message in large_messages(args.large_mib).items():
                    for name, make in (
                            ("postfix", lambda: postfix(sink, workdir / "large", extra=LARGE_POSTFIX)),
                            ("ff-queue", lambda: frontfilter(sink, workdir, "queue", label="ff-large",
                                                             workers=args.workers))):
                        with make() as contender:
                            large[f"{name}, {kind}"] = got = measure_large(contender, sink, message)
                        print(f"bench: large {name:9} {kind:12} {got}", file=sys.stderr)
            if not args.no_crowd:
                count = max(SESSIONS, int(5000 * args.scale))
                for name, make in (("postfix", lambda: postfix(sink, workdir / "crowd")),
                                   ("ff-queue", lambda: frontfilter(
                                       sink, workdir, "queue", label="ff-crowd", workers=args.workers,
                                       trusted=CROWD_FREE_TRUSTED, extra=crowd_limits(args.crowd)))):
                    with make() as contender:
                        crowd[name] = measure_crowd(contender, sink, args.crowd, count, args.runs)
                    print(f"bench: crowd {name:9} {crowd[name]}", file=sys.stderr)
        finally:
            sink.stop()
    table = (render(results, latency) + render_by_load(results) + render_scaling(scaling)
             + render_large(large) + render_crowd(crowd, args.crowd))
    print(table)
    args.json.write_text(json.dumps({
        "results": [r.__dict__ | {"rate": r.rate, "cpu": r.cpu} for r in results],
        "latency_ms": latency,
        "rules": [r.__dict__ | {"rate": r.rate, "cpu": r.cpu} for r in scaling],
        "large": large, "crowd": crowd}, indent=2))
    # Postfix failing beside the crowd is a finding (its process limit), not a broken run.
    failed_large = [name for name, got in large.items() if "failed" in got]
    failed_crowd = [name for name, got in crowd.items() if "failed" in got and name != "postfix"]
    return 1 if any(r.failed for r in results + scaling) or failed_large or failed_crowd else 0


def progress(results: list[Result], label: Callable[[Result], str]) -> None:
    for result in results:
        print(f"bench: {label(result)} {result.rate:8.0f} msgs/s"
              + (f"  FAILED: {result.failed}" if result.failed else ""), file=sys.stderr)


def render(results: list[Result], latency: dict[str, dict[str, float]]) -> str:
    by = {(r.contender, r.load): r for r in results}
    lines = ["| contender | load | msgs/s | ÷ Postfix | ÷ limit | CPU s / 1000 msgs | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        postfix_rate = by.get(("postfix", r.load))
        limit_rate = by.get(("limit", r.load))
        vs_postfix = f"{r.rate / postfix_rate.rate:.2f}" if postfix_rate and postfix_rate.rate else "-"
        vs_limit = f"{r.rate / limit_rate.rate:.2f}" if limit_rate and limit_rate.rate else "-"
        lines.append(f"| {r.contender} | {r.load} | {r.rate:.0f} | {vs_postfix} | {vs_limit} | "
                     f"{r.cpu:.2f} | {r.rss_mib or 0:.0f} |" if not r.failed else
                     f"| {r.contender} | {r.load} | failed: {r.failed} | | | | |")
    lines.append("")
    lines.append("| contender | added latency idle p50 / p99 ms | at half peak: msgs/s | p50 / p99 ms |")
    lines.append("|---|---:|---:|---:|")
    for name, got in latency.items():
        loaded = (f"{got['load_rate']:.0f} | {got['loaded_p50']:.2f} / {got['loaded_p99']:.2f}"
                  if "load_rate" in got else "- | -")
        lines.append(f"| {name} | {got['idle_p50']:.2f} / {got['idle_p99']:.2f} | {loaded} |")
    peaks = [r for r in results if r.worker_peak_mib]
    if peaks:
        lines += ["", "| contender | a worker's peak RSS under the first load alone (VmHWM), MiB |", "|---|---:|"]
        lines += [f"| {r.contender} ({r.load}) | {r.worker_peak_mib:.1f} |" for r in peaks]
    return "\n".join(lines)


def render_by_load(results: list[Result]) -> str:
    """The same rates with a column per load (msgs/s, and ÷ Postfix in brackets), so that a
    contender's loads, smtp-source's and the pipelined one's, are read side by side."""
    loads = list(dict.fromkeys(r.load for r in results))
    contenders = list(dict.fromkeys(r.contender for r in results))
    if not loads:
        return ""
    by = {(r.contender, r.load): r for r in results}
    lines = ["", "", "| contender | " + " | ".join(loads) + " |", "|---|" + "---:|" * len(loads)]
    for name in contenders:
        cells = []
        for load in loads:
            r, base = by.get((name, load)), by.get(("postfix", load))
            if r is None or r.failed:
                cells.append("failed" if r else "-")
                continue
            ratio = f" ({r.rate / base.rate:.2f}×)" if base and base.rate and not base.failed else ""
            cells.append(f"{r.rate:.0f}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_scaling(scaling: list[Result]) -> str:
    if not scaling:
        return ""
    lines = ["", "", "| rule set (queue mode, 5 KB) | msgs/s | change | CPU s / 1000 msgs |", "|---|---:|---:|---:|"]
    base = scaling[0].rate if scaling and scaling[0].rate else None
    for r in scaling:
        change = f"{(r.rate / base - 1) * 100:+.0f} %" if base and not r.failed else "-"
        lines.append(f"| {r.contender} | {r.rate:.0f} | {change} | {r.cpu:.2f} |" if not r.failed
                     else f"| {r.contender} | failed: {r.failed} | | |")
    return "\n".join(lines)


def render_large(large: dict[str, dict[str, float | str]]) -> str:
    if not large:
        return ""
    size = next((got["message_mib"] for got in large.values() if "message_mib" in got), 0.0)
    lines = ["", "", f"| large message ({size:.1f} MiB, sent {LARGE_SENDS} times) "
             "| s per message | idle RSS MiB | peak MiB | growth ÷ size | peak, all processes MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, got in large.items():
        if "failed" in got:
            lines.append(f"| {name} | failed: {got['failed']} | | | | |")
        elif "growth_per_size" in got:
            lines.append(f"| {name} (the worker that grew most) | {got['seconds_per_message']:.2f} | "
                         f"{got['idle_mib']:.0f} | {got['peak_mib']:.0f} | {got['growth_per_size']:.2f}× | "
                         f"{got['peak_all_mib']:.0f} |")
        else:
            lines.append(f"| {name} (its largest process) | {got['seconds_per_message']:.2f} | - | "
                         f"{got['peak_mib']:.0f} | - | {got['peak_all_mib']:.0f} |")
    return "\n".join(lines)


def render_crowd(crowd: dict[str, dict[str, float | str]], sessions: int) -> str:
    if not crowd:
        return ""
    lines = ["", "", f"| crowd of {sessions:,} (5 KB, {SESSIONS} sessions beside it; medians of the runs) | sessions up / held at end "
             "| msgs/s alone → with crowd | ratio | relay CPU ms per message alone → with | probe p99 ms alone → with "
             "| added p99 ms | RSS (PSS) MiB, all processes: idle → crowd → crowd + load | processes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, got in crowd.items():
        if "rate_alone" not in got:
            lines.append(f"| {name} | failed: {got['failed']} | | | | | | | |")
            continue
        memory = " → ".join(f"{got['rss_' + when + '_mib']:.0f} ({got['pss_' + when + '_mib']:.0f})"
                            for when in ("before", "crowd", "load")) + f" | {got['processes']:.0f}"
        up = f"{got['opened']:.0f} / {got['held_at_end']:.0f}"
        if "failed" in got:
            lines.append(f"| {name} | {up} | {got['rate_alone']:.0f} → failed: {got['failed']} | | | "
                         f"{got['p99_alone']:.1f} → - | | {memory} |")
            continue
        lines.append(f"| {name} | {up} | {got['rate_alone']:.0f} → {got['rate_crowd']:.0f} | {got['ratio']:.2f} | "
                     f"{got['cpu_ms_alone']:.2f} → {got['cpu_ms_crowd']:.2f} | "
                     f"{got['p99_alone']:.1f} → {got['p99_crowd']:.1f} | {got['added_p99']:+.1f} | {memory} |")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:       # the contenders were stopped on the way out
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
