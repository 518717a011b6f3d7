"""The SMTP session core from bytes alone: every command, every state, every bound.

No loop and no socket: `core_driver` plays the shell (greets, answers the events the shell
decides with a scripted `Decider`) and the tests read the bytes the core writes. Where the exact
reply matters it is compared as text; the events the decider saw show what reached the shell.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from frontfilter import reply
from frontfilter.reply import Reply
from frontfilter.smtp import proxy
from frontfilter.smtp.core import (AUTH_LINE_MAX, COMMAND_LINE_MAX, PATH_LINE_MAX, Answer, Auth, AuthAnswer,
                                   BadProxyHeader, CoreLimits, Hello, Mail, Message, Mode, ProxyHeader, Rcpt, Reset,
                                   SmtpCore, StartTls)
from tests.smtp.core_driver import EHLO_KEYWORDS, GREETING, Decider, Driver, drive, replies, reply_codes

LIMITS = CoreLimits()
EHLO_REPLY = Reply(250, "", "mx.test", more=EHLO_KEYWORDS).wire
HELO = "HELO client.example"
MAIL = "MAIL FROM:<sender@example.org>"
RCPT = "RCPT TO:<rcpt@example.com>"
BODY = b"Subject: hi\r\n\r\nhello\r\n.\r\n"
TRANSACTION = (HELO, MAIL, RCPT, "DATA", BODY)
OK_TRANSACTION = ["250 mx.test", "250 2.1.0 Sender OK", "250 2.1.5 Recipient OK",
                  "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 OK"]


def wire(*lines: str | bytes) -> bytes:
    """Text lines get CRLF; bytes are sent exactly as written."""
    return b"".join(line if isinstance(line, bytes) else line.encode() + b"\r\n" for line in lines)


def session(*lines: str | bytes, limits: CoreLimits = LIMITS, decide: Decider | None = None) -> Driver:
    return drive(SmtpCore(limits), [wire(*lines)], decide)


def talk(*lines: str | bytes, limits: CoreLimits = LIMITS, decide: Decider | None = None) -> list[str]:
    """The replies after the greeting to `lines` sent in one block (pipelined)."""
    found = replies(bytes(session(*lines, limits=limits, decide=decide).output))
    assert found[0] == GREETING.wire
    return found[1:]


def codes(*lines: str | bytes, limits: CoreLimits = LIMITS, decide: Decider | None = None) -> list[int]:
    return [int(text[:3]) for text in talk(*lines, limits=limits, decide=decide)]


# ---- the greeting -------------------------------------------------------------------------------

def test_nothing_is_read_before_the_greeting() -> None:
    core = SmtpCore(LIMITS)
    core.receive(b"EHLO early.example\r\nQUIT\r\n")
    assert core.next_event() is None
    assert core.next_event() is None        # asking again changes nothing
    assert core.mode is Mode.GREETING and core.buffered == len(b"EHLO early.example\r\nQUIT\r\n")
    assert core.send(GREETING) == b"220 mx.test ESMTP\r\n"
    assert core.next_event() == Hello("early.example", extended=True)


@pytest.mark.parametrize("refusal", [Reply(554, "5.7.1", "Go away", close=True), reply.TOO_MANY_CONNECTIONS,
                                     reply.NOT_READY])
def test_a_refused_greeting_closes_and_reads_nothing(refusal: Reply) -> None:
    core = SmtpCore(LIMITS)
    core.receive(b"EHLO early.example\r\n")
    assert core.send(refusal) == (refusal.wire + "\r\n").encode()
    assert core.mode is Mode.CLOSED and core.ended
    core.receive(b"NOOP\r\n")
    assert core.next_event() is None and core.buffered == 0


def test_an_unprompted_421_closes_the_session() -> None:
    core = SmtpCore(LIMITS)
    core.send(GREETING)
    core.receive(b"NOOP")                   # a command begun, never ended: the shell times out
    assert core.next_event() is None
    assert core.send(reply.COMMAND_TIMEOUT).startswith(b"421 4.4.2 ")
    assert core.mode is Mode.CLOSED and core.send(reply.OK) == b""


def test_the_input_ending_ends_the_session_once_every_line_is_answered() -> None:
    core = SmtpCore(LIMITS)
    core.send(GREETING)
    core.receive(b"NOOP\r\nNOO")
    core.end_of_input()
    assert not core.ended                   # a whole line is still to be answered
    event = core.next_event()
    assert isinstance(event, Answer) and not core.ended
    core.send(event.reply)
    assert core.next_event() is None and core.ended   # the cut-off "NOO" is never a command


def test_a_message_cut_off_by_the_end_of_input_is_never_taken() -> None:
    core = SmtpCore(LIMITS)
    driver = drive(core, [f"{HELO}\r\n{MAIL}\r\n{RCPT}\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n".encode()])
    core.end_of_input()
    assert core.ended and core.next_event() is None
    assert reply_codes(bytes(driver.output)) == [220, 250, 250, 250, 354]


def test_a_whole_message_before_the_end_of_input_is_still_taken() -> None:
    decider = Decider()
    core = SmtpCore(LIMITS)
    drive(core, [f"{HELO}\r\n{MAIL}\r\n{RCPT}\r\nDATA\r\nbody\r\n.\r\nQUIT\r\n".encode()], decider, eof=True)
    assert any(isinstance(event, Message) for event in decider.events) and core.mode is Mode.CLOSED


# ---- HELO and EHLO ------------------------------------------------------------------------------

def test_helo_and_ehlo_name_the_client() -> None:
    decider = Decider()
    assert talk("HELO client.example", "EHLO client.example", decide=decider) == ["250 mx.test", EHLO_REPLY]
    assert decider.events == [Hello("client.example", False), Hello("client.example", True)]


@pytest.mark.parametrize(("line", "text"), [("HELO", "Syntax: HELO hostname"), ("EHLO", "Syntax: EHLO hostname"),
                                            ("ehlo   ", "Syntax: EHLO hostname")])
def test_helo_without_a_name_is_a_syntax_error(line: str, text: str) -> None:
    decider = Decider()
    assert talk(line, decide=decider) == [f"501 5.5.4 {text}"]
    assert decider.events == []


def test_the_verb_is_read_in_any_case_and_the_argument_trimmed() -> None:
    decider = Decider()
    assert codes("hElO   client.example  ", decide=decider) == [250]
    assert decider.events == [Hello("client.example", False)]


@pytest.mark.parametrize("hello", ["EHLO again.example", "HELO again.example"])
def test_a_new_hello_ends_the_transaction(hello: str) -> None:
    assert talk("EHLO client.example", MAIL, RCPT, hello, RCPT, "DATA", MAIL)[3:] == [
        EHLO_REPLY if hello.startswith("EHLO") else "250 mx.test",
        "503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: need MAIL command",
        "250 2.1.0 Sender OK"]              # not a nested MAIL: the first transaction is gone


def test_a_refused_hello_leaves_the_client_unnamed() -> None:
    decider = Decider(hello=[Reply(550, "5.7.1", "Go away")])
    assert codes(HELO, MAIL, decide=decider) == [550, 503]


def test_a_refused_hello_ends_the_transaction_too() -> None:
    # The shell resets the transaction before it asks about the name: the core agrees.
    decider = Decider(hello=[Reply(250, "", "mx.test"), Reply(550, "5.7.1", "Go away")])
    assert codes(HELO, MAIL, RCPT, "HELO other.example", "DATA", decide=decider) == [250, 250, 250, 550, 503]


def test_a_closing_reply_from_the_shell_closes() -> None:
    decider = Decider(hello=[Reply(554, "5.7.1", "Go away", close=True)])
    driver = session(HELO, "NOOP", decide=decider)
    assert replies(bytes(driver.output))[1:] == ["554 5.7.1 Go away"]
    assert driver.core.mode is Mode.CLOSED


# ---- MAIL ---------------------------------------------------------------------------------------

def test_mail_before_hello_is_out_of_sequence() -> None:
    assert talk(MAIL) == ["503 5.5.1 Error: send HELO first"]


def test_mail_gives_the_sender_and_opens_a_transaction() -> None:
    decider = Decider()
    assert talk(HELO, MAIL, decide=decider)[1:] == ["250 2.1.0 Sender OK"]
    assert decider.events[1:] == [Mail("sender@example.org", [])]


@pytest.mark.parametrize("line", ["mail from:<sender@example.org>", "MAIL FROM: <sender@example.org>",
                                  "Mail From:<sender@example.org>  "])
def test_mail_is_read_in_any_case_and_spacing(line: str) -> None:
    decider = Decider()
    assert codes(HELO, line, decide=decider) == [250, 250]
    assert decider.events[1] == Mail("sender@example.org", [])


def test_the_null_sender_is_a_sender() -> None:
    decider = Decider()
    assert codes(HELO, "MAIL FROM:<>", RCPT, decide=decider) == [250, 250, 250]
    assert decider.events[1] == Mail("", [])


@pytest.mark.parametrize("line", ["MAIL", "MAIL FROM", "MAIL TO:<sender@example.org>", "MAIL <sender@example.org>"])
def test_mail_without_from_is_a_syntax_error(line: str) -> None:
    assert talk(HELO, line)[1:] == ["501 5.5.4 Syntax: MAIL FROM: <address>"]


@pytest.mark.parametrize("line", ["MAIL FROM:<sender@example.org", "MAIL FROM:<a@b@c>", "MAIL FROM:<@>"])
def test_an_unreadable_sender_is_refused(line: str) -> None:
    assert talk(HELO, line)[1:] == ["553 5.1.3 Error: malformed address"]


def test_a_local_part_past_64_octets_is_refused() -> None:
    assert codes(HELO, f"MAIL FROM:<{'a' * 64}@example.org>", "RSET",
                 f"MAIL FROM:<{'a' * 65}@example.org>") == [250, 250, 250, 553]


def test_mail_parameters_are_given_upper_cased() -> None:
    decider = Decider()
    assert codes("EHLO client.example", "MAIL FROM:<sender@example.org> body=8bitmime Size=1000 SMTPUTF8",
                 decide=decider) == [250, 250]
    assert decider.events[1] == Mail("sender@example.org", ["BODY=8BITMIME", "SIZE=1000", "SMTPUTF8"])


@pytest.mark.parametrize(("params", "answer"), [
    ("BODY=7BIT", "250 2.1.0 Sender OK"),
    ("BODY=BINARYMIME", "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
    ("BODY", "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
    ("SMTPUTF8=YES", "501 5.5.4 Error: SMTPUTF8 not accepted here"),
    ("SIZE", "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    ("SIZE=ten", "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    ("SIZE=-1", "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    ("SIZE=", "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    ("SIZE=10 =1", "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    ("=1", "553 5.1.3 Error: malformed address"),        # smtp.paths: a keyword starts the rest
    ("FOO=1", "555 5.5.4 Parameters not recognized or not implemented"),
    ("X-FOO", "555 5.5.4 Parameters not recognized or not implemented"),
    ("AUTH=<>", "555 5.5.4 Parameters not recognized or not implemented"),
    ("SIZE=10 FOO", "555 5.5.4 Parameters not recognized or not implemented"),
])
def test_mail_parameters(params: str, answer: str) -> None:
    assert talk("EHLO client.example", f"MAIL FROM:<sender@example.org> {params}")[1:] == [answer]


@pytest.mark.parametrize("params", ["SIZE=1000 SIZE=99999999999", "BODY=BINARYMIME BODY=8BITMIME", "SMTPUTF8 SMTPUTF8"])
def test_a_repeated_mail_parameter_is_refused(params: str) -> None:
    # Found by the differential: aiosmtpd reads the last SIZE (552 for the first case), the
    # relay the first. One keyword, one value: a second is not a parameter any reader agrees on.
    assert codes("EHLO client.example", f"MAIL FROM:<sender@example.org> {params}")[1:] == [501]


def test_smtputf8_is_refused_where_it_is_not_offered() -> None:
    assert talk("EHLO client.example", "MAIL FROM:<sender@example.org> SMTPUTF8",
                limits=CoreLimits(smtputf8=False))[1:] == ["501 5.5.4 Error: SMTPUTF8 not accepted here"]


def test_mail_parameters_after_helo_are_a_syntax_error() -> None:
    # HELO offered no extension (RFC 5321 §4.1.1.1): a parameter is not even read.
    assert talk(HELO, "MAIL FROM:<sender@example.org> BODY=8BITMIME")[1:] == [
        "501 5.5.4 Syntax: MAIL FROM: <address>"]


def test_a_nested_mail_is_out_of_sequence() -> None:
    assert talk(HELO, MAIL, MAIL)[1:] == ["250 2.1.0 Sender OK", "503 5.5.1 Error: nested MAIL command"]


def test_a_refused_sender_opens_no_transaction() -> None:
    decider = Decider(mail=[Reply(550, "5.7.1", "Sender refused")])
    assert codes(HELO, MAIL, RCPT, MAIL, RCPT, decide=decider) == [250, 550, 503, 250, 250]


# ---- RCPT ---------------------------------------------------------------------------------------

def test_rcpt_out_of_sequence() -> None:
    assert talk(RCPT, HELO, RCPT) == ["503 5.5.1 Error: send HELO first", "250 mx.test",
                                      "503 5.5.1 Error: need MAIL command"]


def test_rcpt_gives_the_recipient() -> None:
    decider = Decider()
    assert codes(HELO, MAIL, "rcpt to:<rcpt@example.com>", "RCPT TO: <other@example.com>", decide=decider) == [250] * 4
    assert decider.events[2:] == [Rcpt("rcpt@example.com", []), Rcpt("other@example.com", [])]


@pytest.mark.parametrize(("line", "answer"), [
    ("RCPT TO:<>", "501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]"),
    ("RCPT", "501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]"),
    ("RCPT FROM:<rcpt@example.com>", "501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]"),
    ("RCPT TO:<rcpt@example.com> NOTIFY=NEVER", "555 5.5.4 Parameters not recognized or not implemented"),
    ("RCPT TO:<rcpt@example.com> ORCPT=rfc822;rcpt@example.com",
     "555 5.5.4 Parameters not recognized or not implemented"),
    ("RCPT TO:<rcpt@example.com> FOO=", "501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]"),
    ("RCPT TO:<rcpt@example.com", "553 5.1.3 Error: malformed address"),
])
def test_rcpt_refusals(line: str, answer: str) -> None:
    decider = Decider()
    assert talk("EHLO client.example", MAIL, line, decide=decider)[2:] == [answer]
    assert not any(isinstance(event, Rcpt) for event in decider.events)


def test_rcpt_parameters_after_helo_are_a_syntax_error() -> None:
    assert talk(HELO, MAIL, "RCPT TO:<rcpt@example.com> NOTIFY=NEVER")[2:] == ["501 5.5.4 Syntax: RCPT TO: <address>"]


def test_a_refused_recipient_is_no_recipient() -> None:
    decider = Decider(rcpt=[Reply(550, "5.1.1", "No such user")])
    assert codes(HELO, MAIL, RCPT, "DATA", decide=decider) == [250, 250, 550, 503]


# ---- DATA ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("before", "answer"), [
    ((), "503 5.5.1 Error: send HELO first"),
    ((HELO,), "503 5.5.1 Error: need MAIL command"),
    ((HELO, MAIL), "503 5.5.1 Error: need RCPT command"),
])
def test_data_out_of_sequence(before: tuple[str, ...], answer: str) -> None:
    assert talk(*before, "DATA")[-1] == answer


def test_data_with_an_argument_is_a_syntax_error() -> None:
    assert talk(HELO, MAIL, RCPT, "DATA now")[-1] == "501 5.5.4 Syntax: DATA"


def test_a_message_is_read_whole_and_taken() -> None:
    decider = Decider()
    assert talk(*TRANSACTION, decide=decider) == OK_TRANSACTION
    assert decider.events[-1] == Message(b"Subject: hi\r\n\r\nhello\r\n")


@pytest.mark.parametrize(("body", "content"), [
    (b".\r\n", b""),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"..leading dot\r\n...two\r\n.\r\n", b".leading dot\r\n..two\r\n"),
    (b"a\r\n. \r\n.x\r\n.\r\n", b"a\r\n \r\nx\r\n"),       # a dot line that is not the terminator
])
def test_dot_stuffing_is_undone(body: bytes, content: bytes) -> None:
    decider = Decider()
    assert codes(HELO, MAIL, RCPT, "DATA", body, decide=decider)[-1] == 250
    assert [event for event in decider.events if isinstance(event, Message)] == [Message(content)]


def test_the_message_is_never_read_as_commands() -> None:
    decider = Decider()
    body = b"QUIT\r\nRSET\r\nMAIL FROM:<other@example.org>\r\n.\r\n"
    assert codes(HELO, MAIL, RCPT, "DATA", body, "NOOP", decide=decider) == [250, 250, 250, 354, 250, 250]
    assert decider.events[-1] == Message(b"QUIT\r\nRSET\r\nMAIL FROM:<other@example.org>\r\n")


def test_commands_pipelined_after_the_terminator_are_commands() -> None:
    decider = Decider()
    driver = session(HELO, MAIL, RCPT, "DATA", b"line\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<rcpt@example.com>\r\nQUIT\r\n",
                     decide=decider)
    assert [int(text[:3]) for text in replies(bytes(driver.output))] == [220, 250, 250, 250, 354, 250, 250, 250, 221]
    assert decider.events[3:] == [Message(b"line\r\n"), Mail("", []), Rcpt("rcpt@example.com", [])]
    assert driver.core.mode is Mode.CLOSED


def test_the_first_terminator_ends_the_message() -> None:
    decider = Decider()
    assert codes(HELO, MAIL, RCPT, "DATA", b"a\r\n.\r\n.\r\n", decide=decider)[3:] == [354, 250, 500]
    assert decider.events[-1] == Message(b"a\r\n")


def test_lines_after_a_refused_data_are_commands_not_a_message() -> None:
    decider = Decider()
    assert codes(HELO, MAIL, "DATA", b"QUIT\r\n.\r\n", decide=decider) == [250, 250, 503, 221]


def test_a_message_ends_the_transaction() -> None:
    assert codes(*TRANSACTION, RCPT, "DATA") == [250, 250, 250, 354, 250, 503, 503]


def test_a_refused_message_ends_the_transaction_too() -> None:
    decider = Decider(message=[Reply(554, "5.7.1", "Message rejected by policy")])
    assert codes(*TRANSACTION, RCPT, MAIL, decide=decider) == [250, 250, 250, 354, 554, 503, 250]


@pytest.mark.parametrize(("body", "answer"), [
    (b"one\ntwo\r\n.\r\n", "550 5.6.0 Bare CR or LF in message data is not allowed"),
    (b"one\rtwo\r\n.\r\n", "550 5.6.0 Bare CR or LF in message data is not allowed"),
    (b"end\n.\nMAIL FROM:<smuggled@example.org>\r\n.\r\n", "550 5.6.0 Bare CR or LF in message data is not allowed"),
    (b"one\0two\r\n.\r\n", "550 5.6.0 NUL in message data is not allowed"),
    (b"x" * 60 + b"\r\n.\r\n", "500 5.5.6 Line too long"),
    (b"x" * 40 + b"\r\n" * 40 + b".\r\n", "552 5.3.4 Message size exceeds fixed limit"),
])
def test_a_bad_message_is_refused_and_the_session_goes_on(body: bytes, answer: str) -> None:
    decider = Decider()
    limits = CoreLimits(max_line_length=50, max_message_size=100)
    found = talk(HELO, MAIL, RCPT, "DATA", body, MAIL, RCPT, "DATA", BODY, limits=limits, decide=decider)
    assert found[4:] == [answer, "250 2.1.0 Sender OK", "250 2.1.5 Recipient OK",
                         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 OK"]
    messages = [event for event in decider.events if isinstance(event, Message)]
    assert messages == [Message(b"Subject: hi\r\n\r\nhello\r\n")]


def test_the_longest_data_line_is_taken_dot_stuffed_or_not() -> None:
    decider = Decider()
    limits = CoreLimits(max_line_length=50)
    body = b"x" * 50 + b"\r\n." + b"y" * 50 + b"\r\n.\r\n"
    assert codes(HELO, MAIL, RCPT, "DATA", body, limits=limits, decide=decider)[-1] == 250
    assert decider.events[-1] == Message(b"x" * 50 + b"\r\n" + b"y" * 50 + b"\r\n")


# ---- RSET, NOOP, VRFY, EXPN, HELP, ETRN, QUIT ---------------------------------------------------

def test_rset_ends_the_transaction() -> None:
    decider = Decider()
    assert talk(HELO, MAIL, RCPT, "RSET", "DATA", MAIL, decide=decider)[3:] == [
        "250 2.0.0 OK", "503 5.5.1 Error: need MAIL command", "250 2.1.0 Sender OK"]
    assert Reset() in decider.events


def test_rset_with_an_argument_is_a_syntax_error() -> None:
    decider = Decider()
    assert talk(HELO, MAIL, "RSET now", MAIL, decide=decider)[2:] == [
        "501 5.5.4 Syntax: RSET", "503 5.5.1 Error: nested MAIL command"]
    assert Reset() not in decider.events


@pytest.mark.parametrize(("line", "answer"), [
    ("NOOP", "250 2.0.0 OK"),
    ("noop anything at all", "250 2.0.0 OK"),
    ("VRFY postmaster", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
    ("VRFY", "501 5.5.4 Syntax: VRFY <address>"),
    ("EXPN staff", "502 5.5.1 EXPN not implemented"),
    ("HELP", "214 2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"),
    ("HELP MAIL", "214 2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"),
    ("ETRN example.org", "502 5.5.1 Command not implemented"),
    ("QUIT now", "501 5.5.4 Syntax: QUIT"),
])
def test_commands_the_core_answers_itself(line: str, answer: str) -> None:
    decider = Decider()
    assert talk(line, decide=decider) == [answer]      # before HELO too
    assert decider.events == []


def test_quit_says_bye_and_closes() -> None:
    decider = Decider()
    driver = session(HELO, MAIL, "QUIT", "NOOP", decide=decider)
    assert replies(bytes(driver.output))[-1] == "221 2.0.0 Bye"
    assert len(replies(bytes(driver.output))) == 4     # the NOOP behind QUIT is never answered
    assert driver.core.mode is Mode.CLOSED and driver.core.ended
    driver.feed(b"NOOP\r\n")
    assert len(replies(bytes(driver.output))) == 4


# ---- lines that are not commands ----------------------------------------------------------------

@pytest.mark.parametrize(("line", "answer"), [
    ("FOO", '500 5.5.2 Error: command "FOO" not recognized'),
    ("etrnx bar", '500 5.5.2 Error: command "ETRNX" not recognized'),
    ("N0OP", "500 5.5.2 Command not recognized"),
    (" NOOP", "500 5.5.2 Command not recognized"),
    ("NOOP\tx", "500 5.5.2 Command not recognized"),     # SP alone ends the verb
    ("", "500 5.5.2 Error: bad syntax"),
    ("PROXY TCP4 203.0.113.7 192.0.2.1 5 25", '500 5.5.2 Error: command "PROXY" not recognized'),
])
def test_what_is_not_a_command(line: str, answer: str) -> None:
    assert talk(line, "NOOP") == [answer, "250 2.0.0 OK"]


@pytest.mark.parametrize("line", [b"NO\0OP\r\n", b"NOOP a\0b\r\n", b"\0\r\n", b"MAIL FROM:<a\0@example.org>\r\n"])
def test_a_nul_in_a_command_is_refused(line: bytes) -> None:
    decider = Decider()
    assert talk(HELO, line, "NOOP", decide=decider)[1:] == ["500 5.5.2 Syntax error", "250 2.0.0 OK"]
    assert len(decider.events) == 1


@pytest.mark.parametrize("line", [b"NOOP\nQUIT\r\n", b"NOOP\rQUIT\r\n", b"NOOP\r\r\n", b"NOOP\n", b"\n",
                                  b"EHLO a\nNOOP\r\n", b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.com>\r\n"])
def test_a_bare_newline_in_a_command_is_refused_and_closes(line: bytes) -> None:
    # As Postfix's smtpd_forbid_bare_newline: `EHLO a\nNOOP` is not two commands, nor one.
    decider = Decider()
    driver = session(HELO, line, "NOOP", decide=decider)
    assert replies(bytes(driver.output))[2:] == ["500 5.5.2 Bare CR or LF in command is not allowed"]
    assert len(decider.events) == 1          # nothing of the line reached the shell
    assert driver.exchanges[2].stage == "other"
    assert driver.core.mode is Mode.CLOSED


# ---- line lengths -------------------------------------------------------------------------------

def test_a_command_line_of_512_octets_is_read_and_513_is_not() -> None:
    longest = "NOOP " + "x" * (COMMAND_LINE_MAX - 2 - 5)
    assert len(longest) + 2 == COMMAND_LINE_MAX == 512
    assert talk(longest, longest + "x", "NOOP") == ["250 2.0.0 OK", "500 5.5.6 Line too long", "250 2.0.0 OK"]


def test_mail_and_rcpt_have_room_for_parameters() -> None:
    decider = Decider()
    start = "MAIL FROM:<sender@example.org> SIZE="
    longest = start + "1" * (PATH_LINE_MAX - 2 - len(start))
    assert len(longest) + 2 == PATH_LINE_MAX
    found = talk("EHLO client.example", longest + "1", longest, decide=decider)
    assert found[1:] == ["500 5.5.6 Line too long", "250 2.1.0 Sender OK"]
    rcpt = "RCPT TO:<" + "r" * 60 + "@" + ".".join(["d" * 60] * 15) + ".example>"
    assert PATH_LINE_MAX > len(rcpt) + 2 > COMMAND_LINE_MAX
    assert codes(HELO, MAIL, rcpt) == [250, 250, 250]


def test_an_auth_line_may_hold_12_kilobytes() -> None:
    decider = Decider(auth_challenges=0)
    response = "A" * 12288
    assert codes("EHLO client.example", f"AUTH PLAIN {response}", decide=decider) == [250, 235]
    assert decider.events[-1] == Auth(f"PLAIN {response}")
    too_long = "AUTH PLAIN " + "A" * (AUTH_LINE_MAX - 12)
    decider = Decider(auth_challenges=0)
    assert talk("EHLO client.example", too_long, "NOOP", decide=decider)[1:] == ["500 5.5.6 Line too long",
                                                                                "250 2.0.0 OK"]
    assert not any(isinstance(event, Auth) for event in decider.events)


@pytest.mark.parametrize("piece", [1000, 4096, AUTH_LINE_MAX + 1])
def test_a_line_longer_than_any_is_dropped_as_it_comes(piece: int) -> None:
    # A client that never ends its line: the core does not keep it (the shell's memory bound),
    # answers it once it ends, and reads the next line as a command.
    core = SmtpCore(LIMITS)
    driver = drive(core, [])
    for _ in range(40_000 // piece + 1):
        driver.feed(b"x" * piece)
        assert core.buffered <= AUTH_LINE_MAX + piece
    driver.feed(b"\r\nNOOP\r\n")
    assert replies(bytes(driver.output))[1:] == ["500 5.5.6 Line too long", "250 2.0.0 OK"]


def test_a_bare_cr_at_the_end_of_a_dropped_piece_is_a_bare_cr() -> None:
    # The dropped piece ends in CR and the line goes on: that CR had no LF after it.
    core = SmtpCore(LIMITS)
    driver = drive(core, [])
    driver.feed(b"x" * (AUTH_LINE_MAX + 10) + b"\r")
    driver.feed(b"yyy\r\nNOOP\r\n")
    assert replies(bytes(driver.output))[1:] == ["500 5.5.2 Bare CR or LF in command is not allowed"]
    assert core.mode is Mode.CLOSED


def test_a_dropped_piece_ending_in_the_cr_of_its_crlf_is_no_bare_cr() -> None:
    core = SmtpCore(LIMITS)
    driver = drive(core, [])
    driver.feed(b"x" * (AUTH_LINE_MAX + 10) + b"\r")
    driver.feed(b"\nNOOP\r\n")
    assert replies(bytes(driver.output))[1:] == ["500 5.5.6 Line too long", "250 2.0.0 OK"]


def test_8bit_arguments_are_refused_in_strict_ascii_mode() -> None:
    strict = CoreLimits(smtputf8=False)
    refused = "500 5.5.2 Error: strict ASCII mode"
    assert talk(b"HELO h\xc3\xa9llo.example\r\n", b"NOOP caf\xc3\xa9\r\n", HELO,
                b"MAIL FROM:<j\xc3\xb6rg@example.org>\r\n", limits=strict) == [refused, refused, "250 mx.test", refused]


def test_8bit_arguments_are_read_as_utf8_where_smtputf8_is_offered() -> None:
    decider = Decider()
    assert codes(b"EHLO h\xc3\xa9llo.example\r\n", b"MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8\r\n",
                 decide=decider) == [250, 250]
    assert decider.events == [Hello("héllo.example", True), Mail("jörg@example.org", ["SMTPUTF8"])]


def test_an_8bit_verb_is_no_command() -> None:
    assert talk(b"N\xc3\x96OP\r\n") == ["500 5.5.2 Command not recognized"]


def test_closed_is_final() -> None:
    core = SmtpCore(LIMITS)
    core.send(GREETING)
    core.close()
    core.tls_started()
    assert core.mode is Mode.CLOSED


# ---- max_errors ---------------------------------------------------------------------------------

def test_max_errors_closes_with_421() -> None:
    driver = session("FOO", "BAR", "BAZ", "NOOP", limits=CoreLimits(max_errors=3))
    assert replies(bytes(driver.output))[1:] == [
        '500 5.5.2 Error: command "FOO" not recognized', '500 5.5.2 Error: command "BAR" not recognized',
        '500 5.5.2 Error: command "BAZ" not recognized', "421 4.7.0 Too many errors, closing connection"]
    assert driver.core.mode is Mode.CLOSED
    last = driver.exchanges[-1].event
    assert isinstance(last, Answer) and last.reason == "max_errors (3)"


def test_every_kind_of_error_reply_counts() -> None:
    decider = Decider(rcpt=[Reply(550, "5.1.1", "No such user")], mail=[reply.SPOOL_FULL])
    found = codes(MAIL, HELO, MAIL, MAIL, RCPT, limits=CoreLimits(max_errors=3), decide=decider)
    assert found == [503, 250, 452, 250, 550, 421]


def test_a_message_taken_forgives_earlier_errors() -> None:
    limits = CoreLimits(max_errors=3)
    assert 421 not in codes(HELO, "FOO", "FOO", MAIL, RCPT, "DATA", BODY, "FOO", "FOO", limits=limits)
    assert codes(HELO, "FOO", "FOO", MAIL, RCPT, "DATA", BODY, "FOO", "FOO", "FOO", limits=limits)[-2:] == [500, 421]


def test_a_refused_message_forgives_nothing() -> None:
    decider = Decider(message=[Reply(554, "5.7.1", "Message rejected by policy")])
    assert codes(HELO, "FOO", "FOO", MAIL, RCPT, "DATA", BODY, limits=CoreLimits(max_errors=3),
                 decide=decider)[-2:] == [554, 421]


def test_a_recipient_past_the_limit_is_not_an_error() -> None:
    # RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
    decider = Decider(rcpt=[reply.RECIPIENT_OK] + [reply.TOO_MANY_RECIPIENTS] * 20)
    driver = session(HELO, MAIL, *[RCPT] * 21, "DATA", BODY, limits=CoreLimits(max_errors=2), decide=decider)
    found = [int(text[:3]) for text in replies(bytes(driver.output))]
    assert found == [220, 250, 250, 250] + [452] * 20 + [354, 250]
    assert driver.core.errors == 0
    assert not driver.core.is_error(reply.TOO_MANY_RECIPIENTS) and driver.core.is_error(reply.SPOOL_FULL)


def test_421_is_not_counted_as_an_error() -> None:
    assert not SmtpCore(LIMITS).is_error(reply.TOO_MANY_ERRORS)


# ---- max_commands -------------------------------------------------------------------------------

@pytest.mark.parametrize("junk", ["NOOP", "RSET", "VRFY postmaster", "EXPN staff", "HELP", "ETRN example.org"])
def test_junk_commands_are_bounded(junk: str) -> None:
    driver = session(*[junk] * 10, limits=CoreLimits(max_commands=5, max_errors=100))
    found = replies(bytes(driver.output))
    assert found[-1] == "421 4.7.0 Too many commands, closing connection"
    assert len(found) < 10 and driver.core.mode is Mode.CLOSED


def test_the_six_junk_commands_count_together() -> None:
    junk = ["NOOP", "RSET", "VRFY postmaster", "EXPN staff", "HELP", "ETRN example.org", "NOOP", "NOOP"]
    assert codes(*junk, limits=CoreLimits(max_commands=5, max_errors=100))[-1] == 421
    assert 421 not in codes(*junk[:4], limits=CoreLimits(max_commands=5, max_errors=100))


def test_max_commands_junk_commands_then_421() -> None:
    # The docstring: "`max_commands` junk commands ..., then `421 4.7.0`", as max_errors.
    assert codes(*["NOOP"] * 4, limits=CoreLimits(max_commands=3)) == [250, 250, 250, 421]


def test_recipients_within_the_limit_are_never_junk() -> None:
    limits = CoreLimits(max_commands=10)
    found = codes(HELO, MAIL, *[f"RCPT TO:<r{n}@example.com>" for n in range(100)], "DATA", BODY, "QUIT", limits=limits)
    assert found == [250, 250] + [250] * 100 + [354, 250, 221]


def test_recipients_past_the_limit_are_junk() -> None:
    decider = Decider(rcpt=[reply.RECIPIENT_OK] * 2 + [reply.TOO_MANY_RECIPIENTS] * 20)
    found = talk(HELO, MAIL, *[RCPT] * 22, limits=CoreLimits(max_commands=3, max_errors=2), decide=decider)
    assert found[-1] == "421 4.7.0 Too many commands, closing connection"
    assert found.count("452 4.5.3 Too many recipients") < 6


def test_hello_mail_and_refused_commands_are_not_junk() -> None:
    lines = ["EHLO a.example", "HELO b.example", MAIL] * 3 + ["FOO", "DATA", "QUIT now"] * 2
    assert 421 not in codes(*lines, limits=CoreLimits(max_commands=3, max_errors=100))


# ---- STARTTLS -----------------------------------------------------------------------------------

def starttls_session(*before: str) -> tuple[SmtpCore, Driver, Decider]:
    decider = Decider(starttls=reply.TLS_READY)
    driver = session(*before, "STARTTLS", MAIL, "RCPT TO:<injected@example.com>", decide=decider)
    return driver.core, driver, decider


def test_what_follows_starttls_before_the_handshake_is_discarded() -> None:
    core, driver, decider = starttls_session("EHLO client.example")
    assert replies(bytes(driver.output))[-1] == "220 2.0.0 Ready to start TLS"
    assert core.mode is Mode.TLS and core.next_event() is None
    pipelined = len(wire(MAIL, "RCPT TO:<injected@example.com>"))
    assert core.discarded == pipelined and core.buffered == 0
    driver.feed(b"RSET\r\n")                  # still before the handshake: injected plaintext too
    assert core.discarded == pipelined + 6 and core.buffered == 0
    core.tls_started()
    driver.drain()
    assert decider.events == [Hello("client.example", True), StartTls()]
    assert len(replies(bytes(driver.output))) == 3


def test_tls_started_forgets_hello_auth_and_the_transaction() -> None:
    decider = Decider(starttls=reply.TLS_READY)
    driver = session("EHLO client.example", MAIL, "STARTTLS", decide=decider)
    core = driver.core
    core.auth_user = "someone"
    core.tls_started()
    assert (core.tls, core.helo, core.extended, core.auth_user, core.in_transaction) == (True, None, False, None, False)
    assert core.mode is Mode.COMMAND
    driver.feed(wire(MAIL, RCPT, "EHLO client.example", MAIL))
    assert [int(text[:3]) for text in replies(bytes(driver.output))][-4:] == [503, 503, 250, 250]


def test_a_refused_starttls_leaves_pipelined_commands_as_commands() -> None:
    decider = Decider()
    assert codes("EHLO client.example", "STARTTLS", MAIL, decide=decider) == [250, 502, 250]
    assert decider.events[1:] == [StartTls(), Mail("sender@example.org", [])]


def test_starttls_with_an_argument_is_a_syntax_error() -> None:
    assert talk("STARTTLS now") == ["501 5.5.4 Syntax: STARTTLS"]


# ---- AUTH ---------------------------------------------------------------------------------------

def test_after_a_challenge_the_next_line_is_the_answer_not_a_command() -> None:
    decider = Decider(auth_challenges=2)
    found = talk("EHLO client.example", "AUTH LOGIN", "QUIT", "MAIL FROM:<x@example.org>", "NOOP", decide=decider)
    assert found[1:] == ["334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6", "235 2.7.0 Authentication successful", "250 2.0.0 OK"]
    assert decider.events[1:] == [Auth("LOGIN"), AuthAnswer("QUIT"), AuthAnswer("MAIL FROM:<x@example.org>")]


def test_an_auth_exchange_may_be_aborted() -> None:
    decider = Decider(auth_challenges=1)
    assert codes("EHLO client.example", "AUTH LOGIN", "*", "NOOP", decide=decider) == [250, 334, 501, 250]


def test_an_auth_answer_of_12_kilobytes_is_read_and_a_longer_one_ends_the_exchange() -> None:
    decider = Decider(auth_challenges=1)
    assert codes("EHLO client.example", "AUTH PLAIN", "A" * 12288, decide=decider) == [250, 334, 235]
    decider = Decider(auth_challenges=1)
    found = talk("EHLO client.example", "AUTH PLAIN", "A" * AUTH_LINE_MAX, "NOOP", decide=decider)
    assert found[1:] == ["334 VXNlcm5hbWU6", "500 5.5.6 Line too long", "250 2.0.0 OK"]


def test_without_a_challenge_the_next_line_is_a_command() -> None:
    decider = Decider()             # AUTH not offered
    assert talk("EHLO client.example", "AUTH PLAIN AGFiYwA=", "NOOP", decide=decider)[1:] == [
        "503 5.5.1 Authentication not enabled", "250 2.0.0 OK"]


# ---- the PROXY header ---------------------------------------------------------------------------

V1_HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\r\n"


def v2_header(source: str, port: int) -> bytes:
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("192.0.2.1").packed
    body = addresses + struct.pack("!HH", port, 25)
    return proxy.V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(("header", "version", "port"), [(V1_HEADER, 1, 51234),
                                                         (v2_header("203.0.113.7", 40000), 2, 40000)])
def test_the_proxy_header_is_read_however_it_is_cut(header: bytes, version: int, port: int) -> None:
    behind = b"\x16\x03\x01 a ClientHello, or EHLO"
    for cut in range(1, len(header) + 1):
        core = SmtpCore(LIMITS, expect_proxy=True)
        core.receive(header[:cut])
        if cut < len(header):
            assert core.next_event() is None and core.mode is Mode.PROXY
        core.receive(header[cut:] + behind)
        event = core.next_event()
        assert isinstance(event, ProxyHeader)
        assert (event.header.version, event.header.source, event.header.source_port) == (
            version, ipaddress.ip_address("203.0.113.7"), port)
        assert core.mode is Mode.GREETING
        assert core.unread() == behind and core.buffered == 0


@pytest.mark.parametrize("data", [b"EHLO client.example\r\n", b"PROXY TCP4 203.0.113.7\r\n", b"\x16\x03\x01\x02\x00",
                                  b"PROXY " + b"1" * 200, proxy.V2_SIGNATURE + b"\x21\x11\xff\xff"])
def test_anything_but_a_proxy_header_is_refused(data: bytes) -> None:
    core = SmtpCore(LIMITS, expect_proxy=True)
    core.receive(data)
    assert isinstance(core.next_event(), BadProxyHeader)


def test_a_client_gone_before_the_header_is_refused() -> None:
    core = SmtpCore(LIMITS, expect_proxy=True)
    core.receive(V1_HEADER[:10])
    assert core.next_event() is None
    core.end_of_input()
    assert core.next_event() == BadProxyHeader("connection closed before the PROXY header")


def test_the_driver_closes_on_a_bad_header_without_a_word() -> None:
    driver = drive(SmtpCore(LIMITS, expect_proxy=True), [b"EHLO client.example\r\n"])
    assert driver.output == b"" and driver.core.mode is Mode.CLOSED


def test_after_the_proxy_header_and_the_greeting_commands_are_served() -> None:
    driver = drive(SmtpCore(LIMITS, expect_proxy=True), [V1_HEADER + b"EHLO client.example\r\nQUIT\r\n"])
    assert [text[:3] for text in replies(bytes(driver.output))] == ["220", "250", "221"]


# ---- the stage of each reply --------------------------------------------------------------------

def test_each_reply_is_counted_under_the_command_it_answers() -> None:
    decider = Decider(auth_challenges=1)
    driver = session("EHLO client.example", "AUTH LOGIN", "dXNlcg==", "HELO client.example", MAIL, "RSET", MAIL,
                     RCPT, "DATA", BODY, "NOOP", "VRFY x", "FOO", "", "STARTTLS", "QUIT", decide=decider)
    assert [exchange.stage for exchange in driver.exchanges] == [
        "connect", "helo", "auth", "auth", "helo", "mail", "mail", "mail", "rcpt", "data", "data",
        "other", "other", "other", "other", "starttls", "quit"]


def test_a_refused_message_is_counted_under_data() -> None:
    driver = session(HELO, MAIL, RCPT, "DATA", b"bare\nline\r\n.\r\n", limits=LIMITS)
    assert (driver.exchanges[-1].stage, driver.exchanges[-1].reply.code) == ("data", 550)
