"""Graceful shutdown in queue mode, through a real relay process and a real client socket.

SIGTERM stops new connections and the delivery worker at once, but a session already in DATA
has `server.shutdown_grace` to finish: the message it ends must still be spooled and get its
250, not an internal error because the spool was closed under it.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.delivery.support import dead_port, message, message_ids, queue_config, spooled, wait_until
from tests.harness import RawClient, RecordingSink, Relay


def test_a_session_ending_its_data_during_shutdown_is_spooled_and_gets_250(tmp_path: Path) -> None:
    port = dead_port()
    config = queue_config(tmp_path, [port])
    relay = Relay(config).start()
    try:
        with RawClient(relay.port) as client:
            client.read_reply()
            client.command("EHLO client.test")
            assert client.command("MAIL FROM:<alice@example.net>").startswith("250")
            assert client.command("RCPT TO:<bob@example.org>").startswith("250")
            assert client.command("DATA").startswith("354")
            client.send(message("late"))
            relay.signal(signal.SIGTERM)
            relay.wait_event("delivery_stopped")       # the worker is done; this session is not
            answer = client.command(".")
    finally:
        assert relay.stop() == 0
    assert answer.startswith("250 2.0.0"), answer
    assert not relay.events("internal_error")
    queue_id = answer.rsplit(" ", 1)[1]
    assert spooled(tmp_path) == [queue_id]
    with RecordingSink(port=port) as sink, Relay(config):      # the next start delivers it
        assert wait_until(lambda: not spooled(tmp_path))
        assert message_ids(sink.messages) == {"late@test": 1}
