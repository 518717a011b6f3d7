"""Session limits on a running relay (issue 21): they do not clash, and each close is logged.

- `max_commands` counts junk (NOOP, RSET, VRFY, ...), not RCPT within the recipient limit, and
  a `452 4.5.3` for a recipient past the limit is not an error: a pipelining client that sends
  more recipients than allowed gets its message through for the ones accepted.
- Every session the relay closes for a limit or a timeout leaves one `session_closed` line,
  with the transaction it cut short, and its reply is counted.
- A client that pipelines without reading the replies stops being read: the relay buffers a
  bounded amount for it, whatever it sends.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness import RawClient, RecordingSink, Relay, write_config

RECIPIENTS = 1100
ALLOWED = 100


@contextmanager
def relay(tmp_path: Path, **sections: dict[str, Any]) -> Iterator[tuple[Relay, RecordingSink]]:
    with RecordingSink() as sink:
        with Relay(write_config(tmp_path, [sink.port], **sections)) as running:
            yield running, sink


def read_replies(client: RawClient, count: int) -> list[str]:
    return [client.read_reply() for _ in range(count)]


def test_a_pipelining_client_past_the_recipient_limit_still_delivers(tmp_path: Path) -> None:
    """1,100 recipients, 100 allowed, the default bounds: 100 accepted, 1,000 told 452 4.5.3,
    the message taken. Before, 10 of the 452s counted as errors, then 421, and the transaction
    was lost. (Recipients past the limit count as junk commands, as in Postfix: a client that
    sends a million is still closed by `max_commands`.)"""
    with relay(tmp_path, server={"max_recipients": ALLOWED}) as (running, sink):
        with RawClient(running.port) as client:
            client.read_reply()
            assert client.command("EHLO client.test").startswith("250")
            lines = ["MAIL FROM:<alice@example.net>"]
            lines += [f"RCPT TO:<user{n}@example.org>" for n in range(RECIPIENTS)]
            lines += ["DATA"]
            client.send(("\r\n".join(lines) + "\r\n").encode())
            replies = read_replies(client, len(lines))
            assert replies[0].startswith("250")
            assert all(r.startswith("250") for r in replies[1:ALLOWED + 1])
            assert all(r.startswith("452 4.5.3") for r in replies[ALLOWED + 1:-1]), sorted(set(replies))
            assert replies[-1].startswith("354")
            assert client.command(b"Subject: many\r\n\r\nhello\r\n.").startswith("250")
            assert client.command("QUIT").startswith("221")
        delivered = sink.wait_for(1)
        assert len(delivered[0].recipients) == ALLOWED


def test_junk_commands_close_the_session_with_one_log_line_naming_the_open_transaction(tmp_path: Path) -> None:
    with relay(tmp_path, server={"max_commands": 5}) as (running, _sink):
        with RawClient(running.port) as client:
            client.read_reply()
            client.command("EHLO client.test")
            assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
            assert client.command("RCPT TO:<bob@example.org>").startswith("250")
            answers = [client.command("NOOP") for _ in range(6)]
            assert answers[:5] == ["250 2.0.0 OK"] * 5
            assert answers[5] == "421 4.7.0 Too many commands, closing connection"    # the sixth
            assert client.read_reply() == ""
        line = running.wait_event("session_closed")
        assert line["reason"] == "max_commands (5)" and line["queue_id"]
        assert line["reply"].startswith("421 4.7.0")
        assert len(running.events("session_closed")) == 1


def exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def test_a_command_timeout_is_answered_counted_and_logged(tmp_path: Path) -> None:
    with relay(tmp_path, server={"command_timeout": "1s"}, metrics={"listen": "127.0.0.1:0"}) as (running, _):
        metrics = running.http_port
        with RawClient(running.port) as client:
            client.read_reply()
            client.command("EHLO client.test")
            assert client.read_reply() == "421 4.4.2 Timeout waiting for a command, closing connection"
            assert client.read_reply() == ""
        line = running.wait_event("session_closed")
        assert line["reason"] == "command_timeout"
        counted = re.search(r'^frontfilter_smtp_replies_total\{code="421",stage="helo"\} (\S+)$',
                            exposition(metrics), re.MULTILINE)
        assert counted is not None and float(counted.group(1)) == 1.0
        limit = re.search(r'^frontfilter_refusals_total\{reason="limit",stage="helo"\} (\S+)$',
                          exposition(metrics), re.MULTILINE)
        assert limit is not None and float(limit.group(1)) == 1.0


def test_a_client_that_never_reads_is_not_buffered_without_bound(tmp_path: Path) -> None:
    """NOOPs sent as fast as the socket takes them, replies never read: once the replies fill
    the socket, the relay stops taking commands, then stops reading. Without backpressure it
    would take all 64 MiB (and queue four times as many bytes of replies)."""
    offered = 64 * 1024 * 1024
    with relay(tmp_path, server={"max_commands": 100_000_000}) as (running, _):
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.recv(1024)
            sock.settimeout(3)       # a send blocked this long: the relay no longer reads
            chunk = b"NOOP\r\n" * 10_000
            sent = 0
            try:
                while sent < offered:
                    sent += sock.send(chunk)
            except TimeoutError:
                pass
        assert sent < offered // 4, f"the relay took {sent} octets without reading a reply"
        with RawClient(running.port) as other:         # and it still serves everyone else
            assert other.read_reply().startswith("220")
            assert other.command("NOOP") == "250 2.0.0 OK"
