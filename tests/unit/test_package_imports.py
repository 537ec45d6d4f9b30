"""Each subpackage of lazyfs imports only what its docstring says it may.

The docstring of ``lazyfs/NAME/__init__.py`` ends with one line

    Imports: lazyfs.index, lazyfs.fs.mount, lazyfs.progress, providers.

(or ``Imports: none.``), and every import of every module in the package,
at any depth, is checked against it.  An entry that is a package allows it
and everything in it; an entry that is a module (``lazyfs.fs.mount``,
``lazyfs.progress``) allows that module only.  Imports of the package's own
modules, of the standard library and of third-party packages are always
allowed.  Imports are read as ``tests.support.import_graph`` reads them:
every import counts, also under ``if TYPE_CHECKING:`` and inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.import_graph import (
    FIRST_PARTY,
    Import,
    all_imports,
    known_modules,
    known_packages,
    top,
)

ROOT = Path(__file__).resolve().parents[2]
CHECKED = "lazyfs"  # the package whose subpackages declare their imports

_IMPORTS_LINE = re.compile(r"Imports: (?P<names>[^\n]*)\.")


def declared_imports(init: Path) -> tuple[str, ...] | None:
    """The names on the last line of ``init``'s docstring, ``Imports: a, b.``; None without one."""
    docstring = ast.get_docstring(ast.parse(init.read_bytes()), clean=True) or ""
    lines = docstring.strip().splitlines()
    found = _IMPORTS_LINE.fullmatch(lines[-1].strip()) if lines else None
    if found is None:
        return None
    names = found["names"].strip()
    if names == "none":
        return ()
    return tuple(name.strip() for name in names.split(","))


def allows(declared: tuple[str, ...], packages: set[str], target: str) -> bool:
    """Whether an import of ``target`` is one of ``declared`` or inside a declared package."""
    return any(
        target == name or (name in packages and target.startswith(name + ".")) for name in declared
    )


def subpackages(root: Path) -> list[str]:
    """The direct subpackages of CHECKED under ``root``, by dotted name."""
    return sorted(
        f"{CHECKED}.{init.parent.name}" for init in (root / CHECKED).glob("*/__init__.py")
    )


def package_violations(root: Path) -> list[str]:
    """Every import in a subpackage of CHECKED that its docstring does not declare."""
    imports, problems = all_imports(root)
    modules, packages = known_modules(root), known_packages(root)
    for package in subpackages(root):
        init = f"{package.replace('.', '/')}/__init__.py"
        declared = declared_imports(root / init)
        if declared is None:
            problems.append(f"{init}:1: the docstring ends with no 'Imports: a, b.' line")
            continue
        problems.extend(
            f"{init}:1: Imports names {name}, which is no module or package"
            for name in declared
            if name not in modules
        )
        problems.extend(
            _refused(imp, package, declared)
            for imp in imports
            if _inside(imp.module, package)
            and top(imp.target) in FIRST_PARTY
            and not _inside(imp.target, package)
            and not allows(declared, packages, imp.target)
        )
    return problems


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _refused(imp: Import, package: str, declared: tuple[str, ...]) -> str:
    may = f"may import only {', '.join(declared)}" if declared else "declares no import of ours"
    return f"{imp.where}: {imp.module} imports {imp.target}; {package} {may} (its Imports line)"


def test_each_subpackage_imports_only_what_its_docstring_declares() -> None:
    assert subpackages(ROOT), "no subpackage of lazyfs found: the check would check nothing"
    problems = package_violations(ROOT)
    assert not problems, "imports a package does not declare:\n" + "\n".join(problems)


# The checker itself, on small made-up trees.


def init(doc: str) -> str:
    return f'"""{doc}"""\n'


