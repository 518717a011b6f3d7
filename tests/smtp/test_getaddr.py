"""MAIL FROM / RCPT TO arguments: our fast path reads them exactly as aiosmtpd's parser does.

A difference would be an address or a parameter read one way by frontfilter and another by
the parser it replaces; the comparison runs on aiosmtpd's own `_getaddr` as the reference.
"""

from __future__ import annotations

import random
import smtplib

import pytest
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from aiosmtpd.smtp import SMTP

from frontfilter.smtp.protocol import FrontSMTP
from tests.harness import RecordingSink, Relay, write_config


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[int]:
    with RecordingSink() as sink, Relay(write_config(tmp_path, [sink.port])) as relay:
        yield relay.port

FIXED = ["<a@b>", "<a@b> SIZE=10", "<a.b@c.d> BODY=8BITMIME SMTPUTF8", "<>", "<a@b>x", "<a@b>  X",
         "<a..b@c>", "<.a@b>", "<a@b.>", "<a@-b>", "<a@[1.2.3.4]>", "<a@b> ", "<a@b>\t", "<@x:a@b>",
         "<a@b(c)>", "<a(c)@b>", "<a@b> (c) X", "<a@b>\t(x)", '<"a b"@c>', "a@b", " <a@b>", "<é@b>",
         "<a@b > X", "< a@b>", "<a@b>SIZE=1", "<a@b.c> SIZE=1 (x)"]


def generated(count: int) -> list[str]:
    chance = random.Random(20261129)
    alphabet = "aZ09.-_+@<> \t\"()[]:;,\\=!#%é"
    tails = ["", " ", " A=B", "x", "\t", " (c) X", "\t(x)", " \tX", "  ", "( ", " )", " A=(b)"]
    cases = []
    for _ in range(count):
        body = "".join(chance.choice(alphabet) for _ in range(chance.randint(1, 16)))
        cases.append(chance.choice(["<", ""]) + body + chance.choice([">", "> SIZE=1", ">x", ""]))
        plain = "".join(chance.choice("ab.-_@") for _ in range(chance.randint(1, 10)))
        cases.append(f"<{plain}>{chance.choice(tails)}")
    return cases


def aiosmtpd_reading(session: SimpleNamespace, argument: str) -> tuple[str | None, str | None]:
    try:
        return SMTP._getaddr(session, argument)  # type: ignore[arg-type]
    except (IndexError, AttributeError):      # the stdlib parser's own failures: see below
        return None, None


def test_fast_path_reads_every_argument_as_aiosmtpd_does() -> None:
    for limit in (0, 3):
        session = SimpleNamespace(local_part_limit=limit)
        for argument in FIXED + generated(20_000):
            assert FrontSMTP._getaddr(session, argument) == aiosmtpd_reading(session, argument), argument


def test_input_the_stdlib_parser_trips_over_is_a_syntax_error(relay_port: int) -> None:
    with smtplib.SMTP("127.0.0.1", relay_port, timeout=10) as client:
        client.ehlo("client.example")
        for argument in ('<"', "<9@", '<a@[a=:";;>'):
            code, text = client.docmd(f"MAIL FROM:{argument}")
            assert (code, text[:5]) == (553, b"5.1.3"), (argument, code, text)   # not 451 4.3.0
        assert client.mail("alice@example.net")[0] == 250      # the session goes on
