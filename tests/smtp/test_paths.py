"""MAIL FROM and RCPT TO paths: what `smtp.paths.parse_path` reads, what it refuses, and how it
differs from aiosmtpd's reading, the one the relay used before.

aiosmtpd reads a path with the stdlib's RFC 5322 header parser; it stays here as a reference (a
test dependency). Generated paths — plain addresses, quoted local parts, source routes, address
literals, Postmaster, paths without brackets, each with parameters or not — and odd inputs (those
paths with a character put in, and strings of the characters paths are made of) go to both.
Where the two deliberately differ, the difference is listed once in DIFFERENCES with an example
and its reason; the comparison lets them differ only where one of those entries says so.
Every well-formed path is read, and what is read reads back as itself.

Bounded: EXAMPLES cases per property (derandomized; FUZZ_RANDOM=1 for a fresh seed).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontfilter.smtp.paths import parse_path

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow])

Reading = tuple[str, str] | None
LINE_BLANKS = " \t\n\r\x0b\x0c"     # what `bytes.strip` takes off a command line


def aiosmtpd_reading(argument: str, limit: int = 0) -> Reading:
    """aiosmtpd's `_getaddr` in our shape: None for unreadable, the rest without its leading
    blanks (aiosmtpd splits the rest on blanks: they mean nothing there)."""
    try:
        address, rest = SMTP._getaddr(SimpleNamespace(local_part_limit=limit), argument)  # type: ignore[arg-type]
    except (IndexError, AttributeError):      # the stdlib parser trips over some input (`<a@[1.2.3.4>`)
        return None
    if address is None or rest is None:
        return None
    return address, rest.lstrip()


# ---- what is read ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("argument", "reading"), [
    ("<alice@example.org>", ("alice@example.org", "")),
    ("<alice@example.org> SIZE=1000 BODY=8BITMIME", ("alice@example.org", "SIZE=1000 BODY=8BITMIME")),
    (" <alice@example.org>\t SIZE=1000", ("alice@example.org", "SIZE=1000")),    # MAIL FROM: <...>
    ("<alice@example.org>  ", ("alice@example.org", "")),
    ("<>", ("", "")),
    ("<> SIZE=1000", ("", "SIZE=1000")),
    ("<@a.example,@b.example:user@c.example>", ("user@c.example", "")),         # route dropped
    ("<@[192.0.2.1]:user@c.example> SIZE=1", ("user@c.example", "SIZE=1")),
    ('<"john doe"@example.com>', ('"john doe"@example.com', "")),
    ('<"john\\ doe"@example.com>', ('"john doe"@example.com', "")),             # least quoting
    ('<"john"@example.com>', ("john@example.com", "")),
    ('<"a\\"b\\\\c"@example.com>', ('"a\\"b\\\\c"@example.com', "")),
    ('<"a@b"@example.com>', ('"a@b"@example.com', "")),
    ("<user@[192.0.2.1]>", ("user@[192.0.2.1]", "")),
    ("<user@[IPv6:2001:db8::1]>", ("user@[IPv6:2001:db8::1]", "")),
    ("user@example.com", ("user@example.com", "")),                             # Postfix's lenient default
    ("user@example.com SIZE=10", ("user@example.com", "SIZE=10")),
    ('"john doe"@example.com SIZE=10', ('"john doe"@example.com', "SIZE=10")),
    ("<Postmaster>", ("Postmaster", "")),
    ("<postMASTER> SIZE=1", ("postMASTER", "SIZE=1")),
    ("Postmaster", ("Postmaster", "")),
    ("<Postmaster@example.org>", ("Postmaster@example.org", "")),
    ("<ünï@exämple.org>", ("ünï@exämple.org", "")),                             # SMTPUTF8, RFC 6531
    ('<"ünï"@exämple.org>', ("ünï@exämple.org", "")),
    ("<a..b@docomo.example>", ("a..b@docomo.example", "")),                     # obsolete local part
    ("<.a.@example.jp>", (".a.@example.jp", "")),
    ("<a_b@c_d.example>", ("a_b@c_d.example", "")),
    ("<a@-b->", ("a@-b-", "")),
])
def test_a_path_is_read(argument: str, reading: tuple[str, str]) -> None:
    assert parse_path(argument) == reading


@pytest.mark.parametrize("argument", [
    "", "   ",                                              # no path at all
    "<a@b", "a@b>", "<<a@b>>", "<a@b>>", "<>>",             # unbalanced brackets
    "< a@b>", "<a@b >", "<a @b>", "<a@\tb>",                # a blank inside the brackets
    "<a\x01@b>", "<a@b\x7f>", "<a\x85@b>", "<a@b>\n", '<"a\x00"@b>', '<"a\tb"@c>',   # control characters
    "<a\udc80@b>", "<a@b\udcff>",                           # undecodable bytes (surrogateescape)
    "<a<b@c>", '<"a>b"@c>', '<"a\\<b"@c>',                  # a bracket inside the mailbox
    "<@example.org>", '<""@example.org>',                   # empty local part
    "<a@>", "<a@b.>", "<a@.b>", "<a@b..c>",                 # no domain, an empty label
    "<a>", "a", "<@x.example:Postmaster>",                  # no domain, and not Postmaster
    "<a(c)@b>", "<a@b(c)>", "<a@b> (c)", "<a@b> (c) SIZE=1", "(c)<a@b>",   # RFC 5322 comments
    "Name <a@b>", '"Name" <a@b>', "Postmaster <a@b>",       # RFC 5322 display names
    "<a@b>SIZE=1", "<>SIZE=1", "a@b,c",                     # parameters glued to the path
    '<"a"."b"@c>', '<a."b"@c>', '<"a"b@c>',                 # quoted and unquoted pieces
    "<a\\b@c>",                                             # a quoted-pair outside quotes
    "<a@b!c>", "<a@[a b]>", "<a@[1.2.3.4>", "<a@[a=b]>",    # not a host name, not a literal
    "<@:a@b>", "<@a,:b@c>", "<@a:>", "<:a@b>",              # broken source routes
])
def test_an_unreadable_path_is_refused(argument: str) -> None:
    assert parse_path(argument) is None


def test_the_local_part_limit_counts_octets() -> None:
    """RFC 5321 §4.5.3.1.1: 64 octets; RFC 6531 §3.3 keeps octets of UTF-8. A quoted local part
    counts with its quotes, as it goes on the wire."""
    assert parse_path(f"<{'a' * 64}@example.org>", local_part_limit=64) == (f"{'a' * 64}@example.org", "")
    assert parse_path(f"<{'a' * 65}@example.org>", local_part_limit=64) is None
    assert parse_path(f"<{'é' * 32}@example.org>", local_part_limit=64) is not None
    assert parse_path(f"<{'é' * 33}@example.org>", local_part_limit=64) is None
    assert parse_path(f'<"{" " * 62}"@example.org>', local_part_limit=64) is not None
    assert parse_path(f'<"{" " * 63}"@example.org>', local_part_limit=64) is None
    assert parse_path(f"{'a' * 65}@example.org", local_part_limit=64) is None
    assert parse_path("<>", local_part_limit=1) == ("", "")
    assert parse_path(f"<{'a' * 65}@example.org>") is not None     # 0: no limit


def test_an_argument_that_is_not_a_path_is_refused_in_linear_time() -> None:
    """The longest MAIL line (`core.PATH_LINE_MAX`) of what the grammar's repetitions take, each
    spoilt at its end: no backtracking blow-up (tens of µs each; quadratic would be tens of ms).
    The best of a few runs, so that a busy machine does not fail it."""
    worst = 0.0
    for body in ("a" * 1000, "a." * 500, "a@" + "b." * 500, '"' + "a" * 1000, "<@" + "a," * 500,
                 "<" + "a" * 1000 + "@b" * 10, "<a@" + "b" * 1000 + " x", "@" * 1000, "a " * 500):
        for spoiler in ("", "(", ">", "\x01", " <"):
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                parse_path(body + spoiler)
                runs.append(time.perf_counter() - started)
            worst = max(worst, min(runs))
    assert worst < 0.005, worst


# ---- the deliberate differences from aiosmtpd's reading --------------------------------------------

def outside_quotes(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text, flags=re.DOTALL)


@dataclass(frozen=True)
class Seen:
    """One argument, as the two read it."""

    argument: str
    ours: Reading
    theirs: Reading
    limit: int

    @property
    def refused(self) -> bool:
        """Unreadable here, read there."""
        return self.ours is None and self.theirs is not None

    @property
    def their_address(self) -> str:
        return "" if self.theirs is None else self.theirs[0]

    @property
    def their_rest(self) -> str:
        return "" if self.theirs is None else self.theirs[1]

    @property
    def unquoted(self) -> str:
        """The argument with its quoted strings emptied."""
        return outside_quotes(self.argument)


def glued(seen: Seen) -> bool:
    """aiosmtpd's rest follows what it read without a blank in between."""
    head = seen.argument[:len(seen.argument) - len(seen.their_rest)]
    return bool(seen.their_rest) and not head.endswith((" ", "\t"))


