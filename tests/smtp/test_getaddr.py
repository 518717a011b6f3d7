"""MAIL FROM / RCPT TO arguments: the fast path of `smtp.paths` reads them exactly as its full
grammar does, and the relay answers an unreadable one with 553.

The fast path (one regex for the plain `<local@domain>` nearly every client sends) is there for
speed only: a difference would be an address or a parameter read one way when it is plain and
another when it is not. The corpus below is the one the fast path was first checked on, against
aiosmtpd's reading; that comparison is tests/smtp/test_paths.py's now, run here on it too.
"""

from __future__ import annotations

import random
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontfilter.smtp import paths
from frontfilter.smtp.paths import parse_path
from tests.harness import RecordingSink, Relay, write_config
from tests.smtp.test_paths import unexplained


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[int]:
    with RecordingSink() as sink, Relay(write_config(tmp_path, [sink.port])) as relay:
        yield relay.port

FIXED = ["<a@b>", "<a@b> SIZE=10", "<a.b@c.d> BODY=8BITMIME SMTPUTF8", "<>", "<a@b>x", "<a@b>  X",
         "<a..b@c>", "<.a@b>", "<a@b.>", "<a@-b>", "<a@[1.2.3.4]>", "<a@b> ", "<a@b>\t", "<@x:a@b>",
         "<a@b(c)>", "<a(c)@b>", "<a@b> (c) X", "<a@b>\t(x)", '<"a b"@c>', "a@b", " <a@b>", "<é@b>",
         "<a@b > X", "< a@b>", "<a@b>SIZE=1", "<a@b.c> SIZE=1 (x)", "  <a@b>  SIZE=1", "\t<>", "<a@b>\n"]


def generated(count: int) -> list[str]:
    chance = random.Random(20261129)
    alphabet = "aZ09.-_+@<> \t\"()[]:;,\\=!#%é"
    atext = "aZ09!#$%&'*+/=?^_`{|}~-"
    tails = ["", " ", " A=B", "x", "\t", " (c) X", "\t(x)", " \tX", "  ", "( ", " )", " A=(b)"]
    cases = []
    for _ in range(count):
        body = "".join(chance.choice(alphabet) for _ in range(chance.randint(1, 16)))
        cases.append(chance.choice(["<", ""]) + body + chance.choice([">", "> SIZE=1", ">x", ""]))
        plain = "".join(chance.choice("ab.-_@") for _ in range(chance.randint(1, 10)))
        cases.append(chance.choice(["", " ", "\t"]) + f"<{plain}>{chance.choice(tails)}")
        local = ".".join("".join(chance.choice(atext) for _ in range(chance.randint(1, 6)))
                         for _ in range(chance.randint(1, 3)))
        cases.append(f"<{local}@{chance.choice(['b', 'b.c', '-x-.example', 'é.example'])}>{chance.choice(tails)}")
    return cases


def test_the_fast_path_reads_every_argument_as_the_full_grammar_does() -> None:
    taken = 0
    for limit in (0, 3):
        for argument in FIXED + generated(20_000):
            fast = parse_path(argument, local_part_limit=limit)
            assert fast == paths._read_path(argument, limit), argument
            taken += paths._PLAIN_PATH.match(argument) is not None
    assert taken > 15_000          # the corpus does reach the fast path


def test_the_corpus_reads_as_aiosmtpd_read_it_but_where_listed() -> None:
    for limit in (0, 3):
        failures = [failure for argument in FIXED + generated(20_000) if (failure := unexplained(argument, limit))]
        assert failures == []


def test_an_unreadable_path_is_a_553_and_the_session_goes_on(relay_port: int) -> None:
    """Among them the input the stdlib parser once tripped over (451 and a traceback, then)."""
    with smtplib.SMTP("127.0.0.1", relay_port, timeout=10) as client:
        client.ehlo("client.example")
        for argument in ('<"', "<9@", '<a@[a=:";;>', "<a(c)@b>", "Name <a@b>", "<a@b>SIZE=1"):
            code, text = client.docmd(f"MAIL FROM:{argument}")
            assert (code, text[:5]) == (553, b"5.1.3"), (argument, code, text)
        assert client.mail("alice@example.net")[0] == 250      # the session goes on
