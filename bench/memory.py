"""Where a frontfilter process's memory goes: /proc/PID/smaps by kind, and the cost of each import.

    python bench/memory.py                        # ff-queue, 2 workers: idle, after 5 KB, after 100 KB + PDF
    python bench/memory.py --env MALLOC_ARENA_MAX=2 --messages 2000
    python bench/memory.py --imports              # RSS after each library the relay imports, one process

A relay (queue mode, the shipped rules, the bench's config) is started and given smtp-source's
20-session loads; after each, every process of it (the supervisor and its workers) is read from
/proc: VmRSS, VmHWM (its peak), PSS (its share of pages that processes share: the workers are
forked from the supervisor, so their RSS counts the same pages twice) and the mappings of
/proc/PID/smaps summed by kind:

  [heap]         glibc's main arena (brk): the event loop thread's malloc, where Python puts
                 every object over 512 bytes and its own small-object arenas when brk allows
  thread arenas  glibc's per-thread arenas (64 MiB reserved each, 8 × cores of them at most):
                 the inspection, spool and other pool threads' mallocs
  thread stacks  8 MiB reserved per thread, a few pages touched
  other anon     Python's 1 MiB small-object arenas, buffers mapped on their own (glibc mmaps
                 an allocation above its threshold), libraries' private data
  magic.mgc      libmagic's compiled database, mapped from the file by each cookie
  libraries      every other file mapping (libpython, libcrypto, extension modules...)

Nothing here is timed or asserted; bench/README.md ("Memory of a worker") has what it found.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ARENA = 64 * 1024 * 1024          # glibc's HEAP_MAX_SIZE on 64-bit: one thread arena's reservation
STACK = 8 * 1024 * 1024           # a pthread's default stack (ulimit -s)
GUARD = 4096                      # the guard page below each thread stack
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def mappings(pid: int) -> list[dict[str, int | str]]:
    """Each mapping of /proc/PID/smaps: start, end, perm, path and its kB fields (Rss, Pss...)."""
    found: list[dict[str, int | str]] = []
    with open(f"/proc/{pid}/smaps") as handle:
        for line in handle:
            head = _MAPPING.match(line)
            if head:
                found.append({"start": int(head[1], 16), "end": int(head[2], 16), "perm": head[3],
                              "path": head[4].strip()})
                continue
            key, _, value = line.partition(":")
            if value.strip().endswith(" kB"):
                found[-1][key] = int(value.split()[0])
    return found


def kind(maps: list[dict[str, int | str]], index: int) -> str:
    """What one mapping is, by its path or, for anonymous memory, by its shape."""
    this = maps[index]
    path = str(this["path"])
    size = int(this["end"]) - int(this["start"])
    if path.endswith("magic.mgc"):
        return "magic.mgc"
    if path.startswith("/"):
        return "libraries"
    if path:
        return path if path in ("[heap]", "[stack]") else "other"
    after = maps[index + 1] if index + 1 < len(maps) else None
    before = maps[index - 1] if index else None
    if (this["perm"] == "rw-p" and int(this["start"]) % ARENA == 0
            and (size == ARENA or (after is not None and after["perm"] == "---p" and after["start"] == this["end"]
                                   and int(after["end"]) - int(this["start"]) == ARENA))):
        return "thread arenas"
    if (this["perm"] == "rw-p" and size == STACK and before is not None and before["perm"] == "---p"
            and int(before["end"]) - int(before["start"]) == GUARD):
        return "thread stacks"
    return "other anon"


KINDS = ("[heap]", "thread arenas", "thread stacks", "other anon", "magic.mgc", "libraries", "[stack]", "other")


def breakdown(pid: int) -> dict[str, dict[str, float]]:
    """MiB of Rss and Pss per kind of mapping, and the totals."""
    maps = mappings(pid)
    rss: Counter[str] = Counter()
    pss: Counter[str] = Counter()
    for index, mapping in enumerate(maps):
        name = kind(maps, index)
        rss[name] += int(mapping.get("Rss", 0))
        pss[name] += int(mapping.get("Pss", 0))
    return {name: {"rss": rss[name] / 1024, "pss": pss[name] / 1024} for name in KINDS} | {
        "total": {"rss": sum(rss.values()) / 1024, "pss": sum(pss.values()) / 1024}}


def status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (MiB) and the thread count from /proc/PID/status."""
    got: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                got[key] = int(value)
    return got


def report(title: str, pids: list[int]) -> dict[str, float]:
    """Print one table of the relay's processes; return its sums (MiB)."""
    print(f"\n{title}")
    header = "| process | threads | VmRSS | VmHWM | PSS | " + " | ".join(KINDS[:6]) + " |"
    print(header)
    print("|---|" + "---:|" * (header.count("|") - 2))
    sums: dict[str, float] = {"VmRSS": 0.0, "VmHWM": 0.0, "PSS": 0.0}
    for number, pid in enumerate(pids):
        try:
            got, parts = status(pid), breakdown(pid)
        except OSError:
            continue
        name = "supervisor" if number == 0 and len(pids) > 1 else f"worker {number}"
        cells = " | ".join(f"{parts[k]['rss']:.1f} ({parts[k]['pss']:.1f})" for k in KINDS[:6])
        print(f"| {name} | {got['Threads']:.0f} | {got['VmRSS']:.1f} | {got['VmHWM']:.1f} | "
              f"{parts['total']['pss']:.1f} | {cells} |")
        sums["VmRSS"] += got["VmRSS"]
        sums["VmHWM"] += got["VmHWM"]
        sums["PSS"] += parts["total"]["pss"]
    print(f"| all | | {sums['VmRSS']:.1f} | {sums['VmHWM']:.1f} | {sums['PSS']:.1f} |")
    return sums


