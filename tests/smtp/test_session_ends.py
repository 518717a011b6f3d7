"""How a session ends, on a running relay: nothing the client is owed is lost on the way out,
and nothing of a session outlives it.

- A client that half-closes after pipelining a whole session still gets every reply, and its
  message is taken (as Postfix does).
- A timeout or the shutdown's cut that comes while a message is being decided waits for the
  verdict: a client told `421` for a message that was then relayed would send it twice.
- A client that stops reading does not keep its slot in the connection limits after its
  session is over.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.harness import RawClient, SinkBehaviour, relay_with_sink

SESSION = (b"EHLO client.test\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
           b"Subject: half-closed\r\n\r\nhello\r\n.\r\nQUIT\r\n")


def read_all(sock: socket.socket) -> bytes:
    received = b""
    for _ in range(1000):        # bounded: a relay that never closes fails on the socket timeout
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk
    raise AssertionError("the relay kept talking")


def test_a_client_that_half_closes_after_pipelining_gets_every_reply(tmp_path: Path) -> None:
    with relay_with_sink(tmp_path) as (running, sink):
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(SESSION)
            sock.shutdown(socket.SHUT_WR)
            wire = read_all(sock)
        codes = [line[:3] for line in wire.decode().split("\r\n") if line[3:4] == " "]
        assert codes == ["220", "250", "250", "250", "354", "250", "221"], wire
        [received] = sink.wait_for(1)
        assert b"Subject: half-closed" in received.data


def send_message(client: RawClient, subject: str) -> None:
    client.begin_data()
    client.send(f"Subject: {subject}\r\n\r\nhello\r\n.\r\n".encode())


def test_the_session_timeout_waits_for_the_verdict_on_a_message_being_relayed(tmp_path: Path) -> None:
    # The backend takes 3 s to take the message; the session's time is up after 2 s.
    timeouts = {"session_timeout": "2s", "command_timeout": "1s", "data_timeout": "1500ms"}
    with relay_with_sink(tmp_path, SinkBehaviour(data_delay=3.0), server=timeouts,
                         inspection={"timeout": "1s"}) as (running, sink):
        with RawClient(running.port) as client:
            send_message(client, "slow backend")
            assert client.read_reply().startswith("250 2.0.0")
            assert client.read_reply() == "421 4.4.2 Session time limit exceeded, closing connection"
            assert client.read_reply() == ""
        assert len(sink.wait_for(1)) == 1
        assert running.wait_event("session_closed")["reason"] == "session_timeout"


def test_the_shutdown_cut_waits_for_the_verdict_on_a_message_being_relayed(tmp_path: Path) -> None:
    with relay_with_sink(tmp_path, SinkBehaviour(data_delay=3.0), server={"shutdown_grace": "1s"}) as (running, sink):
        with RawClient(running.port) as client:
            send_message(client, "cut")
            running.signal(signal.SIGTERM)
            assert client.read_reply().startswith("250 2.0.0")
            assert client.read_reply() == "421 4.3.2 Service shutting down, try again later"
            assert client.read_reply() == ""
        assert len(sink.wait_for(1)) == 1
        assert running.stop() == 0


def test_a_client_that_stops_reading_gives_its_connection_slot_back_when_its_session_ends(tmp_path: Path) -> None:
    with relay_with_sink(tmp_path, server={"command_timeout": "1s", "max_commands": 100_000_000},
                         limits={"max_connections_per_ip": 1}) as (running, _):
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as stuck:
            stuck.recv(1024)
            stuck.settimeout(2)              # a send blocked this long: the relay stopped reading
            try:
                for _ in range(10_000):
                    stuck.sendall(b"NOOP\r\n" * 10_000)
            except (TimeoutError, ConnectionResetError):     # reset: cut at its timeout, as it should be
                pass
            assert running.wait_event("session_closed")["reason"] == "command_timeout"
            with RawClient(running.port) as other:         # while the stuck client is still there
                assert other.read_reply().startswith("220 ")
