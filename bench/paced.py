"""Background mail at a steady rate, for the bench's latency under load.

    python bench/paced.py --port P --rate R [--clients 8] MESSAGE_FILE

`--clients` connections to 127.0.0.1:P, each a thread sending MESSAGE_FILE (CRLF) from
bench@example.net to user@example.org every clients/rate seconds, the threads spread over one
interval. It prints `ready` once every client has its session, sends until a line (or the end)
arrives on stdin, then prints `sent=N seconds=S` (S: from the first send to the stop) and exits
0; a client that gets an answer it did not expect prints `failed: ...` and the exit status is 1.

Why a process of its own (bench/run.py's `paced_load`): the latency is measured by one client
in the bench's own process, and eight load threads in that process took the GIL from it. The
faster relay is given the higher rate (half its own peak), so it was measured through the more
crowded interpreter: the load's client cost was added to its p99.
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages a second, all clients together")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("message")
    args = parser.parse_args()
    with open(args.message, "rb") as file:
        message = file.read()
    interval = args.clients / args.rate
    stop = threading.Event()
    sent = [0]
    counting = threading.Lock()
    failures: list[str] = []
    sessions = [smtplib.SMTP("127.0.0.1", args.port, timeout=30) for _ in range(args.clients)]

    def client(smtp: smtplib.SMTP, start: float) -> None:
        next_at = start
        try:
            while not stop.wait(max(0.0, next_at - time.monotonic())):
                smtp.sendmail("bench@example.net", ["user@example.org"], message)
                with counting:
                    sent[0] += 1
                next_at += interval
        except (smtplib.SMTPException, OSError) as error:
            failures.append(f"{type(error).__name__}: {error}")
        finally:
            smtp.close()

    print("ready", flush=True)
    begin = time.monotonic()
    threads = [threading.Thread(target=client, args=(smtp, begin + index * interval / args.clients))
               for index, smtp in enumerate(sessions)]
    for thread in threads:
        thread.start()
    sys.stdin.readline()
    stop.set()
    ended = time.monotonic()
    for thread in threads:
        thread.join(60)
    print(f"sent={sent[0]} seconds={ended - begin:.3f}", flush=True)
    if failures:
        print(f"failed: {failures[0]}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
