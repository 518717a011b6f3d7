"""What a source file imports, for the tests that keep the layers' imports pointing one way."""

from __future__ import annotations

import ast
from pathlib import Path


def module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imported_names(tree: ast.Module) -> list[str]:
    """Every module a file imports, anywhere in it: `import a.b` gives "a.b"; `from a import b`
    gives "a" and "a.b" (b may be a module: `from frontfilter import metrics`)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names
