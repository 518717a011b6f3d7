"""The session core answers the same bytes however the client's input is cut.

A client decides where its TCP segments end. Whole sessions — several pipelined transactions,
dot-stuffed bodies, errors, a refused STARTTLS, AUTH with a challenge, the limits — are fed as
one block, then cut at random points (hypothesis), at every single point (one short session),
and byte by byte; the bytes written, the events the shell saw and the octets discarded at
STARTTLS must be the same every time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontfilter import reply
from frontfilter.reply import Reply
from frontfilter.smtp.core import AUTH_LINE_MAX, CoreLimits, SmtpCore
from tests.smtp.core_driver import Decider, drive, replies, reply_codes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


@dataclass(frozen=True)
class Case:
    wire: bytes
    limits: CoreLimits = CoreLimits()
    decider: Callable[[], Decider] = Decider


def lines(*parts: str | bytes) -> bytes:
    return b"".join(part if isinstance(part, bytes) else part.encode() + b"\r\n" for part in parts)


CASES = {
    "transactions": Case(lines(
        "EHLO client.example",
        "MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100",
        "RCPT TO:<b@example.com>",
        "rcpt to:<c@example.com>",
        "DATA",
        b"Subject: one\r\n\r\n..dot\r\n...\r\n.x\r\nQUIT\r\n\r\n.\r\n",
        "MAIL FROM:<>",
        "RCPT TO:<d@example.com>",
        "DATA",
        b".\r\n",
        "MAIL FROM:<e@example.org>",
        "RCPT TO:<f@example.com>",
        "RSET",
        "NOOP",
        "MAIL FROM:<g@example.org>",
        "RCPT TO:<h@example.com>",
        "DATA",
        b"line\r\n" * 50 + b".\r\nQUIT\r\n",
    )),
    "errors": Case(lines(
        "FOO bar",
        "",
        b"NO\0OP\r\n",
        "MAIL FROM:<a@example.org>",
        "HELO client.example",
        "MAIL FROM <a@example.org>",
        "MAIL FROM:<a@example.org> BODY=8BITMIME",
        "MAIL FROM:<a@example.org>",
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<refused@example.com>",
        "DATA",
        "RCPT TO:<b@example.com>",
        "DATA",
        b"bare\nline\r\n.\r\n",
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<b@example.com>",
        "DATA",
        b"nul\0byte\r\n.\r\n",
        "NOOP " + "x" * 600,
        "VRFY",
        "VRFY postmaster",
        "HELP",
        "EXPN staff",
        "ETRN example.org",
        b"NOOP caf\xc3\xa9\r\n",
        "QUIT now",
        "QUIT",
        "NOOP",
    ), limits=CoreLimits(max_errors=100), decider=lambda: Decider(rcpt=[Reply(550, "5.1.1", "No such user")])),
    "starttls and auth": Case(lines(
        "EHLO client.example",
        "STARTTLS",
        "MAIL FROM:<a@example.org>",
        "RSET",
        "AUTH LOGIN",
        "QUIT",
        "cGFzcw==",
        "AUTH PLAIN",
        "*",
        "AUTH PLAIN AHVzZXIAcGFzcw==",
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<b@example.com>",
        "DATA",
        b"..\r\n.\r\n",
        "QUIT",
    ), decider=lambda: Decider(auth_challenges=1)),
    "starttls taken": Case(lines(
        "EHLO client.example",
        "STARTTLS",
        "MAIL FROM:<injected@example.org>",
        "RCPT TO:<injected@example.com>",
    ), decider=lambda: Decider(starttls=reply.TLS_READY)),
    "max errors": Case(lines(
        "HELO client.example",
        *["FOO"] * 2,
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<b@example.com>",
        "DATA",
        b"hi\r\n.\r\n",
        *["BAR"] * 3,
        "NOOP",
    ), limits=CoreLimits(max_errors=3)),
    "max commands": Case(lines(
        "HELO client.example",
        "MAIL FROM:<a@example.org>",
        *[f"RCPT TO:<r{n}@example.com>" for n in range(8)],
        "NOOP", "RSET", "VRFY x", "HELP", "NOOP",
    ), limits=CoreLimits(max_commands=4),
        decider=lambda: Decider(rcpt=[reply.RECIPIENT_OK] * 3 + [reply.TOO_MANY_RECIPIENTS] * 5)),
    "data bounds": Case(lines(
        "HELO client.example",
        "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>", "DATA",
        b"x" * 70 + b"\r\n.\r\n",
        "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>", "DATA",
        b"0123456789\r\n" * 30 + b".\r\n",
        "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>", "DATA",
        b"." + b"y" * 64 + b"\r\n.\r\n",
        "QUIT",
    ), limits=CoreLimits(max_line_length=64, max_message_size=200)),
    "bare newline": Case(lines("EHLO client.example", "NOOP", b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.com>\r\n",
                               "NOOP")),
}


def outcome(case: Case, chunks: list[bytes]) -> tuple[bytes, list[object], int]:
    decider = case.decider()
    driver = drive(SmtpCore(case.limits), chunks, decider)
    return bytes(driver.output), decider.events, driver.core.discarded


def cut(wire: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({offset % (len(wire) + 1) for offset in offsets})
    return [wire[start:end] for start, end in zip([0, *points], [*points, len(wire)])]


WHOLE = {name: outcome(case, [case.wire]) for name, case in CASES.items()}


def test_the_cases_say_what_they_are_for() -> None:
    # Each case reaches what it was written for: otherwise the splits below prove little.
    ends = {name: replies(output)[-1][:3] for name, (output, _, _) in WHOLE.items()}
    assert ends == {"transactions": "221", "errors": "221", "starttls and auth": "221", "starttls taken": "220",
                    "max errors": "421", "max commands": "421", "data bounds": "221", "bare newline": "500"}
    output, events, discarded = WHOLE["starttls taken"]
    assert discarded == len(lines("MAIL FROM:<injected@example.org>", "RCPT TO:<injected@example.com>"))
    assert b"334 " in WHOLE["starttls and auth"][0] and b"\r\n502 " in WHOLE["starttls and auth"][0]
    assert reply_codes(WHOLE["data bounds"][0]) == [220, 250, 250, 250, 354, 500, 250, 250, 354, 552,
                                                   250, 250, 354, 250, 221]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CASES)), st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40))
def test_random_cuts_change_nothing(name: str, offsets: list[int]) -> None:
    case = CASES[name]
    assert outcome(case, cut(case.wire, offsets)) == WHOLE[name]


def test_every_single_cut_of_a_short_session_changes_nothing() -> None:
    case = CASES["starttls and auth"]
    for point in range(len(case.wire) + 1):
        assert outcome(case, cut(case.wire, [point])) == WHOLE["starttls and auth"], f"cut at {point}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_byte_by_byte_changes_nothing(name: str) -> None:
    case = CASES[name]
    assert outcome(case, [case.wire[at:at + 1] for at in range(len(case.wire))]) == WHOLE[name]


# ---- lines past every bound (AUTH_LINE_MAX), cut before their end -------------------------------
# The core drops such a line as it comes (`_skipping`), without looking at what it dropped;
# a line that arrives whole is judged by `_parse` first. The verdict must not depend on which.

OVERLONG = AUTH_LINE_MAX + 600
EARLY_CUT = AUTH_LINE_MAX + 100       # the first segment alone is past the bound: dropped unread


@pytest.mark.parametrize("line", [b"1" * OVERLONG + b"\r\n", b"NOOP " + b"x" * OVERLONG + b"\0\r\n"])
def test_an_overlong_line_gets_one_answer_however_it_is_cut(line: bytes) -> None:
    case = Case(line + lines("NOOP"))
    assert outcome(case, cut(case.wire, [EARLY_CUT])) == outcome(case, [case.wire])


def test_a_bare_lf_ending_an_overlong_line_is_refused_however_it_is_cut() -> None:
    case = Case(b"x" * OVERLONG + b"\nMAIL FROM:<smuggled@example.org>\r\n" + lines("NOOP"))
    whole = outcome(case, [case.wire])
    assert replies(whole[0])[-1] == "500 5.5.2 Bare CR or LF in command is not allowed"
    assert outcome(case, cut(case.wire, [EARLY_CUT])) == whole


def test_an_overlong_auth_answer_ends_the_exchange_however_it_is_cut() -> None:
    case = Case(lines("EHLO client.example", "AUTH LOGIN", b"A" * OVERLONG + b"\r\n", "NOOP"),
                decider=lambda: Decider(auth_challenges=1))
    whole = outcome(case, [case.wire])
    assert replies(whole[0])[-2:] == ["500 5.5.6 Line too long", "250 2.0.0 OK"]
    assert outcome(case, cut(case.wire, [len(lines("EHLO client.example", "AUTH LOGIN")) + EARLY_CUT])) == whole