NAME_FOREIGN = "[^A-Za-z0-9_.\\-\u00a0-\ud7ff\ue000-\U0010ffff]"
LITERAL_FOREIGN = r"[^A-Za-z0-9.:\-]"


def foreign_domain(seen: Seen) -> bool:
    """A domain in the argument (the mailbox's or a route hop's) holds a character no host name
    has, or a literal one no address literal has."""
    for domain in re.findall(r"@(\[[^\]]*\]?|[^@,:>\s\[]*)", seen.unquoted):
        foreign = LITERAL_FOREIGN if domain.startswith("[") else NAME_FOREIGN
        if re.search(foreign, domain.strip("[]")):
            return True
    return False


def octets_past_limit(seen: Seen) -> bool:
    local = seen.their_address.rpartition("@")[0]
    return 0 < len(local) <= seen.limit < len(local.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Difference:
    name: str
    example: str
    ours: Reading
    aiosmtpd: Reading
    reason: str
    # Whether this difference explains what was seen (called only where the readings differ).
    applies: Callable[[Seen], bool]
    limit: int = 0


DIFFERENCES = [
    Difference(
        "the null path", "<>", ("", ""), ("<>", ""),
        "The null reverse-path is the address \"\" here, the text \"<>\" in aiosmtpd (which then takes "
        "RCPT TO:<> as a recipient).",
        lambda seen: seen.ours is not None and seen.ours[0] == "" and seen.theirs == ("<>", seen.ours[1])),
    Difference(
        "no path at all", "", None, ("", ""),
        "An empty argument is unreadable here (553); aiosmtpd reads the address \"\" and refuses it "
        "later (501).",
        lambda seen: seen.ours is None and not seen.argument.strip()),
    Difference(
        "RFC 5322 comments", "<a(c)@b>", None, ("a@b", ""),
        "Comments are header syntax (RFC 5322 §3.2.2), not SMTP: RFC 5321 §4.1.2 has none; the stdlib "
        "drops them wherever they are, in the path or after it.",
        lambda seen: seen.refused and bool(set(seen.argument) & set("()"))),
    Difference(
        "display names", "Name <a@b>", None, ("Name", "<a@b>"),
        "`Name <a@b>` is a header's name-addr (RFC 5322 §3.4); aiosmtpd reads the name as a "
        "bracketless address and the path as parameters.",
        lambda seen: seen.refused and re.match(r"[ \t]*[^ \t<][^<]*<", seen.argument) is not None),
    Difference(
        "blanks inside the brackets", "< a@b>", None, ("a@b", ""),
        "RFC 5321 §4.1.2 has no blank in a path outside a quoted string; the stdlib skips them as "
        "folding white space.",
        lambda seen: seen.refused and re.search(r"<[^>]*[ \t]", seen.unquoted) is not None),
    Difference(
        "a path without brackets ends at the first blank", "Postmaster SIZE=1", ("Postmaster", "SIZE=1"),
        ('"Postmaster SIZE=1"', ""),
        "As Postfix reads a bracketless path (strict_rfc821_envelopes = no); the stdlib reads words "
        "with blanks between them as one obsolete local part (RFC 5322 §4.4), `a b@c` as `\"a b\"@c`, "
        "and skips blanks around `@` and dots (`a@ b` is `a@b`).",
        lambda seen: not seen.argument.lstrip().startswith("<")
        and re.search(r"[^ \t][ \t]+[^ \t]", seen.unquoted.strip()) is not None),
    Difference(
        "unbalanced brackets", "<a@b", None, ("a@b", ""),
        "A path is `<` ... `>`; the stdlib reads a missing `>` as there (its leniency for headers).",
        lambda seen: seen.refused and seen.unquoted.count("<") != seen.unquoted.count(">")),
    Difference(
        "a bracket inside the mailbox", '<"a>b"@c>', None, ('"a>b"@c', ""),
        "No `<` or `>` in a mailbox here, even quoted (where RFC 5321 allows them): an address that "
        "holds one can end the path early on the next hop's command line.",
        lambda seen: seen.refused and bool(set(seen.their_address) & set("<>"))),
    Difference(
        "parameters glued to the path", "<a@b>SIZE=1", None, ("a@b", "SIZE=1"),
        "RFC 5321 §4.1.2: SP between the path and each parameter; the stdlib hands back whatever "
        "follows the last character it could read (`<a@b,c>` gives `,c>`) as parameters.",
        lambda seen: seen.refused and glued(seen)),
    Difference(
        "a rest that cannot be parameters", "<a@b> .", None, ("a@b", "."),
        "An esmtp-keyword starts with a letter or a digit (RFC 5321 §4.1.2): anything else after the "
        "path (a comment, a display name's tail) makes the path unreadable here (553); aiosmtpd "
        "reads the path and refuses the parameter (501).",
        lambda seen: seen.refused and re.match(r"[A-Za-z0-9]|\Z", seen.their_rest) is None),
    Difference(
        "empty hops in a source route", "<,@a:b@c>", None, ("b@c", ""),
        "A-d-l is At-domain *( \",\" At-domain ) (RFC 5321 §4.1.2); RFC 5322's obsolete route, which "
        "the stdlib reads, allows empty elements.",
        lambda seen: seen.refused and re.search(r"<[ \t]*,|,[ \t]*[,:]", seen.unquoted) is not None),
    Difference(
        "control characters", "<a\x01@b>", None, ("a\x01@b", ""),
        "RFC 5321 §4.1.2 has no control character in a path (C0, DEL; nor C1 in RFC 6531's UTF-8; "
        "HTAB is a blank outside quotes and nothing inside: `<\"a<TAB>b\"@c>` is unreadable); the "
        "stdlib takes them in atoms and quoted strings.",
        lambda seen: seen.refused and (re.search("[\x00-\x08\x0a-\x1f\x7f-\x9f]", seen.argument) is not None
                                       or "\t" in seen.argument and '"' in seen.argument)),
    Difference(
        "undecodable bytes", "<a\udc80@b>", None, ("a\udc80@b", ""),
        "A byte that is not UTF-8 (a lone surrogate, as surrogateescape reads it) is no character "
        "of RFC 6531's; the stdlib takes it in an atom.",
        lambda seen: seen.refused and re.search("[\ud800-\udfff]", seen.argument) is not None),
    Difference(
        "a mailbox without a domain", "<a>", None, ("a", ""),
        "RFC 5321 §4.1.2: Mailbox = Local-part \"@\" ( Domain / address-literal ); only Postmaster "
        "goes without (§4.1.1.3). The stdlib reads a bare local part as an addr-spec.",
        lambda seen: seen.refused and "@" not in outside_quotes(seen.their_address)),
    Difference(
        "quoted and unquoted pieces in a local part", '<"a"."b"@c>', None, ("a.b@c", ""),
        "RFC 5321's Local-part is a Dot-string or a Quoted-string; RFC 5322's obsolete local part "
        "mixes the two and the stdlib reads it.",
        lambda seen: seen.refused and '"' in seen.argument and re.fullmatch(
            r'[ \t]*<?(?:@[^:]*:)?"(?:[^"\\]|\\.)*"@[^"]*', seen.argument, flags=re.DOTALL) is None),
    Difference(
        "a quoted-pair outside quotes", "<a\\b@c>", None, ('"a\\\\b"@c', ""),
        "A backslash is no atext (RFC 5321 §4.1.2); the stdlib reads it in an atom and quotes the "
        "local part.",
        lambda seen: seen.refused and "\\" in seen.unquoted),
    Difference(
        "an empty quoted local part", '<""@b>', None, ('""@b', ""),
        "No mailbox is called nothing; RFC 5321's grammar allows `\"\"`, the stdlib reads it.",
        lambda seen: seen.refused and '""@' in seen.argument),
    Difference(
        "domains that are no host names", "<@x!y:a@b>", None, ("a@b", ""),
        "A domain, the mailbox's or a route hop's, is letters, digits, `-`, `_` and UTF-8 here "
        "(RFC 5321 §4.1.2 sub-domain, with the underscore real host names have), an address "
        "literal letters, digits, `.`, `:` and `-`; the stdlib takes any atext, and any dtext.",
        lambda seen: seen.refused and foreign_domain(seen)),
    Difference(
        "the local part limit in octets", "<ééé@b>", None, ("ééé@b", ""),
        "RFC 5321 §4.5.3.1.1 counts octets, and RFC 6531 §3.3 octets of UTF-8; aiosmtpd counts "
        "characters.",
        lambda seen: seen.refused and octets_past_limit(seen),
        limit=4),
]


def unexplained(argument: str, limit: int = 0) -> str | None:
    """Why `argument` is a failure of the comparison, or None: the readings agree, or they differ
    as one of DIFFERENCES says. Both get the argument as the core hands it over: it strips the
    command line (`bytes.strip`), so only the blanks after the keyword are left. (aiosmtpd's own
    caller strips Unicode's blanks too: the callers' differences are test_core_differential's.)"""
    argument = argument.rstrip(LINE_BLANKS)
    seen = Seen(argument, parse_path(argument, local_part_limit=limit), aiosmtpd_reading(argument, limit), limit)
    if seen.ours == seen.theirs or any(difference.applies(seen) for difference in DIFFERENCES):
        return None
    return f"{argument!r} (limit {limit}): ours {seen.ours!r}, aiosmtpd's {seen.theirs!r}"


@pytest.mark.parametrize("difference", DIFFERENCES, ids=lambda difference: difference.name)
def test_each_difference_is_as_listed(difference: Difference) -> None:
    seen = Seen(difference.example, parse_path(difference.example, local_part_limit=difference.limit),
                aiosmtpd_reading(difference.example, difference.limit), difference.limit)
    assert (seen.ours, seen.theirs) == (difference.ours, difference.aiosmtpd)
    assert difference.applies(seen)


def test_each_difference_is_listed_once() -> None:
    assert len({d.name for d in DIFFERENCES}) == len({d.example for d in DIFFERENCES}) == len(DIFFERENCES)


# ---- generated paths ------------------------------------------------------------------------------

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-é"
LABEL = "abcxyzABCXYZ0189-_ä"
QUOTED_TEXT = " !#$%&'()*+,./0189:;=?@ABZ[]^_`abz{|}~é"

atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)


