"""Differential: the session core against aiosmtpd, reply code by reply code.

aiosmtpd is the library the relay stood on before issue 21; here it is a reference only (a test
dependency). Generated command streams — valid, invalid, pipelined, odd addresses, case
variations, parameters, messages — go to the core through the in-memory driver (with a shell
that accepts everything, as aiosmtpd's default handler does) and to an aiosmtpd server on
loopback over a real socket, each in one write; the 3-digit codes of the replies are compared in
order.

Where the two deliberately differ, the difference is listed once in DIFFERENCES with its reason;
the comparison lets a pair of codes differ only where one of those entries says so, and stops
where the sessions part ways for good (after that, their states differ by design). Anything
else that differs fails, with the stream and the line.

Bounded: EXAMPLES streams (derandomized; FUZZ_RANDOM=1 for a fresh seed), one loopback server
for the module, stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontfilter import reply
from frontfilter.reply import Reply
from frontfilter.smtp.core import LOCAL_PART_MAX, CoreLimits, Event, Mail, SmtpCore
from tests.smtp.core_driver import Decider, drive

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
MAX_SIZE = 33554432                  # aiosmtpd's DATA_SIZE_DEFAULT; the core gets the same
# aiosmtpd has neither bound: out of reach here (see DIFFERENCES).
LIMITS = CoreLimits(max_message_size=MAX_SIZE, max_commands=1_000_000, max_errors=1_000_000)
READ_TIMEOUT = 5.0                   # seconds for aiosmtpd to answer a whole stream
AIOSMTPD_VERBS = frozenset({"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT",
                            "STARTTLS", "AUTH"})
AIOSMTPD_BOGUS_LIMIT = 5             # aiosmtpd.smtp.BOGUS_LIMIT


# ---- the line each reply answers ----------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """One step of the comparison: the input the core read for a reply (a command line with its
    line end, or a message with its terminator), the two codes, and how many commands aiosmtpd
    has found bogus so far, this one included."""

    text: bytes
    core: int
    aiosmtpd: int
    bogus: int
    in_data: bool          # `text` is a message the core read (after its 354)

    @property
    def verb(self) -> str:
        return self.text.split(b" ", 1)[0].rstrip(b"\r\n").upper().decode("ascii", "replace")

    @property
    def bare_newline(self) -> bool:
        return not self.text.endswith(b"\r\n") or b"\r" in self.text[:-2] or b"\n" in self.text[:-2]


def aiosmtpd_bogus(line: bytes) -> bool:
    """Whether aiosmtpd counts `line` against its bogus-command budget (smtp.py _handle_client)."""
    line = line.rstrip(b"\r\n")
    if not line:
        return False
    verb = line.partition(b" ")[0]
    return verb.isascii() and len(line) <= 512 and verb.upper().decode("ascii") not in AIOSMTPD_VERBS


# ---- the deliberate differences -----------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    name: str
    reason: str
    # None: the difference is not in the codes compared, or is configured away (see reason).
    applies: Callable[[Seen], bool] | None
    # The sessions' states differ after it, even where the codes agree: compared no further.
    parts_ways: bool = False


def _mail_or_rcpt(seen: Seen) -> bool:
    return seen.verb in ("MAIL", "RCPT") and not seen.in_data


def _repeats_a_keyword(line: bytes) -> bool:
    keywords = [word.partition(b"=")[0].upper() for word in line.split()[2:]]
    return len(keywords) != len(set(keywords))


DIFFERENCES = [
    Difference(
        "bare CR or LF in a command",
        "A command line ends in CRLF only; a bare CR or LF is refused (500) and the session closed, "
        "as Postfix's smtpd_forbid_bare_newline: aiosmtpd splits lines at LF and strips CRs, so "
        "'EHLO a\\nNOOP' is two commands there (SMTP smuggling).",
        lambda seen: not seen.in_data and seen.bare_newline and seen.core == 500, parts_ways=True),
    Difference(
        "bare CR or LF, or NUL, in DATA",
        "The core refuses such a message (550 5.6.0, smtp.data): a backend that reads line ends or "
        "NUL differently sees another message; aiosmtpd takes it (250). Both find the same "
        "terminator, so the sessions stay in step.",
        lambda seen: seen.in_data and seen.core == 550 and seen.aiosmtpd == 250),
    Difference(
        "NUL in a command",
        "Refused as a syntax error (500) whatever the command; aiosmtpd reads the argument with "
        "it (NOOP a<NUL> is 250 there, and so is a MAIL FROM with a NUL in the path) and a NUL in "
        "the verb makes an unknown command.",
        lambda seen: not seen.in_data and b"\0" in seen.text and seen.core == 500 != seen.aiosmtpd, parts_ways=True),
    Difference(
        "command line lengths",
        "RFC 5321 §4.5.3.1.4 counts the CRLF in the 512 octets, and MAIL and RCPT get room for "
        "parameters (PATH_LINE_MAX); aiosmtpd counts 512 without CRLF, and grows its MAIL limit "
        "by 36 on every EHLO in a dict shared by all its sessions (cleared as each one starts).",
        lambda seen: not seen.in_data and len(seen.text) > 510 and seen.core != seen.aiosmtpd
        and 500 in (seen.core, seen.aiosmtpd),
        parts_ways=True),
    Difference(
        "HELP",
        "HELP answers 214 (RFC 5321 §4.2.2: help reply) with the same text whatever its "
        "argument; aiosmtpd answers 250, or 501 to an argument it does not know.",
        lambda seen: seen.verb == "HELP" and seen.core == 214 and seen.aiosmtpd in (250, 501)),
    Difference(
        "ETRN",
        "ETRN is known and not implemented (502, as EXPN); aiosmtpd does not know it (500, "
        "and a bogus command).",
        lambda seen: seen.verb == "ETRN" and seen.core == 502 and seen.aiosmtpd == 500),
    Difference(
        "VRFY with an unreadable address",
        "VRFY never says anything about an address (252 to any argument); aiosmtpd parses it "
        "and answers 502 when it cannot.",
        lambda seen: seen.verb == "VRFY" and seen.core == 252 and seen.aiosmtpd == 502),
    Difference(
        "STARTTLS where TLS is not offered",
        "The shell answers 502 5.5.1 (command not implemented on this listener); aiosmtpd "
        "without a TLS context answers 454.",
        lambda seen: seen.verb == "STARTTLS" and seen.core == 502 and seen.aiosmtpd == 454),
    Difference(
        "AUTH where it is not offered",
        "The shell answers 503 5.5.1 (not enabled) in every state; aiosmtpd answers 503 before "
        "EHLO, 500 after HELO and 538 without TLS.",
        lambda seen: seen.verb == "AUTH" and seen.core == 503 and seen.aiosmtpd in (500, 503, 538)),
    Difference(
        "the null recipient",
        "RCPT TO:<> is refused (501: <> is a reverse-path only, RFC 5321 §4.1.1.3); aiosmtpd "
        "takes '<>' as a recipient (250, or 555 to its parameters).",
        lambda seen: seen.verb == "RCPT" and seen.core == 501 and b":<>" in seen.text.replace(b" ", b""),
        parts_ways=True),
    Difference(
        "ESMTP keywords",
        "A parameter keyword may hold '-' (esmtp-keyword, RFC 5321 §4.1.2): X-FOO is unknown (555); "
        "aiosmtpd's isalnum() makes it a syntax error (501).",
        lambda seen: _mail_or_rcpt(seen) and seen.core == 555 and seen.aiosmtpd == 501),
    Difference(
        "a repeated parameter",
        "A parameter keyword given twice is refused (501 5.5.4): which of the two counts is a "
        "guess a backend may make differently; aiosmtpd keeps the last.",
        lambda seen: _mail_or_rcpt(seen) and seen.core == 501 and seen.aiosmtpd != 501 and _repeats_a_keyword(seen.text),
        parts_ways=True),
    Difference(
        "a declared SIZE past the limit beside an unknown parameter",
        "The core refuses the unknown parameter (555) before the shell reads SIZE (552, the "
        "pipeline's MAIL stage); aiosmtpd reads SIZE first. Both refuse the sender.",
        lambda seen: seen.verb == "MAIL" and seen.core == 555 and seen.aiosmtpd == 552),
    Difference(
        "paths",
        "Paths are read by smtp.paths, RFC 5321's grammar, where aiosmtpd used the stdlib's RFC "
        "5322 header parser: comments, display names, blanks inside the brackets, unbalanced "
        "brackets, parameters glued to the path, control characters and a mailbox without a "
        "domain (Postmaster aside) are unreadable (553) here and read there (its docstring and "
        "tests/smtp/test_paths.py list each). One side reads the path and goes on to its other "
        "checks (nested MAIL, parameters), the other answers 553.",
        lambda seen: _mail_or_rcpt(seen) and seen.core != seen.aiosmtpd and 553 in (seen.core, seen.aiosmtpd),
        parts_ways=True),
    Difference(
        "aiosmtpd's bogus-command budget",
        "aiosmtpd closes the session at its 5th unknown command (502); the core counts unknown "
        "commands as errors, under max_errors.",
        lambda seen: seen.bogus >= AIOSMTPD_BOGUS_LIMIT and seen.aiosmtpd == 502, parts_ways=True),
    Difference(
        "max_errors and max_commands",
        "aiosmtpd has neither bound; the core runs here with both out of reach (LIMITS). They are "
        "tested in test_core.",
        None),
    Difference(
        "enhanced status codes",
        "Only the 3-digit codes are compared: the core sends an enhanced code (RFC 3463) on every "
        "reply but the greeting, HELO/EHLO, 334 and 354; aiosmtpd on a few only.",
        None),
]


# ---- the two servers ----------------------------------------------------------------------------

class _AcceptAll:
    """aiosmtpd's handler: no hooks, so every MAIL, RCPT and DATA is answered 250."""


