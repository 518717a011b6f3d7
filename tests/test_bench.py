"""The benchmark harness runs end to end on a tiny load, so `make bench` cannot rot; its
pipelining load generator (bench/pipeliner.py) really pipelines; and its floor (bench/floor.py)
is frontfilter's own SMTP session relaying.

No speed is asserted here (speed belongs to bench/README.md): only that every contender and
every rule set got all its mail to the sink, that the table a reader compares has a row for
each, that the large messages went through and the crowd (bench/crowd.py) was held beside the
load, against a scripted server on loopback what the generator puts on the wire, and that the
floor serves SMTP with frontfilter's session and relays what it is given unchanged; the paced
load beside the latency measurement (bench/paced.py) sends until told to stop, and fails on an
answer it did not expect.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RecordingSink, SinkBehaviour, free_port
from tests.requires import installed

REPO = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("pipeliner", REPO / "bench" / "pipeliner.py")
assert _spec is not None and _spec.loader is not None
pipeliner = importlib.util.module_from_spec(_spec)
sys.modules["pipeliner"] = pipeliner          # dataclasses look their module up there
_spec.loader.exec_module(pipeliner)

GUARD = 10.0     # seconds: only so that a client that does not pipeline fails instead of hanging

needs_postfix = installed(all(shutil.which(tool) for tool in ("postfix", "smtp-source", "smtp-sink")),
                          "Postfix's tools are installed by `make test` (Debian package postfix)")


@needs_postfix
def test_quick_bench_measures_every_contender_load_and_rule_set(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(results)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(results.read_text())
    measured = {(row["contender"], row["load"]) for row in report["results"] if row["rate"] > 0}
    contenders = ("limit", "postfix", "ff-queue", "ff-sync", "floor-queue", "floor-sync")
    loads = ("5KB plain", "5KB pipelined", "100KB + PDF", "mix")
    assert measured == {(contender, load) for contender in contenders for load in loads}
    assert not [row for row in report["results"] + report["rules"] if row["failed"]]
    first = {row["contender"]: row for row in report["results"] if row["load"] == loads[0]}
    assert all(first[name]["worker_peak_mib"] > 0 for name in ("ff-queue", "ff-sync"))   # issue 26's figure
    assert len(report["rules"]) == 3 and all(row["rate"] > 0 for row in report["rules"])
    assert set(report["latency_ms"]) == set(contenders) - {"limit"}
    assert all("loaded_p99" in got for got in report["latency_ms"].values())
    large = report["large"]
    assert set(large) == {f"{name}, {kind}" for name in ("postfix", "ff-queue") for kind in ("octet-stream", "zip")}
    assert not [got for got in large.values() if "failed" in got]
    assert all(large[f"ff-queue, {kind}"]["peak_mib"] >= large[f"ff-queue, {kind}"]["idle_mib"] > 0
               for kind in ("octet-stream", "zip"))
    crowd = report["crowd"]
    assert set(crowd) == {"postfix", "ff-queue"}
    # the relay held the whole (small) crowd from its many addresses and served the load beside it
    assert crowd["ff-queue"]["opened"] == crowd["ff-queue"]["held_at_end"] == crowd["ff-queue"]["sessions"]
    assert crowd["ff-queue"]["rate_crowd"] > 0 and crowd["ff-queue"]["rss_load_mib"] > 0
    assert "| crowd of 50 " in done.stdout and "| large message (" in done.stdout
    for contender in ("postfix", "ff-queue", "ff-sync"):
        assert f"| {contender} | 5KB plain |" in done.stdout
        assert f"| {contender} | 5KB pipelined |" in done.stdout
    assert "| contender | " + " | ".join(loads) + " |" in done.stdout    # a column per load


# ---- bench/pipeliner.py against a scripted server ------------------------------------------

class ScriptedServer:
    """An SMTP server on 127.0.0.1 that records each read as it came. After EHLO it answers
    nothing until it holds a whole MAIL/RCPT/DATA group: a client waiting for MAIL's reply
    before sending RCPT would wait for ever (and the test's guard would end it)."""

    def __init__(self, ehlo: bytes = b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                 rcpt_reply: bytes = b"250 2.1.5 ok\r\n") -> None:
        self.ehlo, self.rcpt_reply = ehlo, rcpt_reply
        self.first_reads: list[bytes] = []        # the first read after each reply to EHLO or end of data
        self.groups: list[bytes] = []             # each whole command group, up to DATA
        self.messages: list[bytes] = []           # what came after each 354, terminator included
        self.connections = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            writer.write(b"220 scripted ESMTP\r\n")
            if not (await reader.readline()).startswith(b"EHLO "):
                return
            writer.write(self.ehlo)
            while True:
                first = await reader.read(65536)
                if not first:
                    return
                self.first_reads.append(first)
                if first == b"QUIT\r\n":
                    writer.write(b"221 2.0.0 bye\r\n")
                    return
                group = first
                while not group.endswith(b"DATA\r\n"):
                    more = await reader.read(65536)
                    if not more:
                        return
                    group += more
                self.groups.append(group)
                recipients = group.count(b"RCPT TO:")
                writer.write(b"250 2.1.0 ok\r\n" + self.rcpt_reply * recipients + b"354 go on\r\n")
                if not self.rcpt_reply.startswith(b"25"):
                    continue                          # the client must give up here
                self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 2.0.0 queued\r\n")
        finally:
            writer.close()
            await writer.wait_closed()


async def drive(server: ScriptedServer, plan_of: Callable[[int], Any]) -> Any:
    """Run the generator against `server` (the plan gets the server's port): its tally, or the
    Unexpected it stopped with."""
    listener = await asyncio.start_server(server.session, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        try:
            async with asyncio.timeout(GUARD):
                return await pipeliner.run(plan_of(port))
        except pipeliner.Unexpected as failure:
            return failure
        except TimeoutError:
            pytest.fail("the generator waited for a reply before sending MAIL, RCPT and DATA: it does not pipeline")


def plan(port: int, *, sessions: int = 1, messages: int = 2, per_connection: int = 2,
         recipients: tuple[str, ...] = ("a@example.org", "b@example.org"),
         message: bytes = b"Subject: t\n\nbody\n") -> Any:
    return pipeliner.Plan(port, sessions, messages, per_connection, "s@example.net", recipients,
                          pipeliner.wire_data(message))


def test_pipeliner_sends_mail_rcpt_and_data_in_one_write_before_any_reply() -> None:
    server = ScriptedServer()
    tally = asyncio.run(drive(server, lambda port: plan(port, messages=3, per_connection=2)))
    group = b"MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    assert server.groups == [group] * 3
    # each group came in the first read after the previous reply: one write, one segment
    assert [read for read in server.first_reads if read != b"QUIT\r\n"] == [group] * 3
    assert server.connections == 2                       # 2 messages on the first, 1 on the next
    assert (tally.accepted, tally.connections) == (3, 2)


def test_pipeliner_sends_crlf_and_dot_stuffed_data() -> None:
    server = ScriptedServer()
    message = b"Subject: dots\n\n.leading dot\r\n..two\nlast line without end"
    asyncio.run(drive(server, lambda port: plan(port, messages=1, per_connection=1, message=message)))
    assert server.messages == [b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\nlast line without end\r\n.\r\n"]


def test_pipeliner_wire_data_refuses_a_bare_cr() -> None:
    with pytest.raises(ValueError, match="bare CR"):
        pipeliner.wire_data(b"Subject: x\r\n\r\nbad\rline\r\n")
    assert pipeliner.wire_data(b"") == b".\r\n"


def test_pipeliner_stops_at_the_first_unexpected_reply_and_names_it() -> None:
    server = ScriptedServer(rcpt_reply=b"550 5.1.1 no such user\r\n")
    failure = asyncio.run(drive(server, lambda port: plan(port, sessions=3, messages=30)))
    assert isinstance(failure, pipeliner.Unexpected)
    assert "message 1: RCPT TO:<a@example.org> answered 550 5.1.1 no such user (expected 250 or 251)" in str(failure)
    assert server.messages == []


def test_pipeliner_does_not_pipeline_to_a_server_that_does_not_offer_it() -> None:
    server = ScriptedServer(ehlo=b"250-scripted\r\n250 8BITMIME\r\n")
    failure = asyncio.run(drive(server, plan))
    assert isinstance(failure, pipeliner.Unexpected)
    assert "does not offer PIPELINING (offered: 8BITMIME)" in str(failure)
    assert server.groups == []


def test_pipeliner_command_line_says_what_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: x\n\nbody\n")
    with socket.socket() as bound:                  # bound, not listening: connecting is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        assert pipeliner.main(["--port", str(port), "--messages", "1", str(message)]) == 1
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.startswith(f"pipeliner: session 1, connection 1: cannot connect to 127.0.0.1:{port}")


# ---- bench/paced.py: the load beside the latency measurement, in a process of its own ---------

def paced(port: int, message: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(REPO / "bench" / "paced.py"), "--port", str(port),
                             "--rate", "200", "--clients", "2", *extra, str(message)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_paced_load_sends_until_told_to_stop_and_says_how_much(tmp_path: Path) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: paced\r\n\r\nbody\r\n")
    with RecordingSink() as sink:
        load = paced(sink.port, message)
        try:
            assert load.stdout is not None and load.stdout.readline() == "ready\n"
            deadline = time.monotonic() + GUARD
            while len(sink.messages) < 10:
                assert time.monotonic() < deadline, "the paced load sends nothing"
                time.sleep(0.05)
            out, _ = load.communicate("stop\n", timeout=GUARD)
        finally:
            load.kill()
        assert load.returncode == 0
        sent = int(out.split()[0].removeprefix("sent="))
        assert sent >= 10 and len(sink.messages) == sent
        assert sink.messages[0].data.endswith(b"body\r\n")


def test_paced_load_fails_with_the_answer_it_did_not_expect(tmp_path: Path) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: paced\r\n\r\nbody\r\n")
    with RecordingSink(behaviour=SinkBehaviour(data_reply="451 4.3.0 busy")) as sink:
        load = paced(sink.port, message)
        try:
            assert load.stdout is not None and load.stdout.readline() == "ready\n"
            time.sleep(0.2)
            out, _ = load.communicate("stop\n", timeout=GUARD)
        finally:
            load.kill()
    assert load.returncode == 1
    assert "failed: SMTPDataError: (451, b'4.3.0 busy')" in out


# ---- bench/floor.py: frontfilter's own session, relaying and nothing else ----------------------

@pytest.mark.parametrize("mode", ["queue", "sync"])
def test_floor_serves_smtp_with_frontfilters_session_and_relays_unchanged(tmp_path: Path, mode: str) -> None:
    port = free_port()
    with RecordingSink() as sink:
        floor = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor.py"), "--port", str(port),
                                  "--backend", str(sink.port), "--mode", mode, "--spool", str(tmp_path / "spool"),
                                  "--workers", "2"], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + GUARD
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the floor does not listen"
                    time.sleep(0.05)
            message = b"Subject: floor\r\n\r\n.a line with a leading dot\r\n..and two\r\nend\r\n"
            client = smtplib.SMTP(timeout=GUARD)
            try:
                code, greeting = client.connect("127.0.0.1", port)
                assert (code, greeting) == (220, b"floor.localdomain ESMTP frontfilter")   # the session's own
                client.ehlo("client.test")
                assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
                assert client.sendmail("s@example.net", ["a@example.org", "b@example.org"], message) == {}
                client.rset()                           # the envelope is cleared, the session goes on
                assert client.sendmail("", ["c@example.org"], message) == {}
                client.quit()
            finally:
                client.close()
            got = sink.wait_for(2)            # aiosmtpd records the null sender as "<>"
            assert sorted((m.sender, m.recipients, m.data) for m in got) == [
                ("<>", ["c@example.org"], message), ("s@example.net", ["a@example.org", "b@example.org"], message)]
            deadline = time.monotonic() + GUARD
            while mode == "queue" and any((tmp_path / "spool").glob("*/queue/*")):   # unlinked once delivered
                assert time.monotonic() < deadline, "delivered messages left in the floor's queue"
                time.sleep(0.05)
        finally:
            floor.send_signal(signal.SIGTERM)
            _, errors = floor.communicate(timeout=GUARD)
    assert floor.returncode == 0 and errors == b"", errors.decode(errors="replace")
