"""SIGKILL at random moments while mail flows in and out: nothing acknowledged is ever lost.

A client sends in a loop (each message with its own Message-ID) while the relay is killed with
SIGKILL at random moments — during SMTP dialogues, spool writes, deliveries and state writes —
and restarted on the same port and spool, many times. Afterwards, with one clean start, every
message that got a 250 must be at the backend. A duplicate is allowed only for a delivery that
was in flight at a kill (at most `concurrency` per kill); a message that got no 250 may or may
not arrive (the client would retry it), and is never counted lost.
"""

from __future__ import annotations

import random
import smtplib
import threading
import time
from pathlib import Path

from tests.delivery.support import DRAIN_TIMEOUT, message, message_ids, queue_config, spooled
from tests.harness import RecordingSink, Relay, eventually, free_port

KILLS = 8                      # restarts; each run lives a random 0.1-0.7 s
CONCURRENCY = 3
SEED = 4                       # random moments, but the same ones on every run of the test


def test_sigkill_at_random_moments_loses_no_acknowledged_message(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    port = free_port()
    acked: set[str] = set()
    stop = threading.Event()

    def client_loop() -> None:
        counter = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    while not stop.is_set():
                        counter += 1
                        tag = f"crash-{counter}"
                        client.ehlo_or_helo_if_needed()
                        client.mail("alice@example.net")
                        client.rcpt("bob@example.org")
                        code, _ = client.data(message(tag))
                        if code == 250:
                            acked.add(f"{tag}@test")
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)        # relay down or killed mid-dialogue: try again

    with RecordingSink() as sink:
        config = queue_config(tmp_path, [sink.port], port=port, backend={"concurrency": CONCURRENCY})
        sender = threading.Thread(target=client_loop)
        sender.start()
        try:
            for _ in range(KILLS):
                relay = Relay(config).start()
                time.sleep(rng.uniform(0.1, 0.7))
                assert relay.proc is not None
                relay.proc.kill()
                relay.proc.wait(10)
                relay.stop()
        finally:
            stop.set()
            sender.join(15)
        assert len(acked) > KILLS                        # mail did flow between the kills

        with Relay(config) as relay:                     # one clean start delivers the rest
            relay.wait_event("spool_recovered")
            assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT), spooled(tmp_path)
            assert eventually(lambda: acked <= set(message_ids(sink.messages)), DRAIN_TIMEOUT)
        counts = message_ids(sink.messages)

    lost = acked - set(counts)
    assert not lost, f"{len(lost)} acknowledged messages lost: {sorted(lost)[:5]}"
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert sum(v - 1 for v in duplicates.values()) <= KILLS * CONCURRENCY, duplicates
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []     # no unacknowledged leftovers