class _Reference(SMTP):
    local_part_limit = LOCAL_PART_MAX    # as the core's (RFC 5321 §4.5.3.1.1)


@pytest.fixture(scope="module")
def aiosmtpd_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: _Reference(_AcceptAll(), hostname="mx.test", enable_SMTPUTF8=True, loop=loop), "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name="aiosmtpd reference", daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        async def stop() -> None:
            server.close()
            await server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def aiosmtpd_codes(port: int, stream: bytes) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as client:
        client.sendall(stream)
        received = bytearray()
        while chunk := client.recv(65536):     # until aiosmtpd closes (QUIT ends every stream)
            received += chunk
    # Split at CRLF only: aiosmtpd echoes an unknown verb into its reply, bare CR and all.
    codes = [int(line[:3]) for line in bytes(received).split(b"\r\n") if line[:3].isdigit() and line[3:4] == b" "]
    assert codes[:1] == [220], received
    return codes[1:]


def accept_all(event: Event) -> Reply:
    """The shell on a plain listener with aiosmtpd's default answers: everything is taken, a
    declared SIZE past the limit refused (552, as the pipeline's MAIL stage does)."""
    if isinstance(event, Mail):
        size = next((option[5:] for option in event.options if option.startswith("SIZE=")), "")
        if size.isdigit() and int(size) > MAX_SIZE:
            return reply.MESSAGE_TOO_BIG
    return Decider()(event)


