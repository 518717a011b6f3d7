"""`frontfilter test CORPUS_DIR`: the administrator's rule regression tests.

Each `NAME.eml` in the corpus has a sidecar `NAME.toml` with its expected outcome:

    verdict = "reject"                 # accept, reject, tempfail, discard or quarantine
    rules = ["executable-by-type"]     # optional: exactly the rules that fire (any stage, any mode)
    stripped = ["invoice.docm"]        # optional: true/false, or the file names (or MIME part
                                       # paths) of the parts stripped
    sender = "a@example.net"           # optional envelope and session, as `frontfilter scan`
    recipient = ["b@example.org"]      #   takes them (recipient: one address or a list)
    client_ip = "192.0.2.1"
    helo = "client.example.net"
    auth_user = "alice"

Each message goes through the relay's own pipeline (frontfilter.pipeline.dryrun), exactly as `scan`
decides it. A message whose outcome differs is one line: file, expected, got, the rules that
fired. A strip, a tag or an added field forwards the message: its verdict is `accept`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from frontfilter.pipeline.disposition import Disposition
from frontfilter.pipeline.dryrun import DryEnvelope, DryResult

VERDICTS = tuple(d.action_word for d in Disposition)      # a sidecar may say "rejected" too
_ENVELOPE_KEYS: dict[str, type | tuple[type, ...]] = {
    "sender": str, "recipient": (str, list), "client_ip": str, "helo": str, "auth_user": str}
_KEYS: dict[str, type | tuple[type, ...]] = {
    "verdict": str, "rules": list, "stripped": (bool, list), **_ENVELOPE_KEYS}


class CorpusError(Exception):
    """The corpus cannot be read as one: each problem names its file and key."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Expected:
    verdict: str
    rules: tuple[str, ...] | None = None
    stripped: bool | tuple[str, ...] | None = None


@dataclass(frozen=True)
class Case:
    message: Path
    expected: Expected
    envelope: DryEnvelope


@dataclass
class Outcome:
    case: Case
    verdict: str
    rules: tuple[str, ...]
    stripped: tuple[str, ...]                     # "file name (part path)" of each stripped part
    reply: str
    mismatches: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def line(self, root: Path) -> str:
        """One line for the administrator: file, expected, got, the rules that fired."""
        name = relative(self.case.message, root)
        fired = ", ".join(self.rules) or "none"
        return f"{name}: {'; '.join(self.mismatches)} (rules fired: {fired}; reply {self.reply})"


def load_cases(directory: Path) -> list[Case]:
    """Every `.eml` under `directory` (sorted) with its sidecar; CorpusError lists every problem."""
    if not directory.is_dir():
        raise CorpusError([f"{directory}: not a directory"])
    problems: list[str] = []
    cases = []
    messages = sorted(directory.rglob("*.eml"))
    if not messages:
        problems.append(f"{directory}: no .eml files")
    for message in messages:
        sidecar = message.with_suffix(".toml")
        try:
            with sidecar.open("rb") as handle:
                table = tomllib.load(handle)
        except FileNotFoundError:
            problems.append(f"{sidecar}: missing: each .eml needs its expected outcome "
                            f"(verdict = \"accept\", ...)")
            continue
        except (OSError, tomllib.TOMLDecodeError) as error:
            problems.append(f"{sidecar}: {getattr(error, 'strerror', None) or error}")
            continue
        case = _case(message, sidecar, table, problems)
        if case is not None:
            cases.append(case)
    if problems:
        raise CorpusError(problems)
    return cases


