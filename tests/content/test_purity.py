"""content/ is a pure core (STYLE habit 12): no event loop, SMTP or metrics imports."""

from __future__ import annotations

import ast
import pathlib

import frontfilter.content
from tests.imports import imported_names, module_tree

FORBIDDEN = {"asyncio", "aiosmtpd", "aiosmtplib", "prometheus_client"}


def test_content_imports_no_io_frameworks():
    root = pathlib.Path(frontfilter.content.__file__).parent
    for module in root.glob("*.py"):
        tree = module_tree(module)
        for name in imported_names(tree):
            assert name.split(".")[0] not in FORBIDDEN, f"{module.name} imports {name}"
            if name.startswith("frontfilter."):
                assert name.startswith(("frontfilter.content", "frontfilter.model")), f"{module.name} imports {name}"
        assert ast.get_docstring(tree), f"{module.name} has no module docstring"
