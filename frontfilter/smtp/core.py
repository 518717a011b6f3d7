"""The SMTP server session as a state machine: bytes in, events out; replies in, bytes out.

No sockets, no asyncio, no clock (in the spirit of h11 and hypercorn's protocol cores): the
asyncio shell (`smtp.session`) feeds what the client sent to `receive`, asks `next_event` what
to do, decides (policy, rules, delivery) and hands its `Reply` to `send`, which returns the
bytes to write. The core parses the command lines and answers what needs no decision — syntax,
order of commands, NOOP, VRFY, HELP, QUIT — as `Answer` events, so every reply of a session,
its own or the shell's, leaves through the shell's one writing function. One pending event at
a time: until it is answered, pipelined input waits in the buffer (the shell stops reading
past `PAUSE_READING_AT`). One state for the whole connection, across STARTTLS.

What it holds the client to, and why:
- A command line must end in CRLF and hold no other CR or LF (a bare one is refused and the
  connection closed, as Postfix's `smtpd_forbid_bare_newline`: `EHLO a\\nNOOP` is not two
  commands here), nor a NUL.
- Command lines are at most `COMMAND_LINE_MAX` octets (RFC 5321 §4.5.3.1.4), MAIL and RCPT
  `PATH_LINE_MAX` (room for ESMTP parameters, RFC 5321 §4.5.3.1), AUTH lines `AUTH_LINE_MAX`
  (RFC 4954 §4); a longer line is read to its end, dropped, and answered `500 5.5.6`.
- DATA is read by `smtp.data.DataCollector` (bare CR/LF, NUL, long lines, size).
- STARTTLS (RFC 3207 §4.2): whatever the client sent after the command and before the
  handshake is discarded unread (CVE-2011-0411), and everything learnt before TLS — HELO,
  AUTH, the transaction — is forgotten once TLS is up.
- Bounds per session: `max_errors` error replies since the last message taken, then
  `421 4.7.0`; `max_commands` junk commands (as Postfix counts them: NOOP, RSET, VRFY, EXPN,
  HELP, ETRN, and recipients past the recipient limit), then `421 4.7.0`. RCPT within the
  limit is never junk, so `server.max_recipients` can always be reached, and `452 4.5.3` for
  a recipient past it is not an error (RFC 5321 §4.5.3.1.10: the client sends the rest in
  another transaction).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from frontfilter import reply
from frontfilter.reply import Reply
from frontfilter.smtp import proxy
from frontfilter.smtp.budget import DataBudget
from frontfilter.smtp.data import DataCollector, DataProblem, SpilledBody
from frontfilter.smtp.paths import parse_path

COMMAND_LINE_MAX = 512          # octets with CRLF (RFC 5321 §4.5.3.1.4)
PATH_LINE_MAX = 1024            # MAIL and RCPT with ESMTP parameters (SIZE, BODY, SMTPUTF8, ...)
AUTH_LINE_MAX = 12288 + 64      # an AUTH initial response or a challenge answer (RFC 4954 §4)
PAUSE_READING_AT = 64 * 1024    # unread pipelined input the shell lets wait before it pauses
LOCAL_PART_MAX = 64             # RFC 5321 §4.5.3.1.1

HELP_TEXT = "Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "ETRN"})


# ---- events -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """The PROXY header was read (proxy listeners only): `header.source` is the real client."""
    header: proxy.ProxyHeader


@dataclass(frozen=True, slots=True)
class BadProxyHeader:
    reason: str


@dataclass(frozen=True, slots=True)
class Hello:
    name: str
    extended: bool          # EHLO rather than HELO


@dataclass(frozen=True, slots=True)
class Mail:
    address: str            # "" for the null reverse-path
    options: list[str]      # the ESMTP parameters, upper-cased


@dataclass(frozen=True, slots=True)
class Rcpt:
    address: str
    options: list[str]


@dataclass(frozen=True, slots=True)
class Message:
    content: bytes | SpilledBody    # unstuffed, every line checked (smtp.data); or in its spill file


@dataclass(frozen=True, slots=True)
class Reset:
    pass


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    argument: str           # "mechanism [initial-response]", as sent


@dataclass(frozen=True, slots=True)
class AuthAnswer:
    text: str               # the client's line after a 334 challenge


@dataclass(frozen=True, slots=True)
class Answer:
    """The core's own reply: send it as it is. `reason` says why, for the log, on refusals."""
    reply: Reply
    reason: str = ""