def relay(args: argparse.Namespace) -> None:
    """Start ff-queue, give it the loads, print the breakdown after each."""
    import run          # the bench's contenders, sink and loads (not imported by --imports: it imports frontfilter)
    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value                # the relay inherits this process's environment
    with tempfile.TemporaryDirectory(prefix="ff-memory-") as temp:
        workdir = Path(temp)
        loads = run.make_loads(workdir, 1.0)
        five_kb, with_pdf = loads[0], loads[2]
        sink = run.Sink()
        try:
            with run.frontfilter(sink, workdir, "queue", workers=args.workers) as contender:
                time.sleep(2.0)                # start-up allocation settles
                pids = contender.pids()
                print(f"MiB, Rss (Pss) per kind of mapping; env: {' '.join(args.env) or '(none)'}")
                report("idle", pids)
                for load, count in ((five_kb, args.messages), (with_pdf, args.messages // 2)):
                    stream = load.streams[0]
                    command = ["smtp-source", "-s", str(stream.sessions), "-m", str(count),
                               "-f", "bench@example.net", "-t", "user@example.org"]
                    command += ["-F", str(stream.files[0])] if stream.files else ["-l", str(load.size)]
                    expected = sink.count + count
                    subprocess.run(command + [f"127.0.0.1:{contender.port}"], check=True)
                    if not sink.wait_for(expected):
                        raise RuntimeError(f"{load.name}: the sink did not get all {count} messages")
                    report(f"after {count} × {load.name}", pids)
        finally:
            sink.stop()


IMPORTS = [
    # What `frontfilter serve` imports, in groups, in the order it imports them.
    ("asyncio, ssl, email (the standard library's part)", ["asyncio", "ssl", "email.parser", "email.policy"]),
    ("uvloop", ["uvloop"]),
    ("prometheus_client", ["prometheus_client"]),
    ("aiosmtplib, aiosmtpd", ["aiosmtplib", "aiosmtpd.smtp"]),
    ("python-magic", ["magic"]),
    ("libarchive-c", ["libarchive"]),
    ("olefile", ["olefile"]),
    ("oletools (olevba, oleobj, rtfobj; pulls pyparsing)", ["oletools.olevba", "oletools.oleobj", "oletools.rtfobj"]),
    ("dnspython (dns.asyncresolver)", ["dns.asyncresolver"]),
    ("pyspf", ["spf"]),
    ("cryptography (its Rust bindings), dkimpy", ["cryptography.x509", "dkim"]),
    ("publicsuffixlist, authres, email-validator", ["publicsuffixlist", "authres", "email_validator"]),
    ("frontfilter (all its own modules)", ["frontfilter.cli", "frontfilter.process.service",
                                           "frontfilter.process.supervisor"]),
]


def rss_now() -> float:
    return status(os.getpid())["VmRSS"]


def imports(trace: bool) -> None:
    """RSS after each group of imports, the rule set and libmagic's cookies, in this process.
    With `trace`, also what tracemalloc saw allocated by Python (its own tables inflate RSS,
    so the RSS column is only honest without it)."""
    import tracemalloc
    if trace:
        tracemalloc.start()
    last = rss_now()
    print("| step | RSS MiB | added |" + (" Python objects (tracemalloc) |" if trace else "")
          + "\n|---|---:|---:|" + ("---:|" if trace else ""))
    print(f"| the interpreter | {last:.1f} | |" + (" |" if trace else ""))

    def step(name: str, action: object) -> object:
        nonlocal last
        before = tracemalloc.get_traced_memory()[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = action() if callable(action) else None
        now = rss_now()
        traced = (tracemalloc.get_traced_memory()[0] - before) / 2**20
        print(f"| {name} | {now:.1f} | {now - last:+.1f} |" + (f" {traced:.1f} |" if trace else ""))
        last = now
        return result

    for name, modules in IMPORTS:
        present = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is not None]
        step(name, lambda present=present: [importlib.import_module(m) for m in present])
    from frontfilter.rules.loader import load_ruleset
    step("the shipped rules, loaded", lambda: load_ruleset(REPO / "rules"))
    import magic
    cookies = [step("a libmagic cookie, made", lambda: magic.Magic(mime=True))]
    text = b"lorem ipsum dolor sit amet\n" * 200
    step("its first call (the database's pages read)", lambda: cookies[0].from_buffer(text))   # type: ignore[attr-defined]
    cookies.append(step("a second cookie (second inspection thread)", lambda: magic.Magic(mime=True)))
    step("its first call", lambda: cookies[1].from_buffer(text))   # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imports", action="store_true", help="the cost of each import, in this process")
    parser.add_argument("--trace", action="store_true", help="with --imports: tracemalloc's count too")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the relay (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--messages", type=int, default=5000, help="5 KB messages (100 KB + PDF: half as many)")
    parser.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v))
    args = parser.parse_args(argv)
    if args.imports:
        imports(args.trace)
    else:
        relay(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