@st.composite
def quoted_strings(draw: st.DrawFn) -> str:
    """A quoted local part: any qtext, `"` and `\\` escaped, other characters escaped or not."""
    characters = draw(st.lists(st.tuples(st.sampled_from(QUOTED_TEXT + '"\\'), st.booleans()), min_size=1, max_size=10))
    return '"' + "".join("\\" + c if escaped or c in '"\\' else c for c, escaped in characters) + '"'


domains = st.lists(st.text(LABEL, min_size=1, max_size=10), min_size=1, max_size=4).map(".".join)
literals = st.one_of(st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
                     st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"))
mailboxes = st.builds(lambda local, domain: f"{local}@{domain}", st.one_of(dot_strings, quoted_strings()),
                      st.one_of(domains, domains, literals))
routes = st.lists(st.one_of(domains, literals), min_size=1, max_size=3).map(
    lambda hops: ",".join("@" + hop for hop in hops) + ":")
postmasters = st.sampled_from(["Postmaster", "postmaster", "POSTMASTER", "PostMaster"])
paths = st.one_of(
    mailboxes.map(lambda mailbox: f"<{mailbox}>"),
    st.builds(lambda route, mailbox: f"<{route}{mailbox}>", routes, mailboxes),
    st.just("<>"),
    postmasters.map(lambda name: f"<{name}>"),
    mailboxes,                                          # no brackets
    postmasters,
)
arguments = st.builds(lambda lead, path, tail: lead + path + tail, st.sampled_from(["", " ", "  ", "\t"]), paths,
                      st.sampled_from(["", " ", "\t", " SIZE=1000", " BODY=8BITMIME SMTPUTF8", "  X=1\tY"]))
ODD = 'aZ09.-_+@<> \t"()[]:;,\\=!#%é\x01\x7f\x85\udc80'


@st.composite
def odd_arguments(draw: st.DrawFn) -> str:
    """A generated argument with characters put in, or a string of the characters paths are made of."""
    if draw(st.booleans()):
        return draw(st.text(ODD, max_size=24))
    argument = draw(arguments)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(argument)))
        argument = argument[:at] + draw(st.sampled_from(ODD)) + argument[at:]
    return argument


@FUZZ
@given(arguments)
def test_every_well_formed_path_is_read_as_aiosmtpd_reads_it(argument: str) -> None:
    assert parse_path(argument) is not None, argument
    assert unexplained(argument) is None


@FUZZ
@given(st.one_of(arguments, odd_arguments()), st.sampled_from([0, 3, 64]))
def test_readings_differ_from_aiosmtpd_only_as_listed(argument: str, limit: int) -> None:
    assert unexplained(argument, limit) is None


@FUZZ
@given(st.one_of(arguments, odd_arguments()))
def test_an_address_read_reads_back_as_itself(argument: str) -> None:
    """What the relay forwards (`delivery.wire.path` puts the address in brackets) is read, by the
    next hop and by us, as the address we read: the least quoting is stable."""
    reading = parse_path(argument)
    if reading is not None:
        assert parse_path(f"<{reading[0]}>") == (reading[0], "")
        assert parse_path(f"<{reading[0]}> {reading[1]}") == reading
