"""Condition tables (parsed TOML) -> a condition tree, with every problem reported by key.

The compiler never raises on bad input: it reports each problem through `Env.error(key, text)`
and carries on, so one load lists every error of a rule set. Each condition key has a stage from
which its fact is known (`KNOWN_FROM`); a condition used at an earlier stage is an error, so a
rule can never silently wait for a fact that its stage does not have.

Keys and their scopes (see rules/README.md for the administrator's view):
- message scope: client.ip, helo, tls, auth, auth.user, sender.address, sender.domain,
  recipient.address, recipient.domain, recipients.count, header.<Name>, subject, body, size,
  inspection.limit, ambiguity, virus, virus.name, attachment.<...>, any, not;
  and the reputation facts (frontfilter.reputation): client.dnsbl, client.dnsbl_score,
  client.listed_on, client.dnswl, client.trusted, dns.error, sender.own_domain, spf.result,
  greylist.new, from.address, from.domain, from.own_domain, dkim.result, dkim.domain,
  arc.result, dmarc.result, dmarc.policy;
- attachment scope (inside `attachment`): declared_type, detected_type, disposition, filename,
  extension, size, the part flags (`PART_FLAGS`), uninspectable (true, false or reasons), any,
  not.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import json
import re
from collections.abc import Callable
from typing import Any

from frontfilter.content.facts import Ambiguity, Limit, Part, Uninspectable
from frontfilter.memo import remembered
from frontfilter.model import Stage
from frontfilter.rules.conditions.tree import AnyOf, Leaf, Node, NotOf, all_of
from frontfilter.rules.conditions.values import (
    Env,
    count,
    names,
    networks,
    size_value,
    strings,
    type_name,
    value_range,
)
from frontfilter.rules.facts import Facts
from frontfilter.rules.matchers import NetworkMatcher
from frontfilter.reputation.facts import ArcResult, DkimResult, DmarcPolicy, DmarcResult, DnsCheck, SpfResult, domain_of

# Boolean facts of a part, each a `Part` field of the same name.
PART_FLAGS = (
    "type_mismatch", "encrypted", "in_archive", "has_macros", "bidi_control",
    "pdf_active_content", "html_script", "is_archive", "uuencoded",
)
PART_STRINGS = ("declared_type", "detected_type", "disposition")

# The first stage at which each message-scope condition's fact is known.
KNOWN_FROM = {
    "client": Stage.CONNECT,
    "tls": Stage.CONNECT,        # implicit TLS is known at connect; STARTTLS flips it later
    "helo": Stage.HELO,
    "auth": Stage.MAIL,          # AUTH comes after EHLO, before MAIL
    "sender": Stage.MAIL,
    "recipient": Stage.RCPT,
    "recipients": Stage.RCPT,
    "header": Stage.DATA,
    "subject": Stage.DATA,
    "body": Stage.DATA,
    "size": Stage.DATA,
    "inspection": Stage.DATA,
    "ambiguity": Stage.DATA,
    "virus": Stage.DATA,
    "attachment": Stage.DATA,
    # reputation (frontfilter.reputation): DNS facts of the client from connect, SPF from MAIL
    "dns": Stage.CONNECT,
    "spf": Stage.MAIL,
    "greylist": Stage.RCPT,      # the triplet needs the recipient
    "from": Stage.DATA,          # the From: header field
    "dkim": Stage.DATA,          # the message's signatures, checked at end of DATA
    "arc": Stage.DATA,
    "dmarc": Stage.DATA,
}

_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 §3.6.8 ftext
_GROUPS = frozenset({"client", "auth", "sender", "recipient", "recipients", "header", "inspection",
                     "dns", "spf", "greylist", "from", "dkim", "arc", "dmarc",
                     "virus", "attachment"})
_MAX_SPEC = 80  # characters of a condition quoted in a "not (...)" reason
_NESTING = re.compile(r"(?:any\[\d+\]\.|not\.)")  # path steps that reasons leave out


class Scope(enum.Enum):
    MESSAGE = "message"
    ATTACHMENT = "attachment"


def compile_table(table: dict[str, Any], env: Env, prefix: str = "",
                  scope: Scope = Scope.MESSAGE) -> Node | None:
    """All conditions of one table (AND). None when the table is empty or every key was bad."""
    nodes: list[Node] = []
    for key, value in table.items():
        path = prefix + key
        if key == "any":
            nodes.extend(_any(value, path, env, scope))
        elif key == "not":
            nodes.extend(_not(value, path, env, scope))
        elif scope is Scope.ATTACHMENT:
            nodes.extend(_part_condition(key, value, path, env))
        else:
            handler = _MESSAGE.get(key)
            if handler is None:
                env.error(path, "unknown condition")
                continue
            known = KNOWN_FROM[key]
            if env.stage is not None and env.stage.order < known.order:
                # Name the full key the administrator wrote: "sender.domain", not "sender".
                grouped = key in _GROUPS and isinstance(value, dict) and value
                keys = [f"{path}.{sub}" for sub in value] if grouped else [path]
                for full in keys:
                    env.error(full, f"not known at stage {env.stage.value} (known from stage {known.value})")
                continue
            nodes.extend(handler(value, path, env))
    if not nodes:
        return None
    return all_of(nodes, _spec(prefix.rstrip(".") or "conditions", table))


# --- combinators ---------------------------------------------------------------------------

def _any(value: Any, path: str, env: Env, scope: Scope) -> list[Node]:
    if not isinstance(value, list) or not value:
        env.error(path, "must be a non-empty list of condition tables")
        return []
    children = []
    for index, item in enumerate(value, start=1):
        where = f"{path}[{index}]"
        if not isinstance(item, dict) or not item:
            env.error(where, "must be a non-empty condition table")
            continue
        child = compile_table(item, env, where + ".", scope)
        if child is not None:
            children.append(child)
    if len(children) != len(value):
        return []
    return [AnyOf(tuple(children), _spec(path, value), any(c.per_part for c in children))]


def _not(value: Any, path: str, env: Env, scope: Scope) -> list[Node]:
    if not isinstance(value, dict) or not value:
        env.error(path, "must be a non-empty condition table")
        return []
    child = compile_table(value, env, path + ".", scope)
    if child is None:
        return []
    return [NotOf(child, _spec(_NESTING.sub("", path), value), child.per_part)]


# --- message scope -------------------------------------------------------------------------

def _subtable(value: Any, path: str, env: Env, keys: tuple[str, ...]) -> dict[str, Any]:
    """A group like `sender = { address = ..., domain = ... }`: report unknown keys."""
    if not isinstance(value, dict) or not value:
        env.error(path, f"must be a table with {' or '.join(keys)}")
        return {}
    known = {}
    for key, item in value.items():
        if key in keys:
            known[key] = item
        else:
            env.error(f"{path}.{key}", "unknown condition")
    return known


def _client(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("ip", *_CLIENT_REPUTATION)).items():
        if key in _CLIENT_REPUTATION:
            nodes += _CLIENT_REPUTATION[key](item, f"{path}.{key}", env)
            continue
        matcher = networks(item, f"{path}.{key}", env)
        if matcher is not None:
            nodes.append(_leaf(f"{path}.{key}", item, False, _peer_ip, _match_test(matcher, "in")))
    return nodes


def _helo(value: Any, path: str, env: Env) -> list[Node]:
    return _string_leaf(path, value, env, False, lambda f, p: _some(f.session.helo))


def _tls(value: Any, path: str, env: Env) -> list[Node]:
    return _bool_leaf(path, value, env, False, lambda f, p: (f.session.tls,))


def _auth(value: Any, path: str, env: Env) -> list[Node]:
    if isinstance(value, bool):
        return _bool_leaf(path, value, env, False, lambda f, p: (f.session.auth_user is not None,))
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("user",)).items():
        nodes += _string_leaf(f"{path}.{key}", item, env, False, lambda f, p: _some(f.session.auth_user))
    return nodes


def _sender(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("address", "domain", "own_domain", "domain_exists")).items():
        if key == "own_domain":   # the envelope sender's domain is one of ours (reputation)
            nodes += _bool_leaf(f"{path}.{key}", item, env, False, _sender_own_domain)
            continue
        if key == "domain_exists":   # DNS has an MX (or A/AAAA) for it; unknown: neither holds
            nodes += _bool_leaf(f"{path}.{key}", item, env, False, lambda f, p: (
                (f.checks.sender_domain_exists,) if f.checks.sender_domain_exists is not None else ()))
            continue
        pick = _address if key == "address" else _domain
        nodes += _string_leaf(f"{path}.{key}", item, env, False,
                              lambda f, p, pick=pick: tuple(pick(s) for s in _some(f.envelope.sender)))
    return nodes


def _recipient(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("address", "domain")).items():
        pick = _address if key == "address" else _domain
        nodes += _string_leaf(f"{path}.{key}", item, env, False,
                              lambda f, p, pick=pick: tuple(pick(r) for r in _recipients(f)))
    return nodes


def _recipients_group(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("count",)).items():
        test = value_range(item, f"{path}.{key}", env, count)
        if test is not None:
            nodes.append(_leaf(f"{path}.{key}", item, False, lambda f, p: (_recipient_count(f),), test))
    return nodes


def _header(value: Any, path: str, env: Env) -> list[Node]:
    if not isinstance(value, dict) or not value:
        env.error(path, "must be a table of header names, e.g. header.X-Mailer = \"...\"")
        return []
    nodes: list[Node] = []
    for name, item in value.items():
        if not _HEADER_NAME.match(name):
            env.error(f"{path}.{name}", "not a valid header field name")
            continue
        nodes += _string_leaf(f"{path}.{name}", item, env, False,
                              lambda f, p, name=name: _message(f).header_values(name))
    return nodes


def _subject(value: Any, path: str, env: Env) -> list[Node]:
    return _string_leaf(path, value, env, False, lambda f, p: (_message(f).subject,))


def _body(value: Any, path: str, env: Env) -> list[Node]:
    # A glob would have to match the whole body text: useless and slow. Regexes search.
    return _string_leaf(path, value, env, False, lambda f, p: _message(f).text,
                        regex_only=True, show=lambda text: "text")


def _size(value: Any, path: str, env: Env) -> list[Node]:
    test = value_range(value, path, env, size_value)
    return [] if test is None else [_leaf(path, value, False, lambda f, p: (_message(f).size,), test)]


def _inspection(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("limit",)).items():
        test = names(item, f"{path}.{key}", env, Limit)
        if test is not None:
            nodes.append(_leaf(f"{path}.{key}", item, False,
                               lambda f, p: (_message(f).limits_exceeded,), test))
    return nodes


def _ambiguity(value: Any, path: str, env: Env) -> list[Node]:
    test = names(value, path, env, Ambiguity)
    return [] if test is None else [_leaf(path, value, False, lambda f, p: (_message(f).ambiguities,), test)]


def _virus(value: Any, path: str, env: Env) -> list[Node]:
    # Only a conclusive scan answers: after a failed scan (or none) neither `virus = true` nor
    # `virus = false` holds, so `virus = false` can never wave through an unscanned message.
    if isinstance(value, bool):
        return _bool_leaf(path, value, env, False, lambda f, p: _scan_verdict(f))
    if not isinstance(value, dict):
        env.error(path, f"must be true, false or a table {{ name = ... }}, not {type_name(value)}")
        return []
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("name",)).items():
        nodes += _string_leaf(f"{path}.{key}", item, env, False, lambda f, p: _signatures(f))
    return nodes


def _attachment(value: Any, path: str, env: Env) -> list[Node]:
    if not isinstance(value, dict) or not value:
        env.error(path, "must be a table of attachment conditions")
        return []
    node = compile_table(value, env, path + ".", Scope.ATTACHMENT)
    return [] if node is None else [node]


# --- reputation: DNSBL/DNSWL, SPF, greylisting, our own domains (frontfilter.reputation) ------
# A check that did not run (no list configured, no rule needing it) reads as "nothing found":
# score 0, listed nowhere, not allow-listed, no SPF result, not a new greylist triplet.

def _listing(facts: Facts) -> Any:
    return facts.checks.listing


def _score(value: Any) -> int:
    # Scores are sums of weights, and allow lists weigh negative: negative bounds are fine.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {value!r}")
    return value


def _client_dnsbl(value: Any, path: str, env: Env) -> list[Node]:
    return _bool_leaf(path, value, env, False,
                      lambda f, p: (bool(_listing(f) and _listing(f).over_threshold),))


def _client_dnsbl_score(value: Any, path: str, env: Env) -> list[Node]:
    test = value_range(value, path, env, _score)
    if test is None:
        return []
    return [_leaf(path, value, False, lambda f, p: (_listing(f).score if _listing(f) else 0,), test)]


def _client_listed_on(value: Any, path: str, env: Env) -> list[Node]:
    return _string_leaf(path, value, env, False,
                        lambda f, p: _listing(f).listed_on if _listing(f) else ())


def _client_dnswl(value: Any, path: str, env: Env) -> list[Node]:
    return _bool_leaf(path, value, env, False,
                      lambda f, p: (bool(_listing(f) and _listing(f).allowlisted),))


def _client_trusted(value: Any, path: str, env: Env) -> list[Node]:
    return _bool_leaf(path, value, env, False, lambda f, p: (f.checks.trusted,))


_CLIENT_REPUTATION: dict[str, Callable[[Any, str, Env], list[Node]]] = {
    "dnsbl": _client_dnsbl, "dnsbl_score": _client_dnsbl_score, "listed_on": _client_listed_on,
    "dnswl": _client_dnswl, "trusted": _client_trusted,
}


def _names_of(value: Any) -> Any:
    return [value] if isinstance(value, str) else value   # one name or a list of names


def _dns(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("error",)).items():
        test = names(_names_of(item), f"{path}.{key}", env, DnsCheck)
        if test is not None:
            nodes.append(_leaf(f"{path}.{key}", item, False, lambda f, p: (f.checks.dns_errors,), test))
    return nodes


def _spf(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("result",)).items():
        nodes += _one_of(item, f"{path}.{key}", env, SpfResult, lambda f: f.checks.spf)
    return nodes


def _one_of(value: Any, path: str, env: Env, kind: type[enum.Enum], read: Callable[[Facts], Any]) -> list[Node]:
    """A fact that is one word of `kind` (or not known: then no condition on it holds)."""
    test = names(_names_of(value), path, env, kind)
    if test is None:
        return []
    return [_leaf(path, value, False, lambda f, p: (
        frozenset({read(f)}) if read(f) is not None else frozenset(),), test)]


def _dkim(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("result", "domain")).items():
        if key == "result":
            nodes += _one_of(item, f"{path}.{key}", env, DkimResult, lambda f: f.checks.authenticity.dkim)
        else:     # the signing domains (d=) of the signatures that verified
            nodes += _string_leaf(f"{path}.{key}", item, env, False, lambda f, p: f.checks.authenticity.dkim_domains)
    return nodes


def _arc(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("result",)).items():
        nodes += _one_of(item, f"{path}.{key}", env, ArcResult, lambda f: f.checks.authenticity.arc)
    return nodes


def _dmarc(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("result", "policy")).items():
        if key == "result":
            nodes += _one_of(item, f"{path}.{key}", env, DmarcResult, lambda f: f.checks.authenticity.dmarc)
        else:
            nodes += _one_of(item, f"{path}.{key}", env, DmarcPolicy, lambda f: f.checks.authenticity.dmarc_policy)
    return nodes


def _greylist(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("new",)).items():
        nodes += _bool_leaf(f"{path}.{key}", item, env, False, lambda f, p: (bool(f.checks.greylist_new),))
    return nodes


def _from(value: Any, path: str, env: Env) -> list[Node]:
    nodes: list[Node] = []
    for key, item in _subtable(value, path, env, ("address", "domain", "own_domain")).items():
        where = f"{path}.{key}"
        if key == "own_domain":
            nodes += _bool_leaf(where, item, env, False, lambda f, p: (
                any(domain in f.checks.own_domains for domain in _from_domains(f)),))
        elif key == "domain":
            nodes += _string_leaf(where, item, env, False, _from_domains)
        else:
            nodes += _string_leaf(where, item, env, False, _from_addresses)
    return nodes


def _sender_own_domain(facts: Facts, part: Part | None) -> tuple[bool, ...]:
    sender = facts.envelope.sender
    return (sender is not None and sender != "" and domain_of(sender) in facts.checks.own_domains,)


def _from_addresses(facts: Facts, part: Part | None = None) -> tuple[str, ...]:
    # Every address of every From: field: a second From: (or a mailbox-list) must not hide ours.
    return _addresses_in(tuple(_message(facts).header_values("From")))


@remembered(maxsize=1024, longest=512)
def _addresses_in(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The stdlib's address-list parse takes 30-60 µs; a sender's From: repeats (a newsletter,
    a person writing all day), and more than one rule may read it."""
    return tuple(address for _name, address in email.utils.getaddresses(list(fields)) if "@" in address)