def _case(message: Path, sidecar: Path, table: dict[str, Any], problems: list[str]) -> Case | None:
    found = len(problems)
    for key, value in table.items():
        if key not in _KEYS:
            problems.append(f"{sidecar}: {key}: unknown key (known: {', '.join(_KEYS)})")
        elif not isinstance(value, _KEYS[key]):
            problems.append(f"{sidecar}: {key}: {value!r} has the wrong type")
        elif isinstance(value, list) and not all(isinstance(item, str) for item in value):
            problems.append(f"{sidecar}: {key}: expected a list of strings")
    disposition = Disposition.of_word(str(table.get("verdict")))
    if "verdict" not in table:
        problems.append(f"{sidecar}: verdict: missing (one of {', '.join(VERDICTS)})")
    elif disposition is None:
        problems.append(f"{sidecar}: verdict: {table['verdict']!r} is not one of {', '.join(VERDICTS)}")
    if len(problems) > found:
        return None
    recipients = table.get("recipient", DryEnvelope.recipients)
    envelope = DryEnvelope(**{k: table[k] for k in ("sender", "client_ip", "helo", "auth_user") if k in table},
                           recipients=(recipients,) if isinstance(recipients, str) else tuple(recipients))
    stripped = table.get("stripped")
    assert disposition is not None
    expected = Expected(disposition.action_word, tuple(table["rules"]) if "rules" in table else None,
                        tuple(stripped) if isinstance(stripped, list) else stripped)
    return Case(message, expected, envelope)


def judge(case: Case, result: DryResult) -> Outcome:
    """What the relay decided against what the sidecar expects."""
    verdict = result.disposition.action_word
    rules = tuple(dict.fromkeys(m.rule for e in result.evaluations for m in e.verdict.matches))
    stripped = _stripped(result)
    shown = tuple(f"{name} ({path})" if name else path for path, name in stripped)
    outcome = Outcome(case, verdict, rules, shown, result.reply.wire)
    expected = case.expected
    if verdict != expected.verdict:
        outcome.mismatches.append(f"expected {expected.verdict}, got {verdict}"
                                  + (f" by {result.decided_by}" if result.decided_by else ""))
    if expected.rules is not None and set(rules) != set(expected.rules):
        missing, extra = sorted(set(expected.rules) - set(rules)), sorted(set(rules) - set(expected.rules))
        outcome.mismatches.append("rules: " + ", ".join(
            [f"{r} expected, did not fire" for r in missing] + [f"{r} fired, not expected" for r in extra]))
    got = ", ".join(shown) or "nothing"
    if isinstance(expected.stripped, bool) and expected.stripped != bool(stripped):
        outcome.mismatches.append("expected a part stripped, none was" if expected.stripped
                                  else f"expected nothing stripped, got {got}")
    elif isinstance(expected.stripped, tuple):
        names = {name for pair in stripped for name in pair if name}
        if len(expected.stripped) != len(stripped) or not set(expected.stripped) <= names:
            outcome.mismatches.append(f"expected stripped {', '.join(expected.stripped) or 'nothing'}, got {got}")
    return outcome


def _stripped(result: DryResult) -> list[tuple[str, str | None]]:
    """(MIME part path, file name) of each part the rules stripped from a forwarded message."""
    decision = result.decision
    if decision is None or not result.disposition.forwarded:
        return []
    parts = {p.mime_path: p for p in decision.view.parts if not p.in_archive}
    return [(order.mime_path, parts[order.mime_path].filename if order.mime_path in parts else None)
            for order in decision.stripped]


def run_corpus(cases: Iterable[Case], decide: Callable[[bytes, DryEnvelope], DryResult]) -> list[Outcome]:
    return [judge(case, decide(case.message.read_bytes(), case.envelope)) for case in cases]


def junit(outcomes: list[Outcome], root: Path) -> bytes:
    """A JUnit XML report (one test case per message) for CI systems."""
    failures = sum(not o.passed for o in outcomes)
    suite = ElementTree.Element("testsuite", name="frontfilter rules", tests=str(len(outcomes)),
                                failures=str(failures), errors="0")
    for outcome in outcomes:
        case = ElementTree.SubElement(suite, "testcase", classname="frontfilter.corpus",
                                      name=relative(outcome.case.message, root))
        if not outcome.passed:
            failure = ElementTree.SubElement(case, "failure", message="; ".join(outcome.mismatches))
            failure.text = outcome.line(root)
    return ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
