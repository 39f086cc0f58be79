"""Dependencies flow one way (DESIGN.md §2): a package imports only from packages in strictly lower
layers, or from itself.

Every ``.py`` file of the library is parsed with ``ast`` (nothing is imported) and each dependency on
a ``diffalign`` module is mapped to its package and layer. A dependency is any of:

- ``import diffalign.x`` / ``from diffalign.x import y`` / ``from diffalign import x`` (``x`` a
  submodule), at module level or inside a function (a lazy import is still a dependency);
- relative imports, resolved against the module's package;
- ``importlib.import_module("...")`` / ``import_module`` / ``__import__`` /
  ``importlib.util.find_spec`` called with a constant string;
- a string literal that is exactly the dotted name of an existing diffalign module (a registry that
  imports a tuple of module names by name). Docstrings are not scanned.

A module in, or an import of, a ``diffalign`` subpackage missing from ``LAYERS`` fails too, so a new
package has to be placed. Importing the package root ``diffalign`` (its torchvision shim) is allowed
from anywhere.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS: dict[str, int] = {
    "diffalign.errors": 0,  # the user-error base every layer raises from
    "diffalign._compat": 0,
    "diffalign.options": 1,
    "diffalign.hub": 1,
    "diffalign.progress": 1,
    "diffalign.plugins": 1,
    "diffalign": 0,  # the package __init__ only
    "diffalign.objectives": 1,
    "diffalign.diffusion": 2,
    "diffalign.text": 2,
    "diffalign.tiny": 2,
    "diffalign.data": 3,
    "diffalign.methods": 4,
    "diffalign.rewards": 4,
    "diffalign.training": 5,
    "diffalign.pipelines": 5,
    "diffalign.benchmarks": 6,
    "diffalign.toy": 7,  # the embedded default drives everything below it, the benchmark evaluator too
    "diffalign.cli": 8,
    "diffalign.__main__": 8,
}

ROOT = "diffalign"

# Same-layer imports that are part of the layering itself: the package root installs the torchvision
# shim from ``_compat``, and ``python -m diffalign`` runs the CLI.
SAME_LAYER_ALLOWED = {("diffalign", "diffalign._compat"), ("diffalign", "diffalign.errors"), ("diffalign.__main__", "diffalign.cli")}

# Source folders, as installed (pyproject.toml [tool.setuptools] package-dir).
SOURCE_DIRS = {"diffalign": "diffalign", "diffalign.rewards": "rewards", "diffalign.pipelines": "pipelines", "diffalign.benchmarks": "benchmarks"}

_MODULE_NAME = re.compile(r"diffalign(\.[A-Za-z_][A-Za-z0-9_]*)+")
_IMPORT_CALLS = {"import_module", "__import__", "find_spec"}


def package_of(module: str) -> str | None:
    """The ``LAYERS`` key of a dotted module name: ``diffalign`` or ``diffalign.<first part>``;
    ``None`` for modules outside diffalign."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    return ROOT if len(parts) == 1 else f"{ROOT}.{parts[1]}"


