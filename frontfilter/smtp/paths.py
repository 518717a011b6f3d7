"""Reading the path of MAIL FROM and RCPT TO: `parse_path(argument)` -> (address, rest) or None.

The argument is what follows `FROM:` or `TO:`; the caller strips the keyword, blanks may follow
it (`MAIL FROM: <a@b>`, as aiosmtpd and Postfix allow). What is read, RFC 5321 §4.1.2 with the
UTF-8 of RFC 6531 §3.3 (non-ASCII characters in atoms, quoted strings and domain labels):

- `<local@domain>`: the address without its brackets. Nearly every client sends the plain form
  (`model.PLAIN_ADDRESS`, the one the forwarder's `delivery.wire.path` also takes as it is): one
  regex, about 1 µs; anything else is read by the full grammar, one more regex.
- `<>`: the null reverse-path, read as the address "".
- `<@a.example,@b.example:local@domain>`: a source route is read and dropped (RFC 5321 §4.1.1.3
  and Appendix C: MUST accept, SHOULD ignore).
- `<"john doe"@example.org>`: a quoted local part keeps its quotes, with the least quoting that
  says it (RFC 5321 §4.1.2: "the minimum quoting possible"): `"a\\ b"` is `"a b"`, and `"ab"` is
  `ab`, as the stdlib parser wrote them; so one mailbox has one spelling for the rules.
- `<local@[192.0.2.1]>`, `<local@[IPv6:2001:db8::1]>`: address literals, taken as text
  (letters, digits, `.`, `:`, `-` between the brackets), not checked as addresses.
- `<Postmaster>`, in any case: the one mailbox without a domain (RFC 5321 §4.1.1.3: RCPT TO
  MUST accept it), returned as written. This module does not know the verb; MAIL FROM
  with it is the caller's to refuse or not.
- `local@domain` without brackets, as Postfix reads it by default (`strict_rfc821_envelopes =
  no`): the address ends at the first blank outside a quoted string.
- The dots of an unquoted local part may stand anywhere (`a..b@`, `.a@`, `a.@`): RFC 5322's
  obsolete local part, which the stdlib parser and Postfix read too, and which some mobile
  carriers' addresses still need.
- After the path: nothing, or blanks and then the ESMTP parameters, returned as `rest` with the
  blanks stripped. An esmtp-keyword starts with a letter or a digit (RFC 5321 §4.1.2), so a rest
  starting with anything else is unreadable: that is where a comment or the rest of a display
  name would be.

Unreadable (None): unbalanced brackets; a blank inside the brackets outside a quoted string;
a control character (C0, DEL, C1) or an undecodable byte (the lone surrogate `surrogateescape`
makes of it) anywhere in the path; `<` or `>` inside the mailbox, even quoted; an empty local
part (`"" ` included: no mailbox is called nothing); a mailbox other than Postmaster without a
domain; an empty domain label (`a@b.`, `a@.b`); a domain character that no host name has (a
domain is letters, digits, `-`, `_` and non-ASCII); a local part mixing quoted and unquoted
pieces (RFC 5321 has Dot-string or Quoted-string, not RFC 5322's obsolete mixture); parameters
glued to the path (`<a@b>SIZE=1`); a local part longer than `local_part_limit` octets, when
that is above 0 (RFC 5321 §4.5.3.1.1 counts octets, RFC 6531 §3.3 keeps the count in octets
of UTF-8). An empty argument has no path and is unreadable too.

Deliberate differences from the reading this replaces (aiosmtpd's, on the stdlib's RFC 5322
header parser; tests/smtp/test_paths.py lists each with an example): RFC 5322 comments
(`<a(c)@b>`, `<a@b> (c)`) and display names (`Name <a@b>`) are header syntax, not SMTP, and are
unreadable here, where the stdlib read them (and Postfix's lenient mode reads them too); so are
blanks inside the brackets, unbalanced brackets, parameters glued to the path, control
characters, a mailbox without a domain other than Postmaster, and the other refusals above
where the stdlib was lenient. The null path is "" here, "<>" there.

Pure: no I/O and no imports of the relay's other layers beyond `model`.
"""