def _from_domains(facts: Facts, part: Part | None = None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(d for d in map(domain_of, _from_addresses(facts)) if d))


_MESSAGE: dict[str, Callable[[Any, str, Env], list[Node]]] = {
    "client": _client, "helo": _helo, "tls": _tls, "auth": _auth, "sender": _sender,
    "recipient": _recipient, "recipients": _recipients_group, "header": _header,
    "subject": _subject, "body": _body, "size": _size, "inspection": _inspection,
    "ambiguity": _ambiguity, "virus": _virus, "attachment": _attachment,
    "dns": _dns, "spf": _spf, "greylist": _greylist, "from": _from,
    "dkim": _dkim, "arc": _arc, "dmarc": _dmarc,
}


# --- attachment scope (per part) -----------------------------------------------------------

def _the(part: Part | None) -> Part:
    """A per-part condition is only ever evaluated with a part (tree.py)."""
    assert part is not None
    return part


def _part_condition(key: str, value: Any, path: str, env: Env) -> list[Node]:
    if key in PART_STRINGS:
        return _string_leaf(path, value, env, True, lambda f, p, key=key: (getattr(p, key),))
    if key == "filename":
        return _string_leaf(path, value, env, True, lambda f, p: _filenames(_the(p)))
    if key == "extension":
        return _string_leaf(path, value, env, True, lambda f, p: _extensions(_the(p)),
                            normalise=lambda text: text.lstrip("."))
    if key in PART_FLAGS:
        return _bool_leaf(path, value, env, True, lambda f, p, key=key: (getattr(p, key),))
    if key == "uninspectable":
        # true (any reason), false (read to the end), or the reasons: ["corrupt", "time"]
        test = names(value, path, env, Uninspectable)
        return [] if test is None else [_leaf(path, value, True, lambda f, p: (_the(p).uninspectable,), test)]
    if key == "size":
        sized = value_range(value, path, env, size_value)
        return [] if sized is None else [_leaf(path, value, True, lambda f, p: (_the(p).size,), sized)]
    env.error(path, "unknown attachment condition")
    return []


