"""frontfilter uses only the public API of the stdlib and of the packages it depends on.

A `_`-prefixed name of another package can change or vanish in any release, and an upgrade that
removes it breaks the relay at run time, not at install time. So no file under `frontfilter/`
may (a) import a `_`-prefixed module or name from another package or the stdlib, (b) read a
`_`-prefixed attribute through a name an import bound (`ssl._ssl`, `logging._srcfile`),
(c) read a `_`-prefixed attribute of any object (`metric._labelnames`, `reader._buffer`, or an
attribute a foreign base class sets on `self`) unless frontfilter itself defines that name, or
(d) in a class derived from a foreign class, define or use (on `self`, `cls`, `super()`) a
`_`-prefixed name that class has (overriding aiosmtpd's `_handle_client` is reaching in too).
Dunders (`__name__`, `__dict__`) are public, and so are the few underscored names the stdlib
documents (`DOCUMENTED`). `getattr(x, "_name")` counts as reading `x._name`.

Rule (c) is by name, not by type: our own private helpers are allowed wherever they are used,
and a foreign private attribute that happens to share a name with one of ours is not caught.
Rule (d) imports the foreign base classes to look at them.

The same goes for versions: pyproject.toml pins nothing with `==`, so a security release of a
dependency is never blocked by frontfilter's own metadata.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "frontfilter"
OWN = "frontfilter"

# Underscored but public: the stdlib documents these as API.
DOCUMENTED = {
    "os._exit",     # a forked worker leaves without running the supervisor's cleanup (os docs)
}


def private(name: str) -> bool:
    """`_x` and `__x` are private; `__x__` (a dunder) and `_x_` (a sunder: enum's documented
    hooks, `_missing_`, `_generate_next_value_`) are public."""
    if len(name) > 2 and name.startswith("_") and name.endswith("_"):
        return False
    return name.startswith("_")


def own_module(module: str) -> bool:
    return module == OWN or module.startswith(OWN + ".")


@dataclass(frozen=True)
class Use:
    path: Path
    line: int
    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.name} ({self.why})"


def trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def defined_names(modules: dict[Path, ast.Module]) -> set[str]:
    """Every name frontfilter defines: functions, classes, names assigned at module or class
    level, attributes assigned on `self` or `cls`."""
    names: set[str] = set()
    for tree in modules.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
                body = node.body
            elif isinstance(node, ast.Module):
                body = node.body
            else:
                body = []
            for statement in body:      # module and class level: top-level bindings only
                for target in _assigned(statement):
                    if isinstance(target, ast.Name):
                        names.add(target.id)
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                for target in _assigned(node):
                    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                            and target.value.id in ("self", "cls")):
                        names.add(target.attr)
    return names


def _assigned(statement: ast.stmt) -> list[ast.expr]:
    if isinstance(statement, ast.Assign):
        targets = list(statement.targets)
    elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
        targets = [statement.target]
    else:
        return []
    flat: list[ast.expr] = []
    while targets:
        target = targets.pop()
        if isinstance(target, ast.Tuple | ast.List):
            targets.extend(target.elts)
        else:
            flat.append(target)
    return flat


def foreign_bindings(tree: ast.Module) -> dict[str, str]:
    """Names an import from outside frontfilter binds in this file (modules, classes, functions),
    each with the dotted path it stands for."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not own_module(alias.name):
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not own_module(node.module or ""):
            bound.update((alias.asname or alias.name, f"{node.module}.{alias.name}") for alias in node.names)
    return bound


def foreign_base_privates(node: ast.ClassDef, foreign: dict[str, str]) -> dict[str, str]:
    """The private names a class inherits from its bases outside frontfilter (imported here to
    look): name -> the foreign class that has it. A subclass that defines or reads one of these
    reaches into the base class's internals as surely as `obj._x` does."""
    inherited: dict[str, str] = {}
    for base in node.bases:
        dotted = ast.unparse(base)
        root = dotted.split(".")[0]
        if root not in foreign:
            continue
        target = _resolve(foreign[root] + dotted[len(root):])
        for cls in getattr(target, "__mro__", ())[:-1]:         # object's own names are public
            for name in vars(cls):
                if private(name):
                    inherited.setdefault(name, f"{cls.__module__}.{cls.__qualname__}")
    return inherited


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


def subclass_uses(path: Path, tree: ast.Module, foreign: dict[str, str]) -> list[Use]:
    found: list[Use] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        inherited = foreign_base_privates(node, foreign)
        if not inherited:
            continue
        defined = [(statement, statement.name) for statement in node.body
                   if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef)]
        defined += [(target, target.id) for statement in node.body for target in _assigned(statement)
                    if isinstance(target, ast.Name)]
        defined += [(inner, inner.attr) for inner in ast.walk(node)
                    if isinstance(inner, ast.Attribute) and (
                        isinstance(inner.value, ast.Name) and inner.value.id in ("self", "cls")
                        or isinstance(inner.value, ast.Call) and ast.unparse(inner.value.func) == "super")]
        found += [Use(path, where.lineno, f"{node.name}.{name}", f"private name of {inherited[name]}")
                  for where, name in defined if name in inherited]
    return found


