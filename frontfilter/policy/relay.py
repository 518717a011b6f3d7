"""Relay access and address policy: a pure function of session facts, envelope facts and config.

Never an open relay: a recipient is accepted when its domain is one of `relay.domains`, or when
the client is in `relay.trusted_networks` or authenticated (SMTP AUTH, smtp/auth.py). Nothing
else — unless the administrator asked for an open relay with `relay.open = true` and the
explicit `relay.open_confirmation` sentence (config.py refuses one without the other, and the
service logs a warning at every start).

Address tricks are refused outright rather than normalised, for every client: normalising
`user%evil.net@example.org` to a relay-domain address would still hand the backend a local part
that some MTAs (Sendmail, Postfix with `allow_percent_hack`, old Exchange) turn into relaying. So
`%` and `!` in the local part, quoted local parts, source routes (`@a:u@b`), IP literals and
malformed domains are answered `553 5.1.3` / `550 5.7.1` at RCPT, and nothing is forwarded.
Mixed case and a trailing dot in the domain are normalised (RFC 5321 §2.4: domains are
case-insensitive); the local part is passed on untouched (its case belongs to the backend).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import email_validator

from frontfilter import reply
from frontfilter.config import Config, OutboundSenders
from frontfilter.model import SessionFacts
from frontfilter.reply import Reply
from frontfilter.policy.sendermap import SenderMap

ADDRESS_FORM_REFUSED = Reply(550, "5.7.1", "Recipient address form not accepted")
NON_ASCII_WITHOUT_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
# Domain-bound relaying (Postfix: reject_sender_login_mismatch, and its wording).
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user")
SENDER_NOT_OURS = Reply(553, "5.7.1", "Sender address rejected: not in a domain of ours")

# RFC 5321 §4.5.3.1: local part 64 octets, domain 255, path 256.
MAX_LOCAL_PART = 64
MAX_PATH = 256


@dataclass(frozen=True)
class Address:
    """An address as policy understood it: the original text and its normalised domain."""

    text: str        # as the client sent it (passed on to the backend)
    local: str
    domain: str      # lower-case, A-label form, no trailing dot

    @property
    def normalised(self) -> str:
        """What is handed to the backend: the local part untouched, the domain normalised."""
        return f"{self.local}@{self.domain}" if self.domain else self.text


def parse_sender(text: str, smtputf8: bool) -> Address | Reply:
    """The envelope sender. "" is the null sender (bounces); otherwise a valid address."""
    if text == "":
        return Address("", "", "")
    return _parse(text, smtputf8, reply.BAD_SENDER, strict=False)


def parse_recipient(text: str, smtputf8: bool) -> Address | Reply:
    return _parse(text, smtputf8, reply.BAD_RECIPIENT, strict=True)


# A relay sees the same few thousand addresses again and again (its own users, its regular
# correspondents), and email-validator takes 40-60 µs per address: answers are kept for the most
# recently seen. The answer depends on the arguments only; both kinds of answer are immutable.
@functools.lru_cache(maxsize=4096)
def _parse(text: str, smtputf8: bool, malformed: Reply, strict: bool) -> Address | Reply:
    if not text.isascii() and not smtputf8:
        return NON_ASCII_WITHOUT_SMTPUTF8
    if len(text) > MAX_PATH or "@" not in text:
        return malformed
    local, _, domain = text.rpartition("@")
    if strict:
        # The checks email-validator does not make, or makes differently: routing characters.
        if local.startswith('"') or "%" in local or "!" in local or local.startswith("@") or ":" in local:
            return ADDRESS_FORM_REFUSED
        if domain.startswith("["):
            return ADDRESS_FORM_REFUSED
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART:
        return malformed
    try:
        valid = email_validator.validate_email(
            text.rstrip("."),
            check_deliverability=False,
            allow_smtputf8=smtputf8,
            allow_quoted_local=not strict,
            allow_domain_literal=not strict,
            allow_display_name=False,
            globally_deliverable=False,
        )
    except email_validator.EmailNotValidError:
        return malformed
    except UnicodeError:
        return malformed
    domain = (valid.ascii_domain or valid.domain).lower()
    return Address(text, local, domain)


def may_relay(recipient: Address, session: SessionFacts, config: Config) -> Reply | None:
    """None when the recipient may be accepted from this client; else the refusal."""
    if recipient.domain in config.relay.domains:
        return None
    if config.relay.open:      # confirmed by relay.open_confirmation (config.py)
        return None
    if session.auth_user is not None:
        return None
    if any(session.peer.ip in network for network in config.relay.trusted_networks):
        return None
    return reply.RELAY_DENIED


# ---- domain-bound relaying ---------------------------------------------------------------------

def own_domains(config: Config) -> frozenset[str]:
    """The domains our own users send as: relay.sender_domains, or else relay.domains."""
    return frozenset(config.relay.sender_domains or config.relay.domains)


def may_send_as(sender: Address, session: SessionFacts, senders: SenderMap | None,
                own: frozenset[str] = frozenset()) -> Reply | None:
    """At MAIL: an authenticated user may use only the senders its login owns (a bounce, `<>`,
    always). With `relay.sender_map`, those the map gives the login (policy/sendermap.py). Without
    one, only itself: a login that is an address, that address; any other login, that name
    in one of our own domains (`own`) — never anyone else's address, so one stolen password
    cannot send as the whole company."""
    if session.auth_user is None or sender.text == "":
        return None
    if senders is not None:
        return None if senders.allows(session.auth_user, sender.normalised) else SENDER_NOT_OWNED
    login = session.auth_user.lower()
    if "@" in login:
        return None if sender.normalised.lower() == login else SENDER_NOT_OWNED
    return None if sender.local.lower() == login and sender.domain in own else SENDER_NOT_OWNED


def may_relay_out_as(sender: Address, recipient: Address, config: Config) -> Reply | None:
    """At RCPT, once `may_relay` allowed the recipient: with `relay.outbound_senders =
    "own_domains"`, mail relayed out (to a domain not ours) must come from one of our domains
    (or be a bounce). Mail for our own domains is inbound and not concerned."""
    if config.relay.outbound_senders is OutboundSenders.ANY:
        return None
    if recipient.domain in config.relay.domains or sender.text == "":
        return None
    return None if sender.domain in own_domains(config) else SENDER_NOT_OURS
