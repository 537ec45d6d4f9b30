"""The imports of the project's packages, read from their sources, and the cycles among them.

``all_imports`` parses every module of ``providers``, ``lazyfs`` and
``backends`` (nothing is imported) and returns one ``Import`` per import
statement, with relative imports resolved and ``from pkg import name``
counted as importing ``pkg.name`` when that is a module.  Every import
counts, also under ``if TYPE_CHECKING:`` and inside functions, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal
name.

``import_cycles`` finds the chains of imports that lead from a module back
to itself, minus the edges a caller names as known cycles (an allow-list
that only shrinks: an entry that no longer closes a cycle is reported too).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHECKED_PACKAGES = ("providers", "lazyfs", "backends")
FIRST_PARTY = frozenset({"providers", "lazyfs", "backends", "tests"})

# An import from one module of ours to another: (importer, imported).
Edge = tuple[str, str]


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


def top(name: str) -> str:
    return name.split(".", 1)[0]


def python_files(root: Path) -> Iterator[Path]:
    for package in CHECKED_PACKAGES:
        if (root / package).is_dir():
            yield from sorted((root / package).rglob("*.py"))


def known_modules(root: Path) -> set[str]:
    """The modules and packages under ``root``, by dotted name."""
    return {module_name(path.relative_to(root)) for path in python_files(root)}


def known_packages(root: Path) -> set[str]:
    """The packages (directories with an ``__init__.py``) under ``root``, by dotted name."""
    return {
        module_name(path.relative_to(root))
        for path in python_files(root)
        if path.name == "__init__.py"
    }


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


def import_edges(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """importer -> imported -> the first import that makes the edge, among our modules."""
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
    return edges


def import_cycles(imports: list[Import], known: frozenset[Edge] = frozenset()) -> list[str]:
    """Every import cycle among modules, except those broken by leaving out ``known`` edges.

    Each cycle is reported once, as one of its import chains with file:line
    of each step: "across packages" when it runs through two top-level
    packages, else "inside" its package.  A ``known`` edge that is not an
    import, or whose removal breaks no cycle, is reported as stale.
    """
    edges = import_edges(imports)
    problems = [
        f"known import cycle {a} -> {b} is gone: take it off the allow-list"
        for a, b in sorted(known)
        if b not in edges.get(a, {}) or not _reaches(edges, b, a)
    ]
    kept = {
        module: {target: imp for target, imp in targets.items() if (module, target) not in known}
        for module, targets in edges.items()
    }
    for component in _strongly_connected({imp.module for imp in imports}, kept):
        chain = _cycle_in(component, kept)
        steps = " -> ".join(f"{imp.module} ({imp.where})" for imp in chain)
        packages = sorted({top(name) for name in component})
        where = "across packages" if len(packages) > 1 else f"inside {packages[0]}"
        problems.append(f"import cycle {where}: {steps} -> {chain[0].module}")
    return problems


def _reaches(edges: dict[str, dict[str, Import]], start: str, goal: str) -> bool:
    seen, queue = {start}, deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            return True
        for child in edges.get(node, {}):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return False


def _strongly_connected(nodes: set[str], edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """The strongly connected components of more than one module."""
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