Event = ProxyHeader | BadProxyHeader | Hello | Mail | Rcpt | Message | Reset | StartTls | Auth | AuthAnswer | Answer


class Mode(enum.Enum):
    PROXY = "proxy"               # waiting for the PROXY header
    GREETING = "greeting"         # waiting for the shell's greeting (or refusal)
    COMMAND = "command"
    DATA = "data"                 # 354 sent: the message is being read
    AUTH = "auth"                 # a 334 challenge sent: the next line is its answer
    TLS = "tls"                   # 220 to STARTTLS sent: waiting for the handshake
    CLOSED = "closed"             # a closing reply sent, or the client went away


@dataclass(frozen=True)
class CoreLimits:
    max_line_length: int = 998          # DATA lines (RFC 5321 §4.5.3.1.6)
    max_message_size: int = 10 * 1024 * 1024
    max_commands: int = 1000            # junk commands per session
    max_errors: int = 10                # error replies since the last message taken
    smtputf8: bool = True
    budget: DataBudget | None = None    # DATA held in memory by the whole process (budget.py)
    spill_size: int = 0                 # DATA past this goes to `spill()`'s file (smtp/data.py)
    spill: Callable[[], IO[bytes]] | None = None


class SmtpCore:
    """One client connection's SMTP state. Not thread-safe; one per connection."""

    def __init__(self, limits: CoreLimits, *, expect_proxy: bool = False):
        self.limits = limits
        self.mode = Mode.PROXY if expect_proxy else Mode.GREETING
        self.stage = "connect"          # the command the pending reply answers (metric label)
        self.helo: str | None = None
        self.extended = False
        self.tls = False
        self.auth_user: str | None = None   # set by the shell when AUTH succeeds
        self.in_transaction = False     # MAIL accepted, not yet ended
        self.recipients = 0
        self.errors = 0
        self.junk = 0
        self.discarded = 0              # plaintext octets thrown away at STARTTLS
        self._buffer = bytearray()
        self._pending: Event | None = None     # given out by next_event, not yet answered
        self._queued: Answer | None = None     # a limit's closing reply, due next
        self._collector: DataCollector | None = None
        self._deciding: DataCollector | None = None    # the message with the handler: its bytes held
        self._skipping = False          # inside an over-long line: dropped up to its LF
        self._skip_bare = False         # a bare CR in what was dropped of it
        self._skip_cr = False           # what was dropped of it ended with a CR
        self._eof = False

    # ---- input ------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def ended(self) -> bool:
        """No event will come any more: closed, or the client's input ended with nothing left
        to answer (whole commands it pipelined before ending are still answered; a message
        without its terminator never will be)."""
        if self.mode is Mode.CLOSED:
            return True
        if not self._eof or self._pending is not None or self._queued is not None:
            return False
        if self.mode is Mode.DATA:
            return self._collector is None or not self._collector.done
        if self.mode in (Mode.COMMAND, Mode.AUTH):
            return b"\n" not in self._buffer
        return True

    def receive(self, data: bytes) -> None:
        if self.mode is Mode.CLOSED:
            return
        if self.mode is Mode.TLS:       # sent before the handshake: injected plaintext, never read
            self.discarded += len(data)
            return
        if self._collector is not None and not self._collector.done:
            self._feed_message(data)
            return
        self._buffer += data

    def end_of_input(self) -> None:
        self._eof = True

    def unread(self) -> bytes:
        """Take what was received and not read: the ClientHello behind a PROXY header."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # ---- events -----------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """What the shell must answer next, or None: more input is needed, or the last event
        is not answered yet, or the session is over."""
        if self._pending is not None or self.mode in (Mode.CLOSED, Mode.TLS, Mode.GREETING):
            return None
        if self._queued is not None:
            event: Event | None = self._queued
            self._queued = None
        elif self.mode is Mode.PROXY:
            return self._proxy_header()     # answered by no reply: nothing left pending
        elif self.mode is Mode.DATA:
            event = self._message_event()
        else:
            event = self._command()
        self._pending = event
        return event

    def _proxy_header(self) -> Event | None:
        try:
            found = proxy.parse_header(bytes(self._buffer[:proxy.HEADER_MAX]))
        except proxy.ProxyError as error:
            return BadProxyHeader(str(error))
        if found is None:
            if len(self._buffer) >= proxy.HEADER_MAX or self._eof:
                return BadProxyHeader("connection closed before the PROXY header" if self._eof
                                      else "no PROXY header")
            return None
        header, length = found
        del self._buffer[:length]
        self.mode = Mode.GREETING
        return ProxyHeader(header)

    def _message_event(self) -> Event | None:
        collector = self._collector
        assert collector is not None
        if not collector.done:
            return None
        self._collector = None
        message, problem = collector.result()
        self.stage = "data"
        if problem is not None:
            collector.release()
            return Answer(*data_refusal(problem))
        assert message is not None
        self._deciding = collector      # held until its verdict is sent (send, close)
        return Message(message)

    def _command(self) -> Event | None:
        """The next line read as a command (or as the answer to a 334 challenge).

        A line longer than `AUTH_LINE_MAX` is answered `500 5.5.6` however it arrives: whole,
        or dropped piece by piece while its end has not come (so it never fills memory). Either
        way its line ending is judged as any other's: a bare CR or LF anywhere in it, even in
        the dropped pieces or split between them, closes the session."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= AUTH_LINE_MAX:    # no line is this long: drop it up to its end
                self._drop(bytes(self._buffer))
                self._buffer.clear()
            return None
        raw = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        if self._skipping:
            bare = (self._skip_bare or b"\r" in raw[:-2]
                    or (self._skip_cr and not raw.startswith(b"\n"))
                    or not (raw.endswith(b"\r\n") or (raw == b"\n" and self._skip_cr)))
            self._skipping = self._skip_bare = self._skip_cr = False
            too_long = True
        else:
            bare = not raw.endswith(b"\r\n") or b"\r" in raw[:-2]
            too_long = len(raw) > AUTH_LINE_MAX
        if bare:
            self.stage = "other"
            return Answer(reply.BARE_NEWLINE_COMMAND, "bare CR or LF in command")
        if too_long:
            if self.mode is Mode.AUTH:
                self.mode = Mode.COMMAND
            return Answer(reply.LINE_TOO_LONG, "command line too long")
        if self.mode is Mode.AUTH:
            self.mode = Mode.COMMAND
            return AuthAnswer(raw[:-2].decode("ascii", "replace"))
        return self._parse(raw[:-2])

    def _drop(self, piece: bytes) -> None:
        """Forget a piece of an over-long line, remembering what its line ending needs to know:
        a CR not followed by LF in it, or one at its very end (the LF may open the next)."""
        self._skip_bare = (self._skip_bare or b"\r" in piece[:-1]
                           or (self._skip_cr and not piece.startswith(b"\n")))
        self._skip_cr = piece.endswith(b"\r")
        self._skipping = True

    def _parse(self, line: bytes) -> Event:
        verb_bytes, _, arg_bytes = line.partition(b" ")
        verb = verb_bytes.upper().decode("ascii", "replace")
        self.stage = _STAGE_OF.get(verb, "other")
        if not line:
            return Answer(reply.EMPTY_LINE, "empty command line")
        if b"\0" in line:
            return Answer(reply.SYNTAX_ERROR, "NUL in command")
        if not verb_bytes.isascii() or not verb.isalpha():
            return Answer(reply.UNKNOWN_COMMAND, "command not recognized")
        limit = AUTH_LINE_MAX if verb == "AUTH" else PATH_LINE_MAX if verb in ("MAIL", "RCPT") else COMMAND_LINE_MAX
        if len(line) + 2 > limit:
            return Answer(reply.LINE_TOO_LONG, "command line too long")
        try:
            arg = arg_bytes.strip().decode("utf-8" if self.limits.smtputf8 else "ascii",
                                           "surrogateescape" if self.limits.smtputf8 else "strict")
        except UnicodeDecodeError:
            return Answer(reply.SYNTAX_ERROR.with_text("Error: strict ASCII mode"), "8-bit command")
        if verb in JUNK_COMMANDS:
            self.junk += 1
            if self.junk > self.limits.max_commands:
                return Answer(reply.TOO_MANY_COMMANDS, f"max_commands ({self.limits.max_commands})")
        handler = _COMMANDS.get(verb)
        if handler is None:
            return Answer(reply.UNKNOWN_COMMAND.with_text(f'Error: command "{verb}" not recognized'),
                          "command not recognized")
        return handler(self, arg)

    # ---- commands ---------------------------------------------------------------------------

    def _helo(self, arg: str, extended: bool) -> Event:
        if not arg:
            syntax = "Syntax: EHLO hostname" if extended else "Syntax: HELO hostname"
            return Answer(reply.SYNTAX_ARGUMENT.with_text(syntax), "no hostname")
        return Hello(arg, extended)

    def _mail(self, arg: str) -> Event:
        if self.helo is None:
            return Answer(reply.NEED_HELO, "MAIL before HELO")
        syntax = reply.SYNTAX_ARGUMENT.with_text(
            "Syntax: MAIL FROM: <address>" + (" [SP <mail-parameters>]" if self.extended else ""))
        if not arg[:5].upper() == "FROM:":
            return Answer(syntax, "MAIL without FROM:")
        path = parse_path(arg[5:], local_part_limit=LOCAL_PART_MAX)
        if path is None:
            return Answer(reply.BAD_ADDRESS, "sender path unreadable")
        address, rest = path
        if rest and not self.extended:
            return Answer(syntax, "parameters after HELO")
        if self.in_transaction:
            return Answer(reply.NESTED_MAIL, "nested MAIL")
        options = rest.upper().split()
        params = _parameters(options)
        if params is None:
            return Answer(syntax, "malformed parameter")
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Error: BODY can only be one of 7BIT, 8BITMIME"),
                          "unknown BODY")
        smtputf8 = params.pop("SMTPUTF8", False)
        if smtputf8 is not False and (smtputf8 is not True or not self.limits.smtputf8):
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Error: SMTPUTF8 not accepted here"), "SMTPUTF8")
        size = params.pop("SIZE", None)
        if size is not None and (not isinstance(size, str) or not size.isdigit()):
            return Answer(syntax, "malformed SIZE")
        if params:
            return Answer(reply.UNKNOWN_PARAMETER, "unknown MAIL parameter")
        return Mail(address, options)

    def _rcpt(self, arg: str) -> Event:
        if self.helo is None:
            return Answer(reply.NEED_HELO, "RCPT before HELO")
        if not self.in_transaction:
            return Answer(reply.NEED_MAIL, "RCPT before MAIL")
        syntax = reply.SYNTAX_ARGUMENT.with_text(
            "Syntax: RCPT TO: <address>" + (" [SP <mail-parameters>]" if self.extended else ""))
        if not arg[:3].upper() == "TO:":
            return Answer(syntax, "RCPT without TO:")
        path = parse_path(arg[3:], local_part_limit=LOCAL_PART_MAX)
        if path is None:
            return Answer(reply.BAD_ADDRESS, "recipient path unreadable")
        address, rest = path
        if not address:
            return Answer(syntax, "null recipient")
        if rest and not self.extended:
            return Answer(syntax, "parameters after HELO")
        options = rest.upper().split()
        if _parameters(options) is None:
            return Answer(syntax, "malformed parameter")
        if options:          # DSN (NOTIFY, ORCPT) is not offered
            return Answer(reply.UNKNOWN_PARAMETER, "unknown RCPT parameter")
        return Rcpt(address, options)

    def _data(self, arg: str) -> Event:
        if self.helo is None:
            return Answer(reply.NEED_HELO, "DATA before HELO")
        if not self.in_transaction:
            return Answer(reply.NEED_MAIL, "DATA before MAIL")
        if not self.recipients:
            return Answer(reply.NEED_RCPT, "DATA before RCPT")
        if arg:
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Syntax: DATA"), "DATA with an argument")
        if self.limits.budget is not None and self.limits.budget.spent:
            return Answer(reply.NO_ROOM_FOR_DATA, "limits.max_data_in_memory spent")
        return Answer(reply.START_DATA)

    def _rset(self, arg: str) -> Event:
        if arg:
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Syntax: RSET"), "RSET with an argument")
        return Reset()

    def _noop(self, arg: str) -> Event:
        return Answer(reply.OK)

    def _vrfy(self, arg: str) -> Event:
        if not arg:
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Syntax: VRFY <address>"), "VRFY without address")
        return Answer(reply.CANNOT_VRFY)

    def _expn(self, arg: str) -> Event:
        return Answer(reply.EXPN_NOT_IMPLEMENTED, "EXPN")

    def _etrn(self, arg: str) -> Event:
        return Answer(reply.NOT_IMPLEMENTED, "ETRN")

    def _help(self, arg: str) -> Event:
        return Answer(reply.HELP.with_text(HELP_TEXT))

    def _quit(self, arg: str) -> Event:
        if arg:
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Syntax: QUIT"), "QUIT with an argument")
        return Answer(reply.BYE)

    def _starttls(self, arg: str) -> Event:
        if arg:
            return Answer(reply.SYNTAX_ARGUMENT.with_text("Syntax: STARTTLS"), "STARTTLS with an argument")
        return StartTls()

    def _auth(self, arg: str) -> Event:
        return Auth(arg)

    # ---- output -----------------------------------------------------------------------------

    def is_error(self, answer: Reply) -> bool:
        """Whether `answer` counts toward `max_errors` (and the shell's tarpit)."""
        return answer.code >= 400 and answer.code != 421 and not _past_recipient_limit(answer)

    def send(self, answer: Reply) -> bytes:
        """The bytes of `answer` to the pending event (or an unprompted one: the greeting, a
        timeout, shutdown), with the state moved on accordingly."""
        event, self._pending = self._pending, None
        if self.mode is Mode.CLOSED:
            return b""
        self._moved_on(event, answer)
        if answer.close or answer.code == 421:
            self.mode = Mode.CLOSED
            self._buffer.clear()
            self._release()
        elif self.is_error(answer):
            self.errors += 1
        if self.mode is not Mode.CLOSED and self._queued is None:
            if self.errors >= self.limits.max_errors:
                self._queued = Answer(reply.TOO_MANY_ERRORS, f"max_errors ({self.limits.max_errors})")
            elif self.junk > self.limits.max_commands:
                self._queued = Answer(reply.TOO_MANY_COMMANDS, f"max_commands ({self.limits.max_commands})")
        return (answer.wire + "\r\n").encode("utf-8", "replace")

    def _moved_on(self, event: Event | None, answer: Reply) -> None:
        success = answer.code < 400
        if self.mode is Mode.GREETING and event is None:
            if success:
                self.mode = Mode.COMMAND
            return
        if isinstance(event, Hello):
            # HELO/EHLO ends a transaction (RFC 5321 §4.1.4), refused or not: the shell has
            # already told the handler to reset before it asked about the name.
            self.in_transaction, self.recipients = False, 0
            if success:
                self.helo, self.extended = event.name, event.extended
        elif isinstance(event, Mail):
            self.in_transaction = success
        elif isinstance(event, Rcpt):
            if success:
                self.recipients += 1
            elif _past_recipient_limit(answer):
                self.junk += 1
        elif isinstance(event, Answer) and event.reply.code == 354 and answer.code == 354:
            self.mode = Mode.DATA
            self._collector = DataCollector(max_size=self.limits.max_message_size,
                                            max_line=self.limits.max_line_length, budget=self.limits.budget,
                                            spill_size=self.limits.spill_size, spill=self.limits.spill)
            if self._buffer:           # the message pipelined behind DATA
                data = bytes(self._buffer)
                self._buffer.clear()
                self._feed_message(data)
        elif isinstance(event, Message) or (isinstance(event, Answer) and self.mode is Mode.DATA):
            self._release()
            self.mode = Mode.COMMAND
            self.in_transaction, self.recipients = False, 0
            if success:
                # A message taken forgives the session's earlier errors, as Postfix does:
                # max_errors and the tarpit are for clients that err without delivering.
                self.errors = 0
        elif isinstance(event, Reset):
            self.in_transaction, self.recipients = False, 0
        elif isinstance(event, StartTls) and answer.code == 220:
            self.mode = Mode.TLS
            self.discarded += len(self._buffer)
            self._buffer.clear()
        if answer.code == 334:
            self.mode = Mode.AUTH

    def _feed_message(self, data: bytes) -> None:
        collector = self._collector
        assert collector is not None
        leftover = collector.feed(data)
        if leftover is not None:
            self._buffer[0:0] = leftover       # what follows the terminator is commands

    def tls_started(self) -> None:
        """The TLS layer is up: forget what was learnt before it (RFC 3207 §4.2)."""
        if self.mode is Mode.CLOSED:
            return
        self.tls = True
        self.helo, self.extended, self.auth_user = None, False, None
        self.in_transaction, self.recipients = False, 0
        self.mode = Mode.COMMAND if self.mode is Mode.TLS else Mode.GREETING

    def close(self) -> None:
        self.mode = Mode.CLOSED
        self._buffer.clear()
        self._release()

    def _release(self) -> None:
        """The message being read, or decided, is no longer held: its bytes leave the budget."""
        for collector in (self._collector, self._deciding):
            if collector is not None:
                collector.discard()
        self._collector = self._deciding = None


