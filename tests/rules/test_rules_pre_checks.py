"""A large rule set gives exactly the verdicts of the plain rule-by-rule loop.

The engine joins the patterns of many rules on one key into one pre-check and skips the rules
it rules out (engine.py). Whatever it skips must be a rule that would not have matched: here
random rule sets — exact strings, globs, regexes (one with a back-reference), list files, rules
with two conditions, per-attachment rules, monitor and strip rules — are evaluated with the
pre-checks and with them switched off, over messages built to hit some rules and miss others.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from frontfilter.model import Stage
from frontfilter.rules import engine
from frontfilter.rules.model import Verdict
from tests.rules.rules_helpers import body_part, facts, part, ruleset, view

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def random_rules(seed: int) -> tuple[str, dict[str, str]]:
    generator = random.Random(seed)
    rules, lists = [], {"lists/senders.txt": "".join(f"{w}@{w}.example\n" for w in WORDS[:4]) + "*@spam*.example\n"}

    def pattern(word: str) -> str:
        kind = generator.choice(["exact", "glob", "regex", "regex-backref"])
        if kind == "exact":
            return f'"{word}"'
        if kind == "glob":
            return f'"*{word[:3]}*"'
        if kind == "regex":
            return f'{{ regex = "{word[:4]}[a-z]" }}'
        return '{ regex = "(o)\\\\1" }'          # "oo": a back-reference stays a regex of its own

    for index in range(120):
        word = generator.choice(WORDS)
        key = generator.choice(["subject", "header.X-Mailer", "sender.domain", "attachment.filename",
                                "sender.address-list"])
        lines = [f'[[rule]]\nname = "r{index}"\nstage = "data"']
        if key == "sender.address-list":
            lines.append('sender.address = "@lists/senders.txt"')
        elif key == "attachment.filename":
            lines.append(f"attachment.filename = {pattern(word)}")
        else:
            lines.append(f"{key} = {pattern(word)}")
        if generator.random() < 0.2:
            lines.append(f'helo = "*{generator.choice(WORDS)}*"')      # a second, required condition
        action = generator.choice(["reject", "tag", "tag", "add_header", "strip", "quarantine"])
        if action == "strip" and key != "attachment.filename":
            action = "tag"
        if action == "add_header" and key == "header.X-Mailer":   # one TOML table `header`
            action = "tag"
        lines.append(f'action = "{action}"')
        if action == "tag":
            lines.append(f'tag = "t{index}"')
        if action == "add_header":
            lines.append(f'header = {{ name = "X-R{index}", value = "v" }}')
        if generator.random() < 0.3:
            lines.append('mode = "monitor"')
        rules.append("\n".join(lines))
    return "\n\n".join(rules) + "\n", lists


def messages(seed: int) -> list[dict[str, object]]:
    generator = random.Random(seed + 1000)
    out = []
    for _ in range(40):
        word, other = generator.choice(WORDS), generator.choice(WORDS)
        name = generator.choice([f"{word}.pdf", f"{other}x.doc", "plain.txt", "book.exe"])
        out.append({
            "message": view(body_part(), part("2", name=name),
                            subject=generator.choice([word, word.upper(), f"re: {other}s", "hello"]),
                            headers=(("X-Mailer", generator.choice([word + "z", "mailer", "foo"])),)),
            "sender": generator.choice([f"{word}@{other}.example", f"{word}@{word}.EXAMPLE",
                                        f"x@spam{word}.example", "alice@example.org"]),
            "helo": generator.choice([f"mx.{word}.example", "mail.example.org"]),
        })
    return out


@pytest.mark.parametrize("seed", range(6))
def test_pre_checks_change_no_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    text, lists = random_rules(seed)
    (tmp_path / "gated").mkdir()
    (tmp_path / "plain").mkdir()
    gated = ruleset(tmp_path / "gated", text, lists)
    assert any(plan.gates for plan in gated._plans.values()), "the rule set should be large enough to group"
    monkeypatch.setattr(engine, "GROUP_MIN", 10**9)
    plain = ruleset(tmp_path / "plain", text, lists)
    assert not any(plan.gates for plan in plain._plans.values())
    fired = 0
    for case in messages(seed):
        data = dataclasses.replace(facts(Stage.DATA, sender=case["sender"], helo=case["helo"]),  # type: ignore[arg-type]
                                   message=case["message"])
        got: Verdict = gated.evaluate(data)
        assert got == plain.evaluate(data)
        fired += len(got.matches)
    assert fired > 0, "the messages should make some rules match"
