"""The sender map: which envelope senders each SMTP AUTH login may use (`relay.sender_map`).

Postfix's `smtpd_sender_login_maps` + `reject_sender_login_mismatch`, written the other way
round (login first), because an administrator thinks "what may alice send as":

    # login: the senders it may use (addresses, or *@domain for any address of a domain)
    alice@example.org: alice@example.org, a.smith@example.org
    webshop: *@shop.example.org, noreply@example.org

Rules of the map:
- a login in the map may use exactly the senders listed on its line;
- a login not in the map may use only itself, when the login is an address (most users file
  entries are); any other login may use no sender at all: binding fails closed;
- the null sender `<>` is always allowed (RFC 5321 §4.5.5: bounces and read receipts);
- addresses are compared without regard to case (local parts included: mail systems behind a
  relay treat them so, and a case trick must not get around the map).

Kept apart from the users file (`auth.users_file`, frontfilter/smtp/passwd.py) on purpose: that file
holds secrets and is rewritten by `frontfilter passwd`; this one is policy, edited by hand,
reviewed like rule files. It is read at start and on reload (SIGHUP); a bad line is an error
naming the file and line, and the previous map stays in force.

Pure: no asyncio, no logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 16 * 1024 * 1024   # ~100,000 logins; a map larger than that is a database

_ENTRY = re.compile(r"^(?:\*|[^\s@,*]+)@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")


class SenderMapError(Exception):
    """Problems in a sender map, each `FILE:LINE: problem`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SenderMap:
    addresses: dict[str, frozenset[str]]      # login -> exact addresses (lower case)
    domains: dict[str, frozenset[str]]        # login -> domains of "*@domain" entries

    def allows(self, login: str, sender: str) -> bool:
        """May `login` use `sender` (as given at MAIL, domain already normalised)?"""
        if not sender:
            return True
        address = sender.lower()
        domain = address.rpartition("@")[2].rstrip(".")
        if login not in self.addresses:
            return "@" in login and address == login.lower()
        return address in self.addresses[login] or domain in self.domains[login]

def parse_sender_map(text: str, label: str) -> SenderMap:
    addresses: dict[str, frozenset[str]] = {}
    domains: dict[str, frozenset[str]] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        where = f"{label}:{number}"
        login, sep, rest = content.partition(":")
        login = login.strip()
        if not sep or not login or any(c.isspace() for c in login):
            problems.append(f"{where}: expected \"login: sender, sender ...\"")
            continue
        if login in addresses:
            problems.append(f"{where}: login {login!r} appears twice")
            continue
        exact, wild = set(), set()
        entries = [e for e in re.split(r"[\s,]+", rest.strip()) if e]
        if not entries:
            problems.append(f"{where}: login {login!r} has no sender (remove the line to use the default)")
            continue
        for entry in entries:
            if not _ENTRY.match(entry):
                problems.append(f"{where}: {entry!r} is not an address or *@domain")
            elif entry.startswith("*@"):
                wild.add(entry[2:].lower().rstrip("."))
            else:
                exact.add(entry.lower())
        addresses[login] = frozenset(exact)
        domains[login] = frozenset(wild)
    if problems:
        raise SenderMapError(problems)
    return SenderMap(addresses, domains)


def load_sender_map(path: Path) -> SenderMap:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SenderMapError([f"{path}: larger than {MAX_FILE_BYTES} bytes"])
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise SenderMapError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SenderMapError([f"{path}: cannot read: {getattr(error, 'strerror', None) or error}"]) from None
    return parse_sender_map(text, str(path))