_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")     # esmtp-keyword, RFC 5321 §4.1.2


def _past_recipient_limit(answer: Reply) -> bool:
    return answer.code == 452 and answer.enhanced == reply.TOO_MANY_RECIPIENTS.enhanced


def _parameters(options: list[str]) -> dict[str, str | bool] | None:
    """ESMTP parameters, `KEY=VALUE` or `KEY` (RFC 5321 §4.1.2); None if malformed or if a
    keyword comes twice (which one would count? the pipeline reads the first SIZE=)."""
    found: dict[str, str | bool] = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not _KEYWORD.fullmatch(key) or (equals and not value) or key in found:
            return None
        found[key] = value if equals else True
    return found


_COMMANDS = {
    "HELO": lambda core, arg: core._helo(arg, False),
    "EHLO": lambda core, arg: core._helo(arg, True),
    "MAIL": SmtpCore._mail,
    "RCPT": SmtpCore._rcpt,
    "DATA": SmtpCore._data,
    "RSET": SmtpCore._rset,
    "NOOP": SmtpCore._noop,
    "VRFY": SmtpCore._vrfy,
    "EXPN": SmtpCore._expn,
    "ETRN": SmtpCore._etrn,
    "HELP": SmtpCore._help,
    "QUIT": SmtpCore._quit,
    "STARTTLS": SmtpCore._starttls,
    "AUTH": SmtpCore._auth,
}