def core_steps(stream: bytes) -> list[tuple[bytes, int, bool]]:
    """(input read, code, whether it was a message) for each reply after the greeting."""
    driver = drive(SmtpCore(LIMITS), [stream], accept_all)
    steps = []
    for before, exchange in zip(driver.exchanges, driver.exchanges[1:]):
        in_data = before.reply.code == 354
        steps.append((stream[before.read:exchange.read], exchange.reply.code, in_data))
    return steps


def compare(stream: bytes, theirs: list[int]) -> set[str]:
    """The names of the differences met; fails on any other."""
    met: set[str] = set()
    ours = core_steps(stream)
    bogus = 0
    for step, (text, code, in_data) in enumerate(ours):
        if not in_data and aiosmtpd_bogus(text):
            bogus += 1
        if step >= len(theirs):
            pytest.fail(f"aiosmtpd sent {len(theirs)} replies, the core more; stream {stream!r}")
        seen = Seen(text, code, theirs[step], bogus, in_data)
        found = next((d for d in DIFFERENCES if d.applies is not None and d.applies(seen)), None)
        if seen.core == seen.aiosmtpd and (found is None or not found.parts_ways):
            continue
        if found is None:
            pytest.fail(f"reply {step + 1} to {text!r}: core {code}, aiosmtpd {seen.aiosmtpd}\n"
                        f"core {[c for _, c, _ in ours]}\naiosmtpd {theirs}\nstream {stream!r}")
        met.add(found.name)
        if found.parts_ways:
            return met
    assert len(theirs) == len(ours), f"core {[c for _, c, _ in ours]}, aiosmtpd {theirs}, stream {stream!r}"
    return met


# ---- the streams --------------------------------------------------------------------------------

