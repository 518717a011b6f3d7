"""Hand-built facts for rules tests: no libmagic, no parser, just the values inspection reports."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from frontfilter.content.facts import MessageView, Part
from frontfilter.model import EnvelopeFacts, Peer, SessionFacts, Stage
from frontfilter.rules import Facts, RuleSet, load_ruleset

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"


def part(path: str = "2", *, name: str | None = None, declared: str = "application/octet-stream",
         detected: str | None = None, mime_path: str | None = None,
         **flags: object) -> Part:
    extensions = tuple(name.lower().split(".")[1:]) if name else ()
    return Part(
        path=path, mime_path=mime_path or path.split("/")[0], declared_type=declared,
        detected_type=detected or declared, filename=name, extensions=extensions,
        size=flags.pop("size", 1000), sha256="0" * 64,  # type: ignore[arg-type]
        disposition=flags.pop("disposition", "attachment" if name else ""),  # type: ignore[arg-type]
        **flags,
    )


def body_part(text_type: str = "text/plain", path: str = "1", **flags: object) -> Part:
    return part(path, declared=text_type, disposition="", **flags)


def view(*parts: Part, subject: str = "Hello", text: tuple[str, ...] = ("Hello there",),
         headers: tuple[tuple[str, str], ...] = (), size: int = 2000, **kw: object) -> MessageView:
    return MessageView(size=size, headers=(("Subject", subject), *headers), subject=subject,
                       from_header="a@example.org", parts=parts or (body_part(),), text=text, **kw)  # type: ignore[arg-type]


def facts(stage: Stage = Stage.DATA, *, message: MessageView | None = None, ip: str = "198.51.100.7",
          helo: str | None = "mx.example.org", tls: bool = False, auth_user: str | None = None,
          sender: str | None = "alice@example.org", recipients: tuple[str, ...] = ("bob@example.com",),
          recipient: str | None = None) -> Facts:
    session = SessionFacts(Peer(ipaddress.ip_address(ip), 40000), helo, tls, auth_user)
    envelope = EnvelopeFacts(sender if stage.order >= Stage.MAIL.order else None,
                             recipients if stage.order > Stage.RCPT.order else ())
    if stage is Stage.DATA and message is None:
        message = view()
    return Facts(stage, session, envelope, recipient, message)


def ruleset(tmp_path: Path, text: str, lists: dict[str, str] | None = None) -> RuleSet:
    (tmp_path / "50-test.toml").write_text(text)
    for rel, content in (lists or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    return load_ruleset(tmp_path)