# The metric label of each command's reply; RSET is MAIL's (it ends or replaces a transaction).
_STAGE_OF = {"HELO": "helo", "EHLO": "helo", "MAIL": "mail", "RSET": "mail", "RCPT": "rcpt",
             "DATA": "data", "STARTTLS": "starttls", "AUTH": "auth", "QUIT": "quit"}

def data_refusal(problem: DataProblem) -> tuple[Reply, str]:
    """The reply to a message refused for what its DATA was, and the violation to log."""
    return _DATA_REPLIES[problem], _DATA_VIOLATIONS.get(problem, problem.value)


_DATA_REPLIES = {
    DataProblem.TOO_BIG: reply.MESSAGE_TOO_BIG,
    DataProblem.BARE_NEWLINE: reply.BARE_NEWLINE_DATA,
    DataProblem.LINE_TOO_LONG: reply.LINE_TOO_LONG,
    DataProblem.NUL: reply.NUL_DATA,
    DataProblem.NO_ROOM: reply.NO_ROOM_FOR_DATA,
    # Not "insufficient storage": an I/O error or a file cut short, which the log names.
    DataProblem.UNREADABLE: reply.INTERNAL_ERROR,
}
# The problems that say the client is broken or smuggling, not just over a bound.
_DATA_VIOLATIONS = {
    DataProblem.BARE_NEWLINE: "bare CR or LF in DATA",
    DataProblem.NUL: "NUL in DATA",
}
