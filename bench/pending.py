"""Memory of a worker while big messages are being received: the issue-26 case of eight
clients each in the middle of a 24 MiB message, with and without `limits.data_spill_size`.

    python bench/pending.py 0        # no spill: every byte received is held in memory
    python bench/pending.py 1MiB     # the default: past 1 MiB, into a file in the spool dir

A relay in queue mode, a recording sink, eight raw SMTP sessions that send all of a 24 MiB
message but its end; the relay's VmRSS is read from /proc before and two seconds after.
Nothing is asserted: bench/README.md has the numbers.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import RawClient, RecordingSink, Relay, write_config  # noqa: E402

SESSIONS, MIB = 8, 24


def rss_mib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def main(spill: str) -> None:
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (MIB * 1024 * 1024 // len(line))
    with tempfile.TemporaryDirectory() as work, RecordingSink() as sink:
        config = write_config(Path(work), [sink.port], server={"max_message_size": "30MiB"},
                              limits={"max_data_in_memory": "512MiB", "data_spill_size": spill,
                                      "connection_rate_per_ip": 0},
                              backend={"mode": "queue"})
        with Relay(config) as relay:
            assert relay.proc is not None
            before = rss_mib(relay.proc.pid)
            clients = [RawClient(relay.port) for _ in range(SESSIONS)]
            try:
                for client in clients:
                    client.begin_data()
                    client.send(body)
                time.sleep(2)
                print(f"data_spill_size = {spill}: VmRSS {before} MiB idle -> {rss_mib(relay.proc.pid)} MiB "
                      f"with {SESSIONS} x {MIB} MiB being received")
            finally:
                for client in clients:
                    client.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "1MiB")
