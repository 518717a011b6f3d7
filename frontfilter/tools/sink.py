"""A tiny SMTP server standing in for the internal backend: stores each message in a Maildir.

For trying frontfilter out (`make run`) and for tests. Each message is written exactly as
received (no Return-Path or Delivered-To added, so "byte-identical" can be checked), and its
envelope is appended as one JSON line to `DIR/envelopes.jsonl` and printed.

Test knobs: recipients whose local part starts with `reject` get 550 5.1.1, with `defer` 451
4.2.0 — so partial refusals can be tried by hand too.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP, Envelope, Session

_counter = 0


class MaildirSink:
    def __init__(self, maildir: Path, out: TextIO | None = None):
        self.maildir = maildir
        self.out = out if out is not None else sys.stdout
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 User unknown"
        if local.startswith("defer"):
            return "451 4.2.0 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        name = self.store(content)
        record = {"file": f"new/{name}", "from": envelope.mail_from, "to": envelope.rcpt_tos,
                  "size": len(content)}
        with open(self.maildir / "envelopes.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"sink: stored {record['file']} from=<{envelope.mail_from}> "
              f"to={','.join('<%s>' % r for r in envelope.rcpt_tos)} size={len(content)}",
              file=self.out, flush=True)
        return f"250 2.0.0 Stored {name}"

    def store(self, content: bytes) -> str:
        global _counter
        _counter += 1
        name = f"{time.time():.6f}.P{os.getpid()}Q{_counter}.{socket.gethostname()}"
        temp = self.maildir / "tmp" / name
        with open(temp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp, self.maildir / "new" / name)
        return name


def sink_protocol(handler: Any, hostname: str = "sink.localdomain") -> SMTP:
    return SMTP(handler, hostname=hostname, ident="frontfilter-sink", enable_SMTPUTF8=True,
                data_size_limit=None)