ADDRESSES = ["<a@example.org>", "<>", "<A.B+tag@Example.ORG>", "a@example.org", " <a@example.org>",
             "<a@[192.0.2.1]>", '<"a b"@example.org>', "<@relay.example:a@example.org>", "<a>", "<postmaster>",
             "<a@example.org", "<a@b@c>", "<@>", "<<a@example.org>>", "Name <a@example.org>",
             "<a@example.org> (comment)", "<a(comment)@example.org>", "<j\u00f6rg@example.org>", "",
             "<" + "l" * 64 + "@example.org>", "<" + "l" * 65 + "@example.org>", "<a@-bad-.example>",
             "<a@example.org.>", "<a..b@example.org>"]
PARAMETERS = ["BODY=7BIT", "BODY=8BITMIME", "BODY=BINARYMIME", "BODY", "SIZE=1000", f"SIZE={MAX_SIZE + 1}",
              "SIZE", "SIZE=", "SIZE=x", "SMTPUTF8", "SMTPUTF8=YES", "X-FOO=1", "FOO", "NOTIFY=NEVER", "=1"]
HOSTS = ["client.example", "[192.0.2.1]", "x", "", "h\u00e9llo.example", "two words"]
BODY_LINES = [b"Subject: test", b"", b"hello", b"..dot", b".", b"QUIT", b"MAIL FROM:<x@example.org>",
              b"bare\nlf", b"bare\rcr", b"nul\0byte", b"\xc3\xa9t\xc3\xa9"]


@st.composite
def cased(draw: st.DrawFn, word: str) -> str:
    style = draw(st.sampled_from(["upper", "lower", "title", "mixed"]))
    if style == "mixed":
        return "".join(c.lower() if i % 2 else c.upper() for i, c in enumerate(word))
    return getattr(word, style)()


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """DATA and a message (lines a refused DATA turns into commands)."""
    line = draw(cased("DATA")) + draw(st.sampled_from(["", "", "", " ", " now"]))
    body = draw(st.lists(st.sampled_from(BODY_LINES[:7]) if draw(st.integers(0, 3)) else st.sampled_from(BODY_LINES),
                         max_size=5))
    return line.encode() + b"\r\n" + b"".join(line_ + b"\r\n" for line_ in body if line_ != b".") + b".\r\n"


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["transaction"] * 4 + ["hello", "hello", "mail", "mail", "rcpt", "rcpt", "data",
                                 "rset", "noop", "vrfy", "expn", "help", "etrn", "quit", "unknown", "empty", "auth",
                                 "starttls", "long", "nul", "bare"]))
    if kind == "transaction":         # pipelined, as a client does: most streams reach their messages
        mail = f"MAIL FROM:{draw(st.sampled_from(ADDRESSES[:4]))}\r\n".encode()
        rcpts = [f"RCPT TO:{address}\r\n".encode()
                 for address in draw(st.lists(st.sampled_from(ADDRESSES[2:4] + ["<b@example.com>"]), min_size=1,
                                              max_size=3))]
        return mail + b"".join(rcpts) + draw(message())
    if kind == "hello":
        line = f"{draw(cased('EHLO' if draw(st.booleans()) else 'HELO'))} {draw(st.sampled_from(HOSTS))}"
    elif kind in ("mail", "rcpt"):
        keyword = draw(cased("MAIL FROM:" if kind == "mail" else "RCPT TO:"))
        if draw(st.integers(0, 9)) == 0:
            keyword = keyword.replace(":", draw(st.sampled_from(["", ": ", " :"])))
        address = draw(st.sampled_from(ADDRESSES[:4])) if draw(st.booleans()) else draw(st.sampled_from(ADDRESSES))
        params = draw(st.lists(st.sampled_from(PARAMETERS), max_size=3))
        params = [draw(cased(param)) for param in params]
        line = " ".join([keyword + address, *params])
    elif kind == "data":
        return draw(message())
    elif kind in ("rset", "noop", "quit", "starttls"):
        line = draw(cased(kind.upper())) + draw(st.sampled_from(["", "", " now"]))
    elif kind in ("vrfy", "expn", "help", "etrn"):
        line = draw(cased(kind.upper())) + draw(st.sampled_from(["", " postmaster", " <a@example.org>", " MAIL",
                                                                 " <not an address", " <a@b@c>", " example.org"]))
    elif kind == "auth":
        line = "AUTH " + draw(st.sampled_from(["PLAIN", "LOGIN", "PLAIN AHVzZXIAcGFzcw==", "", "CRAM-MD5 x y"]))
    elif kind == "unknown":
        line = draw(st.sampled_from(["FOO", "XYZZY bar", "N0OP", " NOOP", "MAIL:", "ehlo\tx", "\u00e9HLO x"]))
    elif kind == "empty":
        line = ""
    elif kind == "long":
        verb = draw(st.sampled_from(["NOOP ", "MAIL FROM:<a@example.org> SIZE=", "RCPT TO:<a@example.org> X="]))
        line = verb + "1" * (draw(st.integers(490, 530)) - len(verb))
    elif kind == "nul":
        return draw(st.sampled_from([b"NO\0OP\r\n", b"NOOP a\0b\r\n", b"MAIL FROM:<a\0@example.org>\r\n"]))
    else:
        return draw(st.sampled_from([b"NOOP\nNOOP\r\n", b"NOOP\rNOOP\r\n", b"NOOP\r\r\n", b"RSET\n"]))
    return line.encode() + b"\r\n"


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    start = draw(st.sampled_from([b"EHLO client.example\r\n"] * 2 + [b"HELO client.example\r\n", b""]))
    return b"".join([start, *draw(st.lists(commands(), min_size=1, max_size=12)), b"QUIT\r\n"])


