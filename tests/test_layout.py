"""The rooms of frontfilter/ and which way their imports point: one test for the whole design
(docs/layout.md is the map a newcomer reads).

Every module of frontfilter/ is in one room (its top-level package, or a top-level module). A
room may import the shared base (what every room needs: the config, the reply and model types,
units, logs and metrics) and the rooms listed for it here, nothing else — imports inside
functions included. So the pure rooms (content, rules, reputation) stay testable without an
event loop, delivery never learns what content is, and nothing below the pipeline can call up
into it. The third-party imports that belong to one place are held there too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import REPO

PACKAGE = REPO / "frontfilter"

# Importable from every room: small, and importing nothing but each other.
BASE = {"config", "units", "model", "mapped", "bytesfind", "reply", "memo", "metrics", "observe", "__init__"}
# Room -> the other rooms it may import. Read top to bottom: each line may only use lines
# above it (the base aside).
MAY_IMPORT: dict[str, set[str]] = {
    "content": set(),                          # the message's bytes, read; no I/O, no policy
    "antivirus": set(),                        # clamd's client and its result
    "reputation": set(),                       # DNS facts about the client and the sender
    "rules": {"content", "reputation", "antivirus"},   # conditions read their facts
    "policy": set(),                           # relay access and address forms
    "delivery": {"policy", "reputation"},      # spool, quarantine, backend: no rules, no content
    "pipeline": {"content", "antivirus", "reputation", "rules", "policy", "delivery"},
    "smtp": {"pipeline"},                      # the wire; the handler calls the pipeline
    "endpoint": {"antivirus"},                 # /metrics, /readyz (a clamd ping)
    "process": {"pipeline", "smtp", "delivery", "endpoint", "rules"},
    "tools": {"pipeline", "delivery", "policy", "rules", "content"},
    "cli": {"process", "pipeline", "smtp", "delivery", "policy", "reputation", "rules", "tools"},
    "__main__": {"cli"},
}
# Modules that belong to one place each (by their first name, or in full for ours).
ONLY_IN = {
    "aiosmtpd": {"tools/sink.py"},                               # the stand-in backend, not the relay
    "prometheus_client": {"metrics.py", "observe.py", "endpoint/httpd.py"},
    # Metrics are defined in metrics.py and moved only through observe.py (and exported).
    "frontfilter.metrics": {"metrics.py", "observe.py", "endpoint/httpd.py"},
}
PURE = {"content", "rules"}          # no event loop, no sockets: decided in a thread, testable alone
NOT_IN_PURE = {"asyncio", "socket", "aiosmtplib", "aiosmtpd", "prometheus_client"}


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]


def imports(path: Path) -> list[str]:
    """Every module a file imports, anywhere in it: `from frontfilter import observe` names
    frontfilter.observe; `from frontfilter.x import y` names frontfilter.x."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "frontfilter":      # a module of the package, or a name in __init__
                names += [f"frontfilter.{alias.name}" if (PACKAGE / f"{alias.name}.py").exists()
                          or (PACKAGE / alias.name).is_dir() else "frontfilter.__init__" for alias in node.names]
            else:
                names.append(node.module)
    return names


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def wrong_imports(path: Path, room: str) -> list[str]:
    """The imports of `path`, a module of `room`, that the design does not allow: the base
    imports only the base; any other room the base, itself and its MAY_IMPORT."""
    allowed = BASE if room in BASE else BASE | {room} | MAY_IMPORT[room]
    return [name for name in imports(path) if name.startswith("frontfilter.") and name.split(".")[1] not in allowed]


def test_every_room_imports_only_what_the_design_allows() -> None:
    rooms = {room_of(path) for path in sources()}
    assert rooms <= BASE | MAY_IMPORT.keys(), f"rooms missing from the design: {rooms - BASE - MAY_IMPORT.keys()}"
    wrong = [f"{path.relative_to(REPO)} ({room_of(path)}) imports {name}"
             for path in sources() for name in wrong_imports(path, room_of(path))]
    assert not wrong, "\n".join(wrong)


def test_third_party_packages_stay_where_they_belong() -> None:
    wrong = []
    for path in sources():
        where = str(path.relative_to(PACKAGE))
        for name in imports(path):
            top = name.split(".")[0]
            homes = ONLY_IN.get(top) or ONLY_IN.get(name)
            if homes is not None and where not in homes:
                wrong.append(f"{where} imports {name} (only {', '.join(sorted(homes))} may)")
            if room_of(path) in PURE and top in NOT_IN_PURE:
                wrong.append(f"{where} imports {name}: {room_of(path)}/ is pure")
    assert not wrong, "\n".join(wrong)


def test_every_module_says_what_it_is_for() -> None:
    missing = [str(path.relative_to(REPO)) for path in sources()
               if path.stat().st_size and not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"no module docstring: {missing}"


def test_the_design_would_catch_a_wrong_import(tmp_path: Path) -> None:
    """The check finds what it should, inside a function too: the pipeline imported by delivery
    or by the base is wrong; the same import from the process room is fine."""
    stray = tmp_path / "stray.py"
    stray.write_text('"""x"""\nimport os\n\n\ndef f():\n    from frontfilter.pipeline.stages import Pipeline\n')
    assert wrong_imports(stray, "delivery") == ["frontfilter.pipeline.stages"]
    assert wrong_imports(stray, "config") == ["frontfilter.pipeline.stages"]
    assert wrong_imports(stray, "process") == []