def private_uses(path: Path, tree: ast.Module, ours: set[str]) -> list[Use]:
    found: list[Use] = []
    foreign = foreign_bindings(tree)
    inner: set[int] = set()     # `ssl._ssl` inside `ssl._ssl._test_decode_cert`: one finding
    for node in ast.walk(tree):     # breadth-first: the outer attribute comes first
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not own_module(alias.name) and any(map(private, alias.name.split("."))):
                    found.append(Use(path, node.lineno, alias.name, "private module imported"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not own_module(node.module or ""):
            module = node.module or ""
            if any(map(private, module.split("."))):
                found.append(Use(path, node.lineno, module, "private module imported"))
            found += [Use(path, node.lineno, f"{module}.{alias.name}", "private name imported")
                      for alias in node.names if private(alias.name)]
        elif isinstance(node, ast.Attribute) and private(node.attr) and id(node) not in inner:
            if ast.unparse(node) in DOCUMENTED:
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                inner.add(id(root))
                root = root.value
            if isinstance(root, ast.Name) and root.id in foreign and root.id not in ("self", "cls"):
                found.append(Use(path, node.lineno, ast.unparse(node), "private name of an imported module"))
            elif node.attr not in ours:
                found.append(Use(path, node.lineno, ast.unparse(node), "private attribute frontfilter does not define"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and private(node.args[1].value) and node.args[1].value not in ours):
            found.append(Use(path, node.lineno, ast.unparse(node), "private attribute by name"))
    inherited = subclass_uses(path, tree, foreign)      # the same name, said more precisely
    seen = {(use.line, use.name.rsplit(".", 1)[-1]) for use in inherited}
    return [use for use in found if (use.line, use.name.rsplit(".", 1)[-1]) not in seen] + inherited


def all_private_uses() -> list[Use]:
    modules = trees()
    ours = defined_names(modules)
    uses = [use for path, tree in modules.items() for use in private_uses(path, tree, ours)]
    return sorted(uses, key=lambda use: (use.path, use.line, use.name))


def test_frontfilter_uses_no_private_name_of_another_package() -> None:
    uses = all_private_uses()
    assert not uses, "private names of other packages:\n" + "\n".join(map(str, uses))


# ---- the check sees what it is meant to see ---------------------------------------------------

SAMPLE = '''
import enum, os, ssl, logging, asyncio.sslproto, _thread
import email._policybase
from email._header_value_parser import get_address
from prometheus_client import _x, Counter
from frontfilter.metrics import _private_but_ours
from . import _sibling

class Ours:
    def __init__(self):
        self._mine = 1

    def run(self, other, metric, reader):
        ssl._ssl._test_decode_cert     # (b), once
        logging._srcfile = None        # (b)
        asyncio.sslproto._SSLProtocolTransport   # (b)
        Counter._labelnames            # (b): a class imported from elsewhere
        metric._labelnames             # (c)
        getattr(reader, "_buffer")     # (c)
        self._base_class_state         # (c): set by a foreign base, never by us
        other._mine                    # ours: allowed
        self._mine, type(self).__name__, ssl.__version__, os._exit   # allowed

class Quiet(logging.Logger):
    def _log(self, *args):             # (d): a private method of a foreign base class
        super()._log(*args)            # (d)
        self._mine                     # ours

class Colour(enum.Enum):
    RED = "red"

    @classmethod
    def _missing_(cls, value):         # a documented enum hook: allowed
        return cls.RED
'''


def test_the_check_finds_each_kind_of_private_use(tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    tree = ast.parse(SAMPLE)
    ours = defined_names({path: tree})
    found = sorted((use.line, use.name) for use in private_uses(path, tree, ours))
    assert found == [
        (2, "_thread"),
        (3, "email._policybase"),
        (4, "email._header_value_parser"),
        (5, "prometheus_client._x"),
        (14, "ssl._ssl._test_decode_cert"),
        (15, "logging._srcfile"),
        (16, "asyncio.sslproto._SSLProtocolTransport"),
        (17, "Counter._labelnames"),
        (18, "metric._labelnames"),
        (19, "getattr(reader, '_buffer')"),
        (20, "self._base_class_state"),
        (25, "Quiet._log"),
        (26, "Quiet._log"),
    ]


# ---- versions ---------------------------------------------------------------------------------

def requirements() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"].get("optional-dependencies", {}).values()
    return [*pyproject["project"]["dependencies"], *(r for group in extras for r in group),
            *pyproject.get("build-system", {}).get("requires", [])]


def test_pyproject_pins_no_exact_version() -> None:
    pinned = [r for r in requirements() if re.search(r"===?", r)]
    assert not pinned, f"exact pins in pyproject.toml (a lower bound is enough): {pinned}"
