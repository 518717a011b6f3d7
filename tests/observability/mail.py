"""The mix of mail the observability tests send: clean, rejected, stripped, monitored, too complex."""

from __future__ import annotations

import smtplib
import ssl
from collections import Counter

from tests.content import corpus
from tests.harness import send

SENDER = "alice@example.net"
RECIPIENT = "bob@example.org"


def clean(n: int = 0) -> bytes:
    return corpus.message(text=f"Hello Bob, message {n}.\n")


def with_pdf() -> bytes:
    return corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "minutes.pdf"))


def with_executable() -> bytes:
    """An ELF program attached as a harmless-looking file: refused by its real type."""
    return corpus.message(corpus.attachment(corpus.elf(), "application/octet-stream", "report.dat"))


def with_macros() -> bytes:
    """A .docm whose vbaProject.bin carries VBA: the part is stripped, the mail delivered."""
    return corpus.message(corpus.attachment(corpus.docx(macros=True),
                                            "application/vnd.ms-word.document.macroEnabled.12",
                                            "budget.docm"))


def too_many_parts(parts: int) -> bytes:
    return corpus.message(*[corpus.attachment(b"note %d\n" % i, "text/plain", f"n{i}.txt")
                            for i in range(parts)])


def outcome(port: int, data: bytes, recipients: tuple[str, ...] = (RECIPIENT,)) -> str:
    """One message; its outcome as "250", "554", ... (the reply code at DATA, or at RCPT when
    every recipient was refused), "partial" when some recipients were refused."""
    answer = send(port, data, sender=SENDER, recipients=recipients, timeout=15)
    return "partial" if answer.refused and answer.stage == "data" else str(answer.code)


def send_mix(port: int, max_parts: int) -> Counter[str]:
    """Three clean, one with a PDF (a monitor rule's hit), two executables, one macro document,
    one message past the inspection bounds, one recipient refused at RCPT (not a relay domain)."""
    outcomes: Counter[str] = Counter()
    for n in range(3):
        outcomes[f"clean {outcome(port, clean(n))}"] += 1
    outcomes[f"pdf {outcome(port, with_pdf())}"] += 1
    for _ in range(2):
        outcomes[f"executable {outcome(port, with_executable())}"] += 1
    outcomes[f"macros {outcome(port, with_macros())}"] += 1
    outcomes[f"parts {outcome(port, too_many_parts(max_parts + 2))}"] += 1
    outcomes[f"relay {outcome(port, clean(99), ('victim@elsewhere.example',))}"] += 1
    return outcomes


EXPECTED_MIX = Counter({"clean 250": 3, "pdf 250": 1, "executable 554": 2, "macros 250": 1,
                        "parts 554": 1, "relay 554": 1})


def send_over_tls(port: int, context: ssl.SSLContext, data: bytes) -> str:
    """One clean message after STARTTLS (inbound TLS session)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.starttls(context=context)
        client.sendmail(SENDER, [RECIPIENT], data)
    return "250"


def fail_auth(port: int, context: ssl.SSLContext) -> str:
    """AUTH with a wrong password, inside TLS (AUTH is offered only there)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.starttls(context=context)
        try:
            client.login("alice", "not her password")
        except smtplib.SMTPAuthenticationError as error:
            return str(error.smtp_code)
    return "250"