# ---- the tests ----------------------------------------------------------------------------------

@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams())
def test_the_core_answers_as_aiosmtpd_but_where_it_means_to_differ(aiosmtpd_port: int, stream: bytes) -> None:
    compare(stream, aiosmtpd_codes(aiosmtpd_port, stream))


@pytest.mark.parametrize("stream", [
    b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
    b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n..\r\n.\r\n"
    b"MAIL FROM:<a@example.org>\r\nRSET\r\nRCPT TO:<b@example.com>\r\nQUIT\r\n",
    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nQUIT\r\n",
    b"ehlo x\r\nmail from:<a@example.org> body=8bitmime size=10\r\nmail from:<a@example.org>\r\n"
    b"rcpt to:<b@example.com>\r\ndata now\r\nrset\r\nnoop x\r\nvrfy\r\nexpn x\r\nquit x\r\nQUIT\r\n",
])
def test_plain_sessions_agree_code_for_code(aiosmtpd_port: int, stream: bytes) -> None:
    assert compare(stream, aiosmtpd_codes(aiosmtpd_port, stream)) == set()


# One stream per entry of the table that the comparison uses, meeting that entry and no other.
MEETS = {
    "bare CR or LF in a command": b"NOOP\nNOOP\r\nQUIT\r\n",
    "bare CR or LF, or NUL, in DATA":
        b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\na\nb\r\n.\r\nQUIT\r\n",
    "NUL in a command": b"NOOP a\0b\r\nQUIT\r\n",
    "command line lengths": b"NOOP " + b"x" * 506 + b"\r\nQUIT\r\n",
    "HELP": b"HELP\r\nQUIT\r\n",
    "ETRN": b"ETRN example.org\r\nQUIT\r\n",
    "VRFY with an unreadable address": b"VRFY <a@b@c>\r\nQUIT\r\n",
    "STARTTLS where TLS is not offered": b"STARTTLS\r\nQUIT\r\n",
    "AUTH where it is not offered": b"EHLO x\r\nAUTH PLAIN\r\nQUIT\r\n",
    "the null recipient": b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
    "ESMTP keywords": b"EHLO x\r\nMAIL FROM:<a@example.org> X-FOO=1\r\nQUIT\r\n",
    "a repeated parameter": b"EHLO x\r\nMAIL FROM:<a@example.org> BODY=8BITMIME BODY=7BIT\r\nQUIT\r\n",
    "a declared SIZE past the limit beside an unknown parameter":
        b"EHLO x\r\nMAIL FROM:<a@example.org> SIZE=33554433 FOO\r\nQUIT\r\n",
    "paths": b"HELO x\r\nMAIL FROM:<a@example.org\r\nQUIT\r\n",
    "aiosmtpd's bogus-command budget": b"FOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nNOOP\r\nQUIT\r\n",
}


@pytest.mark.parametrize("difference", sorted(MEETS))
def test_each_difference_is_real(aiosmtpd_port: int, difference: str) -> None:
    # Each entry of the table is met where it says: an entry nothing needs would hide a change.
    stream = MEETS[difference]
    assert compare(stream, aiosmtpd_codes(aiosmtpd_port, stream)) == {difference}


def test_the_table_names_each_difference_once() -> None:
    names = [difference.name for difference in DIFFERENCES]
    assert len(names) == len(set(names))
    assert all(difference.reason for difference in DIFFERENCES)
    assert set(MEETS) == {difference.name for difference in DIFFERENCES if difference.applies is not None}