def discover(repo: str = REPO) -> dict[str, tuple[str, bool]]:
    """``{dotted module name: (path relative to repo, is_package)}`` for every library source file."""
    modules = {}
    for prefix, folder in SOURCE_DIRS.items():
        top = os.path.join(repo, folder)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            relative_dir = os.path.relpath(dirpath, top)
            parts = [] if relative_dir == "." else relative_dir.split(os.sep)
            if prefix == ROOT and parts and f"{ROOT}.{parts[0]}" in SOURCE_DIRS:
                continue  # a mapped folder is scanned under its own prefix
            for filename in sorted(filenames):
                if not filename.endswith(".py"):
                    continue
                stem = filename[:-3]
                is_package = stem == "__init__"
                name = ".".join([prefix, *parts] + ([] if is_package else [stem]))
                modules[name] = (os.path.relpath(os.path.join(dirpath, filename), repo), is_package)
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base) - 1:
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def imports_of(source: str, module: str, is_package: bool, known_modules: set[str]) -> list[tuple[int, str, bool]]:
    """``(line, imported diffalign module, by_name)`` for each dependency of ``module`` found in ``source``.

    ``from diffalign import x`` counts as an import of ``diffalign.x`` when ``x`` is a known module or
    a ``LAYERS`` key, else as an import of the root. ``by_name`` marks a bare string literal (only
    reported when it names a known module)."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    found: list[tuple[int, str, bool]] = []

    def from_import(line: int, target: str | None, names: list[str]) -> None:
        if target is None:
            found.append((line, "<relative import above the top-level package>", False))
        elif target == ROOT:
            for name in names:
                child = f"{ROOT}.{name}"
                is_module = child in known_modules or child in LAYERS or any(m.startswith(child + ".") for m in known_modules)
                found.append((line, child if is_module else ROOT, False))
        else:
            found.append((line, target, False))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name, False))
        elif isinstance(node, ast.ImportFrom):
            target = node.module if node.level == 0 else _resolve_relative(module, is_package, node.level, node.module)
            from_import(node.lineno, target, [alias.name for alias in node.names])
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called not in _IMPORT_CALLS or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            name = first.value
            if name.startswith("."):
                anchor = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "package"), None)
                if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
                    package = anchor.value
                elif isinstance(anchor, ast.Name) and anchor.id in ("__package__", "__name__"):
                    package = module if (is_package or anchor.id == "__name__") else module.rpartition(".")[0]
                else:
                    continue
                level = len(name) - len(name.lstrip("."))
                name = _resolve_relative(package, True, level, name[level:] or None) or "<relative import above the top-level package>"
            found.append((node.lineno, name, False))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _MODULE_NAME.fullmatch(node.value) and node.value in known_modules:
                found.append((node.lineno, node.value, True))
    # An import_module("x") call also matched its string argument; keep one entry per (line, target).
    unique = {}
    for line, target, by_name in found:
        unique.setdefault((line, target), by_name)
    return sorted((line, target, by_name) for (line, target), by_name in unique.items())


def _describe(package: str | None) -> str:
    return f"{package} (layer {LAYERS[package]})" if package in LAYERS else f"{package} (unknown package: add it to LAYERS)"


def check_source(source: str, module: str, is_package: bool, filename: str, known_modules: set[str]) -> list[str]:
    """Violations of ``module`` (given by its ``source``) as ``file:line imports X (layer a) from Y (layer b)``."""
    own = package_of(module)
    if own not in LAYERS:
        return [f"{filename}:1 module {module} is in {_describe(own)}"]
    own_layer = LAYERS[own]
    violations = []
    for line, target, by_name in imports_of(source, module, is_package, known_modules):
        if target.startswith("<"):
            violations.append(f"{filename}:{line} imports {target} from {_describe(own)}")
            continue
        imported = package_of(target)
        if imported is None or imported == own or imported == ROOT or (own, imported) in SAME_LAYER_ALLOWED:
            continue
        if imported not in LAYERS:
            if not by_name:
                violations.append(f"{filename}:{line} imports {target} (unknown package {imported}: add it to LAYERS) from {_describe(own)}")
            continue
        if LAYERS[imported] >= own_layer:
            how = " by name" if by_name else ""
            violations.append(f"{filename}:{line} imports{how} {target} (layer {LAYERS[imported]}) from {_describe(own)}")
    return violations


def check_repo(repo: str = REPO) -> list[str]:
    modules = discover(repo)
    known = set(modules)
    violations = []
    for module, (path, is_package) in sorted(modules.items(), key=lambda item: item[1][0]):
        with open(os.path.join(repo, path), encoding="utf-8") as handle:
            violations += check_source(handle.read(), module, is_package, path, known)
    return violations


# -------------------------------------------------------------------------------------------- tests


def test_layers_table_matches_the_source_tree():
    known = set(discover())
    assert len(known) > 50, f"found only {len(known)} modules; is SOURCE_DIRS right?"
    missing = [key for key in LAYERS if key not in known and not any(m.startswith(key + ".") for m in known)]
    assert not missing, f"LAYERS names packages with no source: {missing}"


def test_dependencies_flow_one_way():
    violations = check_repo()
    if violations:
        pytest.fail(f"{len(violations)} upward or same-layer imports (DESIGN.md §2):\n" + "\n".join(violations), pytrace=False)


SYNTHETIC = '''"""A docstring naming diffalign.training.loop is not an import."""
import torch
import diffalign
from diffalign import errors
from diffalign.errors import DiffalignError
from . import pairwise

from diffalign.training import loop


def lazy():
    import diffalign.toy.judge
    from ..methods import base
    from diffalign import cli
    from diffalign import unplaced
    import importlib
    importlib.import_module("diffalign.benchmarks.inversion_cost")
    importlib.import_module(".data", package="diffalign")
    return ("diffalign.rewards.base", "diffalign.scorers")
'''


def test_checker_reports_upward_imports():
    known = {"diffalign.objectives.pairwise", "diffalign.rewards.base", "diffalign.errors", "diffalign.cli", "diffalign.unplaced"}
    file = "diffalign/objectives/fake.py"
    violations = check_source(SYNTHETIC, "diffalign.objectives.fake", False, file, known)
    expected = [
        f"{file}:8 imports diffalign.training (layer 5) from diffalign.objectives (layer 1)",
        f"{file}:12 imports diffalign.toy.judge (layer 7) from diffalign.objectives (layer 1)",
        f"{file}:13 imports diffalign.methods (layer 4) from diffalign.objectives (layer 1)",
        f"{file}:14 imports diffalign.cli (layer 8) from diffalign.objectives (layer 1)",
        f"{file}:15 imports diffalign.unplaced (unknown package diffalign.unplaced: add it to LAYERS) from diffalign.objectives (layer 1)",
        f"{file}:17 imports diffalign.benchmarks.inversion_cost (layer 6) from diffalign.objectives (layer 1)",
        f"{file}:18 imports diffalign.data (layer 3) from diffalign.objectives (layer 1)",
        f"{file}:19 imports by name diffalign.rewards.base (layer 4) from diffalign.objectives (layer 1)",
    ]
    assert violations == expected


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("diffalign.pipelines.generate", "from diffalign.training import x\n", "imports diffalign.training (layer 5) from diffalign.pipelines (layer 5)"),
        ("diffalign.diffusion.model", "from ..text import model\n", "imports diffalign.text (layer 2) from diffalign.diffusion (layer 2)"),
        ("diffalign.newthing.x", "import torch\n", "module diffalign.newthing.x is in diffalign.newthing (unknown package: add it to LAYERS)"),
    ],
)
def test_checker_reports_same_layer_and_unplaced(module, source, expected):
    violations = check_source(source, module, False, "f.py", set())
    assert len(violations) == 1 and violations[0].endswith(expected), violations


def test_checker_allows_downward_and_own_package_imports():
    source = "import diffalign\nfrom diffalign.objectives import dpo\nfrom . import base\nfrom diffalign.rewards.pairs import x\n"
    assert check_source(source, "diffalign.rewards.cli", False, "rewards/cli.py", set()) == []
    assert check_source("from diffalign.cli import main\n", "diffalign.__main__", False, "diffalign/__main__.py", set()) == []