def _filenames(part: Part) -> tuple[str, ...]:
    # Inspection may report a second name (filename= vs name= disagreeing): test both.
    names = (part.filename, getattr(part, "alt_filename", None))
    return tuple(name for name in names if name)


def _extensions(part: Part) -> tuple[str, ...]:
    alt = getattr(part, "alt_filename", None)
    if not alt:
        return part.extensions
    return part.extensions + tuple(ext for ext in alt.lower().split(".")[1:] if ext)


# --- leaves and value parsers --------------------------------------------------------------

def _leaf(path: str, raw: Any, per_part: bool, values: Callable[..., Any],
          test: Callable[[Any], str | None]) -> Leaf:
    # Errors name the full path ("any[2].subject"); reasons name the condition ("subject").
    key = _NESTING.sub("", path)
    return Leaf(key, _spec(key, raw), per_part, values, test)


def _string_leaf(path: str, value: Any, env: Env, per_part: bool,
                 values: Callable[..., Any], *, regex_only: bool = False,
                 normalise: Callable[[str], str] = lambda text: text,
                 show: Callable[[str], str] = lambda text: text) -> list[Node]:
    matcher = strings(value, path, env, regex_only=regex_only, normalise=normalise)
    if matcher is None:
        return []

    def test(text: str) -> str | None:
        label = matcher.match(text)
        return None if label is None else f"{show(text)} matches {label}"

    leaf = _leaf(path, value, per_part, values, test)
    return [dataclasses.replace(leaf, patterns=matcher)]


