"""Pins the import rules between the top-level packages (DESIGN.md, section 1).

- ``providers`` imports the standard library and third-party packages only.
- ``backends`` imports ``providers`` and, from ``lazyfs``, only the modules in
  BACKENDS_MAY_IMPORT_FROM_LAZYFS (the public mount API, once it exists).
- ``lazyfs`` imports ``backends`` only from the provisioner and the CLI.
- No import cycle runs through two top-level packages.

The cycle rule is checked on modules, not packages: once backends may import
``lazyfs.fs.mount`` while ``lazyfs.provision.provisioner`` imports backends, the package
graph has a cycle by design; what must not exist is a chain of imports that
leads from a module back to itself through another package.

Every import counts, also under ``if TYPE_CHECKING:`` and inside functions, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import fnmatch
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED_PACKAGES = ("providers", "lazyfs", "backends")
FIRST_PARTY = frozenset({"providers", "lazyfs", "backends", "tests"})

# Modules of lazyfs that backends may import: the public mount API.
BACKENDS_MAY_IMPORT_FROM_LAZYFS: frozenset[str] = frozenset({"lazyfs.fs.mount"})

# Files of lazyfs (relative to the repository root, glob patterns) that may
# import backends.
LAZYFS_MAY_IMPORT_BACKENDS = ("lazyfs/provision/*.py", "lazyfs/cli.py")


@dataclass(frozen=True)
class Import:
    path: str  # relative to the root, e.g. "lazyfs/cli.py"
    line: int
    module: str  # the importing module, e.g. "lazyfs.cli"
    target: str  # the imported module, e.g. "backends.copy"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(root: Path) -> Iterator[Path]:
    for package in CHECKED_PACKAGES:
        if (root / package).is_dir():
            yield from sorted((root / package).rglob("*.py"))


def known_modules(root: Path) -> set[str]:
    return {module_name(path.relative_to(root)) for path in python_files(root)}


def imports_of(root: Path, path: Path, modules: set[str]) -> Iterator[Import]:
    """Every import in ``path``, with relative imports resolved.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a
    module, else ``pkg``. Raises SyntaxError for a file that does not parse.
    """
    relative = path.relative_to(root)
    module = module_name(relative)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_bytes(), filename=str(relative))

    def make(line: int, target: str) -> Import:
        return Import(relative.as_posix(), line, module, target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield make(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # The package a relative import starts from: the module's own
                # package, then one up per extra dot.
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: max(len(base) - (node.level - 1), 0)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield make(node.lineno, candidate if candidate in modules else source)
        elif (
            isinstance(node, ast.Call)
            and _is_dynamic_import(node.func)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield make(node.lineno, node.args[0].value)


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def top(name: str) -> str:
    return name.split(".", 1)[0]


def all_imports(root: Path) -> tuple[list[Import], list[str]]:
    """Every import under the checked packages, and the files that do not parse."""
    modules = known_modules(root)
    found: list[Import] = []
    unparsable: list[str] = []
    for path in python_files(root):
        try:
            found.extend(imports_of(root, path, modules))
        except SyntaxError as error:
            unparsable.append(
                f"{path.relative_to(root)}:{error.lineno}: does not parse: {error.msg}"
            )
    return found, unparsable


def rule_violations(imports: list[Import], backends_may_import: frozenset[str]) -> list[str]:
    problems = []
    for imp in imports:
        source, target = top(imp.module), top(imp.target)
        if target not in FIRST_PARTY or target == source:
            continue
        if source == "providers":
            problems.append(
                f"{imp.where}: providers imports {imp.target}; providers may import only "
                "the standard library and third-party packages"
            )
        elif source == "backends":
            if target == "lazyfs":
                allowed = any(
                    imp.target == name or imp.target.startswith(name + ".")
                    for name in backends_may_import
                )
                if not allowed:
                    names = ", ".join(sorted(backends_may_import)) or "none yet"
                    problems.append(
                        f"{imp.where}: backends imports {imp.target}; from lazyfs, backends "
                        f"may import only the public mount API ({names})"
                    )
            elif target != "providers":
                problems.append(f"{imp.where}: backends imports {imp.target}")
        elif source == "lazyfs":
            if target == "backends":
                if not any(fnmatch.fnmatch(imp.path, p) for p in LAZYFS_MAY_IMPORT_BACKENDS):
                    problems.append(
                        f"{imp.where}: {imp.module} imports {imp.target}; in lazyfs only "
                        f"{', '.join(LAZYFS_MAY_IMPORT_BACKENDS)} may import backends"
                    )
            elif target != "providers":
                problems.append(f"{imp.where}: lazyfs imports {imp.target}")
    return problems


def cross_package_cycles(imports: list[Import]) -> list[str]:
    """Import cycles among modules that span more than one top-level package.

    Each is reported once, as one of its import chains with file:line of each
    step.
    """
    modules = {imp.module for imp in imports}
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        # An import of "pkg.mod" also runs "pkg/__init__.py"; the edge goes to
        # the deepest module we have the source of.
        target = imp.target
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != imp.module:
            edges.setdefault(imp.module, {}).setdefault(target, imp)

    problems = []
    for component in _strongly_connected(modules, edges):
        if len({top(name) for name in component}) < 2:
            continue
        chain = _cycle_in(component, edges)
        steps = " -> ".join(f"{imp.module} ({imp.where})" for imp in chain)
        problems.append(f"import cycle across packages: {steps} -> {chain[0].module}")
    return problems


def _strongly_connected(nodes: set[str], edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    # Tarjan's algorithm, iterative so deep import chains cannot hit the
    # recursion limit.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def _cycle_in(component: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """A shortest cycle through the first module of a strongly connected ``component``."""
    start = min(component)
    reached_by: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child, imp in sorted(edges.get(node, {}).items()):
            if child == start:
                chain = [imp]
                while chain[-1].module != start:
                    chain.append(reached_by[chain[-1].module])
                return chain[::-1]
            if child in component and child not in reached_by:
                reached_by[child] = imp
                queue.append(child)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def check(
    root: Path, backends_may_import: frozenset[str] = BACKENDS_MAY_IMPORT_FROM_LAZYFS
) -> list[str]:
    """Every broken rule under ``root``, one line each, starting with file:line."""
    imports, problems = all_imports(root)
    return problems + rule_violations(imports, backends_may_import) + cross_package_cycles(imports)


def test_repository_follows_the_import_rules() -> None:
    problems = check(ROOT)
    assert not problems, "import rules broken (DESIGN.md, section 1):\n" + "\n".join(problems)


# The checker itself, on small made-up trees, so a passing repository test
# means the rules were checked rather than that nothing was found.


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in CHECKED_PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"providers/a.py": "import lazyfs.store.disk\n"}, ["providers/a.py:1: providers imports"]),
        ({"providers/a.py": "\n\nfrom backends import copy\n"}, ["providers/a.py:3:"]),
        ({"providers/a.py": "from tests import images\n"}, ["providers/a.py:1:"]),
        ({"providers/a.py": "import json, requests, providers.digest\n"}, []),
        ({"providers/x/a.py": "from ...lazyfs import store\n"}, ["providers/x/a.py:1:"]),
        ({"providers/a.py": "from . import b\nfrom .b import c\n"}, []),
        (
            {"providers/a.py": "import importlib\n\nimportlib.import_module('lazyfs')\n"},
            ["providers/a.py:3:"],
        ),
        (
            {"providers/a.py": "import typing\n\nif typing.TYPE_CHECKING:\n    import lazyfs\n"},
            ["providers/a.py:4:"],
        ),
        (
            {"providers/a.py": "def f():\n    import lazyfs.cli\n"},
            ["providers/a.py:2:"],
        ),
        ({"backends/a.py": "from providers.digest import Digest\n"}, []),
        (
            {"backends/a.py": "from lazyfs.store.disk import Store\n"},
            ["backends/a.py:1: backends imports lazyfs.store.disk"],
        ),
        ({"backends/a.py": "import lazyfs\n"}, ["backends/a.py:1:"]),
        ({"backends/a.py": "from ..lazyfs import store\n"}, ["backends/a.py:1:"]),
        (
            {"lazyfs/store/disk.py": "from backends.copy import CopyBackend\n"},
            ["lazyfs/store/disk.py:1: lazyfs.store.disk imports"],
        ),
        ({"lazyfs/provision/provisioner.py": "from backends.copy import CopyBackend\n"}, []),
        ({"lazyfs/provision/gc.py": "import backends.copy\n"}, []),
        ({"lazyfs/provisioner_gc.py": "import backends.copy\n"}, ["lazyfs/provisioner_gc.py:1:"]),
        ({"lazyfs/cli.py": "from backends import names\n"}, []),
        ({"lazyfs/x/cli.py": "from backends import names\n"}, ["lazyfs/x/cli.py:1:"]),
        (
            {"lazyfs/a.py": "from tests.images import build\n"},
            ["lazyfs/a.py:1: lazyfs imports tests"],
        ),
        ({"lazyfs/a.py": "def f(:\n"}, ["lazyfs/a.py:1: does not parse"]),
    ],
)
def test_checker_finds_violations(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    problems = check(write_tree(tmp_path, files))
    assert len(problems) == len(expected), problems
    for problem, prefix in zip(problems, expected, strict=True):
        assert problem.startswith(prefix), problems


def test_checker_finds_cross_package_cycles(tmp_path: Path) -> None:
    # Allowed edge by edge (backends -> lazyfs.fs.mount is allow-listed, the
    # provisioner may import backends), yet a cycle: the rules alone miss it.
    root = write_tree(
        tmp_path,
        {
            "lazyfs/fs/mount.py": "import lazyfs.provision.provisioner\n",
            "lazyfs/provision/provisioner.py": "from backends import fuse\n",
            "backends/fuse.py": "from lazyfs.fs.mount import mount\n",
        },
    )
    problems = check(root, backends_may_import=frozenset({"lazyfs.fs.mount"}))
    assert len(problems) == 1, problems
    assert problems[0].startswith("import cycle across packages: ")
    for step in ("backends/fuse.py:1", "lazyfs/fs/mount.py:1", "lazyfs/provision/provisioner.py:1"):
        assert step in problems[0]


def test_checker_allows_cycles_inside_one_package(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path, {"lazyfs/a.py": "from lazyfs import b\n", "lazyfs/b.py": "import lazyfs.a\n"}
    )
    assert check(root) == []