BASE = {
    "lazyfs/__init__.py": "",
    "lazyfs/progress.py": "",
    "lazyfs/index/__init__.py": init("Indexes.\n\nImports: providers."),
    "lazyfs/index/model.py": "import json\nimport zstandard\nfrom providers.digest import Digest\n",
    "lazyfs/fs/__init__.py": init("FUSE.\n\nImports: lazyfs.index, lazyfs.progress, providers."),
    "lazyfs/fs/mount.py": "from lazyfs.index import model\nfrom . import ops\n",
    "lazyfs/fs/ops.py": "import lazyfs.fs.mount\nfrom lazyfs.progress import Progress\n",
    "lazyfs/fs/deep/__init__.py": "",
    "lazyfs/fs/deep/x.py": "from ..mount import mount\nfrom lazyfs.index.model import Kind\n",
    "providers/__init__.py": "",
    "providers/digest.py": "",
    "backends/__init__.py": "",
    "backends/copy.py": "",
}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """BASE with ``files`` added, or put in place of BASE's."""
    for name, text in {**BASE, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # BASE itself: own modules (absolute, relative, deeper down), declared
        # packages, a declared top-level module, stdlib and third party.
        ({}, []),
        (
            {"lazyfs/index/build.py": "import lazyfs.fs.mount\n"},
            ["lazyfs/index/build.py:1: lazyfs.index.build imports lazyfs.fs.mount; lazyfs.index"],
        ),
        # Deep inside the package, under TYPE_CHECKING or in a function: all count.
        (
            {
                "lazyfs/fs/deep/y.py": (
                    "import typing\nif typing.TYPE_CHECKING:\n    import backends\n"
                ),
            },
            ["lazyfs/fs/deep/y.py:3: lazyfs.fs.deep.y imports backends"],
        ),
        (
            {"lazyfs/index/z.py": "def f():\n    from lazyfs import progress\n"},
            ["lazyfs/index/z.py:2: lazyfs.index.z imports lazyfs.progress"],
        ),
        ({"lazyfs/index/z.py": "from ...backends import copy\n"}, ["lazyfs/index/z.py:1:"]),
        ({"lazyfs/index/z.py": "from tests.support import images\n"}, ["lazyfs/index/z.py:1:"]),
        # A module entry allows that module only, not its package nor its siblings.
        (
            {
                "lazyfs/store/__init__.py": init("Store.\n\nImports: lazyfs.fs.mount."),
                "lazyfs/store/a.py": "import lazyfs.fs.mount\nfrom lazyfs.fs import mount\n",
            },
            [],
        ),
        (
            {
                "lazyfs/store/__init__.py": init("Store.\n\nImports: lazyfs.fs.mount."),
                "lazyfs/store/a.py": "import lazyfs.fs\nfrom lazyfs.fs import ops\n",
            },
            ["lazyfs/store/a.py:1: lazyfs.store.a imports lazyfs.fs;", "lazyfs/store/a.py:2:"],
        ),
        # A package entry allows everything in it; a prefix of its name is not it.
        (
            {
                "lazyfs/indexes/__init__.py": init("X.\n\nImports: lazyfs.index."),
                "lazyfs/indexes/a.py": "import lazyfs.index.model\n",
                "lazyfs/indexes/b.py": "import lazyfs.indexer\n",
                "lazyfs/indexer.py": "",
            },
            ["lazyfs/indexes/b.py:1: lazyfs.indexes.b imports lazyfs.indexer"],
        ),
        # Importing the package's own __init__ or the parent lazyfs.
        ({"lazyfs/fs/z.py": "import lazyfs.fs\n"}, []),
        ({"lazyfs/fs/z.py": "import lazyfs\n"}, ["lazyfs/fs/z.py:1: lazyfs.fs.z imports lazyfs;"]),
        # "none" declares nothing of ours.
        (
            {
                "lazyfs/store/__init__.py": init("Store.\n\nImports: none."),
                "lazyfs/store/a.py": "import os\nimport providers.digest\n",
            },
            ["lazyfs/store/a.py:2: lazyfs.store.a imports providers.digest; lazyfs.store declares"],
        ),
        # The declaration itself: missing, not last, naming nothing real.
        (
            {"lazyfs/store/__init__.py": init("Store, with no line.")},
            ["lazyfs/store/__init__.py:1: the docstring ends with no 'Imports: a, b.' line"],
        ),
        ({"lazyfs/store/__init__.py": ""}, ["lazyfs/store/__init__.py:1: the docstring ends"]),
        (
            {"lazyfs/store/__init__.py": init("Store.\n\nImports: providers.\n\nMore text.")},
            ["lazyfs/store/__init__.py:1: the docstring ends"],
        ),
        (
            {"lazyfs/store/__init__.py": init("Store.\n\nImports: providers, lazyfs.progres.")},
            ["lazyfs/store/__init__.py:1: Imports names lazyfs.progres, which is no module"],
        ),
        # Modules at the top of lazyfs belong to no subpackage: not checked here.
        ({"lazyfs/cli.py": "import backends.copy\nimport lazyfs.fs.ops\n"}, []),
    ],
)
def test_checker_finds_undeclared_imports(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    problems = package_violations(make_tree(tmp_path, files))
    assert len(problems) == len(expected), problems
    for problem, prefix in zip(sorted(problems), sorted(expected), strict=True):
        assert problem.startswith(prefix), problems


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("X.\n\nImports: lazyfs.index, providers.", ("lazyfs.index", "providers")),
        ("X.\n\nImports: providers.\n", ("providers",)),
        ("X.\n\n    Imports: a,b ,  c.", ("a", "b", "c")),
        ("X.\n\nImports: none.", ()),
        ("Imports: providers.", ("providers",)),
        ("X.\n\nImports: providers", None),
        ("X.\n\nimports: providers.", None),
        ("X.\n\nImports: providers.\nmore", None),
    ],
)
def test_the_imports_line_is_read_from_the_end_of_the_docstring(
    tmp_path: Path, doc: str, expected: tuple[str, ...] | None
) -> None:
    path = tmp_path / "__init__.py"
    path.write_text(init(doc))
    assert declared_imports(path) == expected
