"""The relay serves SMTP with its own code: aiosmtpd stays for `frontfilter sink` and the tests."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "frontfilter"
ALLOWED = {PACKAGE / "sink.py"}     # the stand-in backend for `make run`, not the relay


def aiosmtpd_imports(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(name == "aiosmtpd" or name.startswith("aiosmtpd.") for name in names):
            lines.append(node.lineno)
    return lines


def test_no_relay_module_imports_aiosmtpd() -> None:
    found = {str(path.relative_to(PACKAGE.parent)): lines
             for path in sorted(PACKAGE.rglob("*.py")) if path not in ALLOWED
             if (lines := aiosmtpd_imports(path))}
    assert found == {}


def test_the_check_sees_an_import_where_there_is_one() -> None:
    assert aiosmtpd_imports(PACKAGE / "sink.py")