def _bool_leaf(path: str, value: Any, env: Env, per_part: bool,
               values: Callable[..., Any]) -> list[Node]:
    if not isinstance(value, bool):
        env.error(path, f"must be true or false, not {type_name(value)}")
        return []
    word = "true" if value else "false"
    return [_leaf(path, value, per_part, values, lambda got: f"is {word}" if bool(got) is value else None)]


# --- facts helpers -------------------------------------------------------------------------

def _some(value: str | None) -> tuple[str, ...]:
    return () if value is None else (value,)


def _address(address: str) -> str:
    return address


def _domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".")


def _recipients(facts: Facts) -> tuple[str, ...]:
    # At rcpt: the recipient being decided. At data: every accepted recipient (any may match).
    if facts.recipient is not None:
        return (facts.recipient,)
    return facts.envelope.recipients


def _recipient_count(facts: Facts) -> int:
    # At rcpt the recipient being decided counts too: "over 50" refuses the 51st.
    pending = 1 if facts.stage is Stage.RCPT and facts.recipient is not None else 0
    return len(facts.envelope.recipients) + pending


def _peer_ip(facts: Facts, part: Part | None) -> tuple[Any, ...]:
    return (facts.session.peer.ip,)


def _match_test(matcher: NetworkMatcher, verb: str) -> Callable[[Any], str | None]:
    def test(ip: Any) -> str | None:
        label = matcher.match(ip)
        return None if label is None else f"{ip} {verb} {label}"
    return test


def _scan_verdict(facts: Facts) -> tuple[bool, ...]:
    scan = facts.antivirus
    return (scan.infected,) if scan is not None and not scan.failed else ()


def _signatures(facts: Facts) -> tuple[str, ...]:
    scan = facts.antivirus
    return scan.signatures if scan is not None and scan.infected else ()


def _message(facts: Facts) -> Any:
    if facts.message is None:
        # The loader refuses message conditions before data; reaching here is a pipeline bug,
        # and failing loudly makes the pipeline answer 451 rather than pass the message.
        raise ValueError(f"facts for stage {facts.stage.value} carry no message")
    return facts.message


def _spec(path: str, raw: Any) -> str:
    try:
        shown = json.dumps(raw, ensure_ascii=False, default=str)
    except ValueError:
        shown = repr(raw)
    if len(shown) > _MAX_SPEC:
        shown = shown[: _MAX_SPEC - 3] + "..."
    return f"{path} = {shown}"
