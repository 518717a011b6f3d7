"""SMTP replies as values.

A `Reply` is a code, an enhanced status code (RFC 3463), a text and whether the connection is
closed after it; a multi-line reply (EHLO's) has more lines. Hooks return `Reply` values; they
become wire text only in the SMTP session core (`smtp.core`, through `Reply.wire`). The greeting
and the replies to HELO and EHLO carry no enhanced code (RFC 2034 §3): `enhanced` is "" there. Client-facing texts are generic: they never name a rule file, a backend host or
an exception — the log line, joined by the queue id, carries the detail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_CODE = re.compile(r"^([245])\d\d$")        # what a rule may answer
_WIRE_CODE = re.compile(r"^[2-5]\d\d$")      # what the server may send (354, 334 too)
_ENHANCED = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str
    close: bool = False
    more: tuple[str, ...] = ()     # the lines after the first of a multi-line reply

    def __post_init__(self) -> None:
        if not _WIRE_CODE.match(str(self.code)):
            raise ValueError(f"bad SMTP reply code {self.code!r}")
        if self.enhanced and (not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]):
            raise ValueError(f"bad enhanced status {self.enhanced!r} for code {self.code}")
        if any("\r" in line or "\n" in line for line in (self.text, *self.more)):
            raise ValueError("reply text must be one line")

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def wire(self) -> str:
        """The reply as the client reads it, without the last CRLF."""
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        if not self.more:
            return prefix + self.text
        lines = (self.text, *self.more)
        dash = prefix.replace(" ", "-", 1)
        return "\r\n".join([*(dash + line for line in lines[:-1]), prefix + lines[-1]])

    def softened(self) -> Reply:
        """The 4xx twin of a 5xx reply (soft_reject: a rule set on trial never bounces mail)."""
        if not self.is_permanent:
            return self
        return replace(self, code=self.code - 100, enhanced="4" + self.enhanced[1:])

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text, self.close, self.more)   # not replace(): 3x the cost

    @classmethod
    def parse(cls, line: str) -> Reply:
        """Parse `554 5.7.1 text` or `554 text` (enhanced code derived) from a rule file."""
        parts = line.strip().split(" ", 2)
        if not parts or not _CODE.match(parts[0]):
            raise ValueError("must start with a 3-digit code 2xx, 4xx or 5xx")
        code = int(parts[0])
        if len(parts) >= 2 and _ENHANCED.match(parts[1]):
            enhanced = parts[1]
            text = parts[2] if len(parts) > 2 else ""
        else:
            enhanced = f"{parts[0][0]}.0.0"
            text = " ".join(parts[1:])
        return cls(code, enhanced, text or "Message refused")


# Canonical replies. Names say what happened; texts say only what a client needs.
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
BYE = Reply(221, "2.0.0", "Bye", close=True)

NOT_READY = Reply(421, "4.3.0", "Service not available, try again later", close=True)
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later", close=True)
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later", close=True)
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection", close=True)
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection", close=True)
SESSION_TIMEOUT = Reply(421, "4.4.2", "Session time limit exceeded, closing connection", close=True)

INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later")
INSPECTION_TIMEOUT = Reply(451, "4.3.0", "Message could not be checked in time, try again later")
# The antivirus could not answer and [antivirus] on_error = "tempfail" (a timeout answers the
# line above). The text does not say which check: the log does.
SCAN_UNAVAILABLE = Reply(451, "4.3.0", "Message could not be checked, try again later")
BACKEND_UNAVAILABLE = Reply(451, "4.4.1", "Next hop unavailable, try again later")
TEMPFAIL = Reply(451, "4.7.1", "Message temporarily refused, try again later")
SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")

SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error")
SYNTAX_ARGUMENT = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
HELP = Reply(214, "2.0.0", "See RFC 5321")
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognized")
EMPTY_LINE = Reply(500, "5.5.2", "Error: bad syntax")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN_NOT_IMPLEMENTED = Reply(502, "5.5.1", "EXPN not implemented")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
BAD_ADDRESS = Reply(553, "5.1.3", "Error: malformed address")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Parameters not recognized or not implemented")
COMMAND_TIMEOUT = Reply(421, "4.4.2", "Timeout waiting for a command, closing connection", close=True)
DATA_TIMEOUT = Reply(421, "4.4.2", "DATA phase too long, closing connection", close=True)
NO_ROOM_FOR_DATA = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_SLOW = Reply(421, "4.4.2", "Minimum data rate not met, closing connection", close=True)
AUTH_ABORTED = Reply(501, "5.7.0", "Auth aborted")
BARE_NEWLINE_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command is not allowed", close=True)
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
BAD_SENDER = Reply(553, "5.1.7", "Sender address rejected: malformed address")
BAD_RECIPIENT = Reply(553, "5.1.3", "Recipient address rejected: malformed address")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
BARE_NEWLINE_DATA = Reply(550, "5.6.0", "Bare CR or LF in message data is not allowed")
NUL_DATA = Reply(550, "5.6.0", "NUL in message data is not allowed")   # RFC 6152 §3
REJECTED = Reply(554, "5.7.1", "Message rejected by policy")

# The front door: STARTTLS (RFC 3207), AUTH (RFC 4954), listener roles.
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_LOCKED_OUT = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_MALFORMED = Reply(501, "5.5.2", "Cannot decode the AUTH response")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_NOT_OFFERED = Reply(503, "5.5.1", "Authentication not enabled")
AUTH_ALREADY_DONE = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