from __future__ import annotations

import re

from frontfilter.model import PLAIN_ADDRESS

# A non-ASCII character allowed in atoms, quoted strings and labels (RFC 6531 §3.3 UTF8-non-ascii):
# not a C1 control, not a lone surrogate (an undecodable byte, as `surrogateescape` reads it).
_UTF8 = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATEXT = rf"A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_UTF8}"
# qtextSMTP and quoted-pairSMTP (RFC 5321 §4.1.2), less `<` and `>`: no bracket inside the mailbox.
_QTEXT = rf" !#-;=?-\[\]-~{_UTF8}"
_QUOTED_PAIR = rf"\\[ -;=?-~{_UTF8}]"
_LABEL = rf"[A-Za-z0-9_\-{_UTF8}]+"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[A-Za-z0-9.:\-]+\]"
_DOT_STRING = rf"[{_ATEXT}.]+"          # dots anywhere: see the docstring
_QUOTED = rf'"(?:[{_QTEXT}]|{_QUOTED_PAIR})*"'
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
# A-d-l (RFC 5321 §4.1.2); RFC 821's routes, the only ones still sent, also held address literals.
_ROUTE = rf"@(?:{_DOMAIN}|{_LITERAL})(?:,@(?:{_DOMAIN}|{_LITERAL}))*:"
_POSTMASTER = "(?i:postmaster)"
# After the path: the end, or blanks and an esmtp-keyword's first character (RFC 5321 §4.1.2).
_AFTER = r"(?:[ \t]*\Z|[ \t]+(?=[A-Za-z0-9]))"

_PLAIN_PATH = re.compile(rf"[ \t]*<({PLAIN_ADDRESS})?>{_AFTER}")
_PATH = re.compile(rf"[ \t]*(?:<(?:(?:{_ROUTE})?(?P<inner>{_MAILBOX})|(?P<postmaster>{_POSTMASTER}))?>"
                   rf"|(?P<bare>{_MAILBOX}|{_POSTMASTER})){_AFTER}")
_UNQUOTED = re.compile(_DOT_STRING)
_QUOTED_PAIR_ANY = re.compile(r"\\(.)", re.DOTALL)


def parse_path(argument: str, *, local_part_limit: int = 0) -> tuple[str, str] | None:
    """(address, rest): the address without angle brackets ("" for the null path "<>"), and the rest of the
    argument after the path (the ESMTP parameters, leading blanks stripped). None when the path is unreadable."""
    plain = _PLAIN_PATH.match(argument)
    if plain is None:
        return _read_path(argument, local_part_limit)
    address = plain.group(1) or ""
    if local_part_limit and address.find("@") > local_part_limit:     # ASCII: one octet each
        return None
    return address, argument[plain.end():]


def _read_path(argument: str, local_part_limit: int) -> tuple[str, str] | None:
    """`parse_path` by the whole grammar: what the plain form's regex does not take."""
    path = _PATH.match(argument)
    if path is None:
        return None
    rest = argument[path.end():]
    mailbox = path.group("inner") or path.group("bare") or path.group("postmaster")
    if mailbox is None:
        return "", rest
    if "@" not in mailbox:                      # Postmaster: every other mailbox has its domain
        return mailbox, rest
    if mailbox.startswith('"'):
        close = mailbox.rindex('"')             # no domain holds a quote
        local = _least_quoted(mailbox[1:close])
        if not local:
            return None
        mailbox = local + mailbox[close + 1:]
    else:
        local = mailbox[:mailbox.index("@")]
    if local_part_limit and len(local.encode("utf-8")) > local_part_limit:
        return None
    return mailbox, rest


def _least_quoted(quoted: str) -> str:
    """A quoted local part's content with the least quoting that says it; "" if it is empty."""
    content = _QUOTED_PAIR_ANY.sub(r"\1", quoted) if "\\" in quoted else quoted
    if not content or _UNQUOTED.fullmatch(content):
        return content
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
