"""Reading the path of MAIL FROM and RCPT TO: `parse_path(argument)` -> (address, rest) or None.

The relay's own reading of RFC 5321 §4.1.2, with the UTF-8 of RFC 6531 §3.3 (non-ASCII
characters in atoms, quoted strings and domain labels). The argument is what follows `FROM:` or
`TO:` on the stripped command line: the caller cuts off the keyword; blanks may follow it
(`MAIL FROM: <a@b>`, as aiosmtpd and Postfix allow). The address is returned without its
brackets, the rest (the ESMTP parameters) without its leading blanks; the parameters themselves
are the caller's. This module does not know the verb: refusing `<>` or `<Postmaster>` where
they make no sense is the caller's too.

What is read:
- `<local@domain>`. The plain form nearly every client sends (`model.PLAIN_ADDRESS`, the one the
  forwarder's `delivery.wire.path` also takes as it is) is one regex, under 1 µs; anything else
  is read by the whole grammar, one more regex and 1-2 µs (the stdlib header parser that
  aiosmtpd used took 40-70 µs).
- `<>`: the null reverse-path, read as the address "".
- `<@a.example,@b.example:local@domain>`: a source route is read and dropped (RFC 5321 §4.1.1.3
  and Appendix C: MUST accept, SHOULD ignore); its hops may be address literals, as RFC 821's.
- `<"john doe"@example.org>`: a quoted local part keeps its quotes, with the least quoting that
  says it (RFC 5321 §4.1.2, "the minimum quoting possible"): `"a\\ b"` is `"a b"` and `"ab"` is
  `ab`, as the stdlib parser wrote them; so a mailbox has one spelling for the rules.
- `<local@[192.0.2.1]>`, `<local@[IPv6:2001:db8::1]>`: address literals, taken as text (letters,
  digits, `.`, `:` and `-` between the brackets), not checked as addresses.
- `<Postmaster>`, in any case: the one mailbox without a domain (RFC 5321 §4.1.1.3: RCPT TO MUST
  take it), returned as written.
- `local@domain` without brackets, as Postfix reads it by default (`strict_rfc821_envelopes =
  no`): the address ends at the first blank outside a quoted string.
- Dots anywhere in an unquoted local part (`a..b@`, `.a@`, `a.@`): RFC 5322's obsolete local
  part, which the stdlib parser and Postfix read too and some mobile carriers' addresses need.
- A domain is letters, digits, `-`, `_` (real host names have it) and UTF-8, in dotted labels.

Unreadable (None):
- no path at all (an empty argument);
- unbalanced brackets, and a `<` or `>` inside the mailbox, even quoted (RFC 5321 allows it
  there; an address holding one can end the path early on the next hop's command line);
- a blank inside the brackets outside a quoted string, a tab even inside one (qtextSMTP);
- a control character (C0, DEL, C1), or an undecodable byte (the lone surrogate that
  `surrogateescape` makes of it);
- an empty local part (`""` too: no mailbox is called nothing); a mailbox without a domain,
  Postmaster aside; an empty domain label (`a@b.`, `a@.b`); a domain or a literal with a
  character none has (`a@b!c`, `a@[a=b]`);
- a local part of quoted and unquoted pieces (`"a".b`: RFC 5321 has a Dot-string or a
  Quoted-string, RFC 5322's obsolete local part mixes them), a backslash outside quotes;
- a source route with an empty hop (`<,@a:b@c>`);
- a rest not after a blank (`<a@b>SIZE=1`), or not starting as an esmtp-keyword does, with a
  letter or a digit (RFC 5321 §4.1.2): that is where a comment or a display name's tail is;
- a local part longer than `local_part_limit` octets, when that is above 0 (RFC 5321
  §4.5.3.1.1 counts octets, RFC 6531 §3.3 octets of UTF-8).

Deliberate differences from aiosmtpd's reading, the one this replaces (the stdlib's RFC 5322
header parser; tests/smtp/test_paths.py lists each with an example and checks that these are
the only ones): RFC 5322 comments (`<a(c)@b>`, `<a@b> (c)`) and display names (`Name <a@b>`) are
header syntax, not SMTP: unreadable here, read there (Postfix's lenient default reads them too).
So are blanks inside the brackets, unbalanced brackets, parameters glued to the path, control
characters, undecodable bytes, a mailbox without a domain, and the other refusals above where
the stdlib is lenient. The stdlib reads `a b@c` without brackets as `"a b"@c`; here the path
ends at the blank. The null path is "" here, "<>" there. The local part limit counts octets
here, characters there.

Bounds: the local part limit is the caller's (`core.LOCAL_PART_MAX`); the argument's length is
bounded by the command line's (`core.PATH_LINE_MAX`). Every repetition in the grammar is
possessive, so an argument that does not match costs time linear in its length (tens of µs
for a 1 000-octet one).

Pure: no I/O; imports nothing of the relay's but `model`.
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
_LABEL = rf"[A-Za-z0-9_\-{_UTF8}]++"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*+"
_LITERAL = r"\[[A-Za-z0-9.:\-]++\]"
_DOT_STRING = rf"[{_ATEXT}.]++"          # dots anywhere: see the docstring
_QUOTED = rf'"(?:[{_QTEXT}]|{_QUOTED_PAIR})*+"'
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
# A-d-l (RFC 5321 §4.1.2); a hop may be an address literal, as in RFC 821, where routes come from.
_ROUTE = rf"@(?:{_DOMAIN}|{_LITERAL})(?:,@(?:{_DOMAIN}|{_LITERAL}))*+:"
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
