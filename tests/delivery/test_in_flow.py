"""In-flow control (`backend.in_flow_delay`, Postfix's in_flow_delay): while new mail waits in
line for the backends, the next client waits at MAIL for the line to move, a while at most,
then goes on. Never a refusal, nothing lost.

A backend that holds every message until the test lets it go makes the line; `concurrency = 1`
keeps it short: one message in the backend's hands, IN_FLOW_LINE waiting behind it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frontfilter.delivery.worker import IN_FLOW_LINE
from tests.harness import RawClient, RecordingSink, Relay, send, write_config


class HeldSink(RecordingSink):
    """Answers the end of each message only once `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.to_thread(self.release.wait, 60)
        return await super().handle_DATA(server, session, envelope)

    def stop(self) -> None:
        self.release.set()          # a test that failed half-way does not leave it waiting
        super().stop()


def message(n: int) -> bytes:
    return f"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: in flow {n}\r\n\r\nbody {n}\r\n".encode()


@contextmanager
def line_filled(tmp_path: Path, in_flow_delay: str) -> Iterator[tuple[Relay, HeldSink]]:
    """A relay in queue mode in front of a HeldSink, with one message held by the backend and
    IN_FLOW_LINE more in line behind it."""
    with HeldSink() as sink:
        config = write_config(tmp_path, [sink.port], backend={"mode": "queue", "concurrency": 1,
                                                              "in_flow_delay": in_flow_delay},
                              metrics={"listen": "127.0.0.1:0"})
        with Relay(config) as relay:
            for n in range(1 + IN_FLOW_LINE):
                assert send(relay.port, message(n)).code == 250
            yield relay, sink


@contextmanager
def greeted(relay: Relay) -> Iterator[RawClient]:
    with RawClient(relay.port) as client:
        assert client.read_reply().startswith("220 ")
        assert client.command("EHLO client.test").startswith("250")
        yield client


def waits(relay: Relay) -> dict[str, float]:
    """frontfilter_in_flow_waits_total by how the wait ended, and the seconds waited, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {m[1]: float(m[2]) for m in re.finditer(r'^frontfilter_in_flow_waits_total\{ended="(\w+)"\} (\S+)$', text, re.M)}
    seconds = re.search(r"^frontfilter_in_flow_wait_seconds_total (\S+)$", text, re.M)
    assert seconds is not None
    return found | {"seconds": float(seconds[1])}


def mail_answer_within(client: RawClient, seconds: float) -> str | None:
    client.sock.settimeout(seconds)
    try:
        return client.command("MAIL FROM:<carol@example.net>")
    except socket.timeout:
        return None
    finally:
        client.sock.settimeout(client.timeout)


def test_new_mail_waits_at_mail_while_the_line_is_long_and_goes_on_when_it_moves(tmp_path: Path) -> None:
    with line_filled(tmp_path, "10m") as (relay, sink):
        with greeted(relay) as client:
            assert mail_answer_within(client, 1.0) is None        # waiting for the line
            sink.release.set()                                    # the backend takes one
            assert client.read_reply().startswith("250 ")
            assert client.command("RCPT TO:<bob@example.org>").startswith("250")
            assert client.command("DATA").startswith("354")
            assert client.command(message(99) + b".").startswith("250 ")
        counted = waits(relay)
        assert (counted["moved"], counted["delay"]) == (1, 0) and counted["seconds"] >= 1.0
        delivered = sink.wait_for(2 + IN_FLOW_LINE)
        assert sorted(m.data.split(b"Subject: in flow ")[1].split(b"\r\n")[0] for m in delivered) == \
            sorted(str(n).encode() for n in [*range(1 + IN_FLOW_LINE), 99])


def test_past_in_flow_delay_new_mail_is_taken_with_the_line_still_long(tmp_path: Path) -> None:
    with line_filled(tmp_path, "200ms") as (relay, sink):
        assert send(relay.port, message(99)).code == 250       # later, but taken
        counted = waits(relay)
        assert (counted["moved"], counted["delay"]) == (0, 1) and counted["seconds"] >= 0.2
        sink.release.set()
        assert len(sink.wait_for(2 + IN_FLOW_LINE)) == 2 + IN_FLOW_LINE


def test_with_in_flow_delay_zero_nobody_waits(tmp_path: Path) -> None:
    with line_filled(tmp_path, "0s") as (relay, sink):
        with greeted(relay) as client:
            assert (mail_answer_within(client, 10.0) or "").startswith("250 ")
        assert waits(relay) == {"moved": 0, "delay": 0, "seconds": 0}
        sink.release.set()
        assert len(sink.wait_for(1 + IN_FLOW_LINE)) == 1 + IN_FLOW_LINE
