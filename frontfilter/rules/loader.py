"""Rule files -> a validated `RuleSet`, or one `RuleSetError` listing every problem.

`load_ruleset(rules_dir)` reads `*.toml` in file-name order (shipped defaults are low-numbered,
site files higher), each holding `[[rule]]` tables, plus any list files they reference with
`"@path"` (relative to the rules directory). All I/O happens here, at load; evaluation does none.

Guarantees: a rule set is used whole or not at all. Every problem — TOML syntax, unknown or
mistyped key, bad regex or CIDR, unknown action/stage/mode, duplicate name, missing list file,
a condition its stage cannot know, a reply of the wrong class — is collected as one line
`FILE: rule NAME: key: problem` (`FILE: line N: problem` for TOML syntax), and the load raises
`RuleSetError(errors)` at the end. Nothing here raises anything else for a bad file.

Bounds: `MAX_RULE_FILE_BYTES` and `MAX_LIST_FILE_BYTES` (read once per load) keep a stray huge
file from eating the host's memory at reload.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

from frontfilter.content.rewrite import validate_notice
from frontfilter.model import Stage
from frontfilter.reply import Reply
from frontfilter.rules.conditions.compile import compile_table
from frontfilter.rules.conditions.values import Env, ListFileError
from frontfilter.rules.engine import RuleSet
from frontfilter.rules.model import Action, AddHeader, Mode, Rule, RuleSetError

MAX_RULE_FILE_BYTES = 4 * 1024 * 1024     # rule files are hand-written; 4 MiB is thousands of rules
MAX_LIST_FILE_BYTES = 64 * 1024 * 1024    # ~1 million addresses; past this use a database, not us

# Keys of a rule that are not conditions. `header` is also a condition group (header.<Name>);
# for an add_header rule its `name` and `value` keys are the header to add (see _split_header).
_RULE_KEYS = ("name", "description", "stage", "action", "mode", "reply", "notice", "tag")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # also a metric label value
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")   # one word of X-Frontfilter-Tags
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")     # RFC 5322 §3.6.8 ftext
_TOML_WHERE = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def load_ruleset(rules_dir: Path) -> RuleSet:
    """Load and validate every `*.toml` in `rules_dir`; raise `RuleSetError` listing all problems."""
    loader = _Loader(Path(rules_dir))
    return loader.load()


class _Loader:
    def __init__(self, rules_dir: Path) -> None:
        self.dir = rules_dir
        self.errors: list[str] = []
        self.rules: list[Rule] = []
        self.names: dict[str, str] = {}                      # rule name -> file first defining it
        self.lists: dict[str, list[tuple[int, str]]] = {}    # list path -> entries (read once)
        self.digest = hashlib.sha256()
        self.disabled: list[tuple[str, str]] = []            # (file, rule name) from `disable`

    def load(self) -> RuleSet:
        if not self.dir.is_dir():
            raise RuleSetError([f"{self.dir}: not a directory"])
        for path in sorted(self.dir.glob("*.toml")):
            self._load_file(path)
        disabled = self._check_disabled()
        for ref in sorted(self.lists):  # list contents matter for "did the set change?"
            self.digest.update(f"\0list {ref}\0".encode())
            for line, entry in self.lists[ref]:
                self.digest.update(f"{line}:{entry}\n".encode())
        if self.errors:
            raise RuleSetError(self.errors)
        rules = tuple(rule for rule in self.rules if rule.name not in disabled)
        return RuleSet(rules, self.digest.hexdigest()[:16])

    def _check_disabled(self) -> set[str]:
        """`disable = [...]` in a site file turns shipped rules off without editing them."""
        names = set()
        for file, name in self.disabled:
            if name not in self.names:
                self.errors.append(f"{file}: disable: unknown rule {name!r}")
            names.add(name)
        return names

    def _load_file(self, path: Path) -> None:
        name = path.name
        try:
            data = path.read_bytes()
        except OSError as error:
            self.errors.append(f"{name}: cannot read: {error.strerror}")
            return
        self.digest.update(f"\0file {name}\0".encode() + data)
        if len(data) > MAX_RULE_FILE_BYTES:
            self.errors.append(f"{name}: larger than {MAX_RULE_FILE_BYTES} bytes")
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            self.errors.append(f"{name}: line {data[: error.start].count(10) + 1}: not UTF-8 text")
            return
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            self.errors.append(_toml_error(name, str(error), text))
            return
        for key in document:
            if key not in ("rule", "disable"):
                self.errors.append(f"{name}: {key}: unknown top-level key (a rule file holds [[rule]] tables and disable)")
        disable = document.get("disable", [])
        if not isinstance(disable, list) or not all(isinstance(item, str) for item in disable):
            self.errors.append(f"{name}: disable: must be a list of rule names")
        else:
            self.disabled.extend((name, item) for item in disable)
        rules = document.get("rule", [])
        if not isinstance(rules, list) or not all(isinstance(item, dict) for item in rules):
            self.errors.append(f"{name}: rule: must be [[rule]] tables")
            return
        for index, raw in enumerate(rules, start=1):
            rule = self._compile_rule(name, index, raw)
            if rule is not None:
                self.rules.append(rule)

    def _compile_rule(self, file: str, index: int, raw: dict[str, Any]) -> Rule | None:
        errors: list[str] = []
        rule_name = raw.get("name")
        label = f"rule {rule_name}" if isinstance(rule_name, str) and rule_name else f"rule #{index}"

        def error(key: str, problem: str) -> None:
            errors.append(f"{file}: {label}: {key}: {problem}")

        # Identity first, so that every later error names the rule.
        if rule_name is None:
            error("name", "missing")
        elif not isinstance(rule_name, str) or not _NAME.match(rule_name):
            error("name", "must be letters, digits, '_', '.' or '-' (at most 100), starting with a letter or digit")
        elif rule_name in self.names:
            error("name", f"duplicate: already defined in {self.names[rule_name]}")
        else:
            self.names[rule_name] = file

        action = _enum(raw, "action", Action, None, error)
        stage = _enum(raw, "stage", Stage, Stage.DATA, error)
        mode = _enum(raw, "mode", Mode, Mode.ENFORCE, error)
        description = raw.get("description", "")
        if not isinstance(description, str):
            error("description", f"must be a string, not {_type(description)}")

        conditions = {key: value for key, value in raw.items() if key not in _RULE_KEYS}
        header = _split_header(conditions, action, error)
        env = Env(stage, error, self._read_list)
        condition = compile_table(conditions, env) if conditions else None
        per_part = condition is not None and condition.per_part

        reply = _reply(raw, action, error)
        notice = _notice(raw, action, error)
        tag = _tag(raw, action, error)
        if action is not None and stage is not None:
            _check_action_stage(action, stage, per_part, error)

        if errors:
            self.errors.extend(errors)
            return None
        assert rule_name is not None and action is not None and stage is not None and mode is not None
        return Rule(
            name=rule_name, file=file, stage=stage, action=action, mode=mode,
            description=description, reply=reply or action.default_reply, notice=notice,
            header=header, tag=tag, condition=condition, per_part=per_part,
        )

    def _read_list(self, ref: str) -> list[tuple[int, str]]:
        """Entries of a list file: one per line, blank lines and `#` comments skipped."""
        cached = self.lists.get(ref)
        if cached is not None:
            return cached
        path = self.dir / ref
        try:
            if path.stat().st_size > MAX_LIST_FILE_BYTES:
                raise ListFileError(f"larger than {MAX_LIST_FILE_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ListFileError("no such file") from None
        except UnicodeDecodeError:
            raise ListFileError("not UTF-8 text") from None
        except OSError as error:
            raise ListFileError(f"cannot read: {error.strerror}") from None
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            # "#" starts a comment at line start or after blank space; addresses, domains and
            # networks hold no blanks, so an entry is never cut.
            entry = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
            if entry:
                entries.append((number, entry))
        self.lists[ref] = entries
        return entries


def _enum(raw: dict[str, Any], key: str, kind: Any, default: Any, error: Any) -> Any:
    value = raw.get(key)
    if value is None:
        if default is None:
            error(key, "missing")
        return default
    names = ", ".join(member.value for member in kind)
    if not isinstance(value, str):
        error(key, f"must be a string (one of {names}), not {_type(value)}")
        return None
    try:
        return kind(value)
    except ValueError:
        error(key, f"unknown {key} {value!r} (one of {names})")
        return None


def _split_header(conditions: dict[str, Any], action: Action | None, error: Any) -> AddHeader | None:
    """For add_header, take `header.name` / `header.value` out; other `header.X` stay conditions."""
    table = conditions.get("header")
    if action is not Action.ADD_HEADER:
        return None
    if not isinstance(table, dict) or "name" not in table or "value" not in table:
        error("header", 'add_header needs header = { name = "X-...", value = "..." }')
        return None
    rest = dict(table)
    name, value = rest.pop("name"), rest.pop("value")
    if rest:
        conditions["header"] = rest
    else:
        del conditions["header"]
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        error("header.name", "must be a header field name (printable ASCII, no colon or space)")
        return None
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        error("header.value", "must be a one-line string")
        return None
    return AddHeader(name, value)


def _reply(raw: dict[str, Any], action: Action | None, error: Any) -> Reply | None:
    text = raw.get("reply")
    if text is None:
        return None
    if not isinstance(text, str):
        error("reply", f"must be a string like \"554 5.7.1 text\", not {_type(text)}")
        return None
    try:
        reply = Reply.parse(text)
    except ValueError as problem:
        error("reply", str(problem))
        return None
    if action is None:
        return None
    classes = action.reply_classes
    if not classes:
        error("reply", f"action {action.value} takes no reply")
    elif reply.code // 100 not in classes:
        wanted = " or ".join(f"{c}xx" for c in sorted(classes))
        error("reply", f"action {action.value} needs a {wanted} code, not {reply.code}")
    return reply


def _notice(raw: dict[str, Any], action: Action | None, error: Any) -> str | None:
    notice = raw.get("notice")
    if notice is None:
        return None
    if action is not None and action is not Action.STRIP:
        error("notice", "only a strip rule takes a notice")
        return None
    if not isinstance(notice, str):
        error("notice", f"must be a string, not {_type(notice)}")
        return None
    try:
        validate_notice(notice)  # the same check the rewrite applies when it renders
    except ValueError as problem:
        error("notice", str(problem).removeprefix("notice template: "))
        return None
    return notice


def _tag(raw: dict[str, Any], action: Action | None, error: Any) -> str | None:
    tag = raw.get("tag")
    if action is Action.TAG and tag is None:
        error("tag", "missing (a tag rule needs tag = \"word\")")
        return None
    if tag is None:
        return None
    if action is not None and action is not Action.TAG:
        error("tag", "only a tag rule takes a tag")
        return None
    if not isinstance(tag, str) or not _TAG.match(tag):
        error("tag", "must be one word: letters, digits, '_', '.' or '-'")
        return None
    return tag


def _check_action_stage(action: Action, stage: Stage, per_part: bool, error: Any) -> None:
    if action is Action.STRIP:
        if stage is not Stage.DATA:
            error("action", f"strip works on the message: needs stage data, not {stage.value}")
        elif not per_part:
            error("action", "strip needs an attachment condition (it removes the parts that matched)")
    elif action is Action.QUARANTINE and stage is not Stage.DATA:
        error("action", f"quarantine keeps the message: needs stage data, not {stage.value}")
    elif action is Action.DISCARD and stage.order < Stage.MAIL.order:
        error("action", f"discard drops a transaction: needs stage mail or later, not {stage.value}")


def _toml_error(name: str, message: str, text: str) -> str:
    found = _TOML_WHERE.match(message)
    if found:
        problem, line, column = found.groups()
        return f"{name}: line {line}: {problem} (column {column})"
    if message.endswith(" (at end of document)"):
        return f"{name}: line {text.count(chr(10)) + 1}: {message[: -len(' (at end of document)')]} (at end of file)"
    return f"{name}: {message}"


def _type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
