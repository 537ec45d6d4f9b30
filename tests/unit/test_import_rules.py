"""Pins the import rules between the top-level packages (DESIGN.md, section 1).

- ``providers`` imports the standard library and third-party packages only.
- ``backends`` imports ``providers`` and, from ``lazyfs``, only the modules in
  BACKENDS_MAY_IMPORT_FROM_LAZYFS (the public mount API), and importing the
  backends that need no FUSE loads no FUSE code.
- ``lazyfs`` imports ``backends`` only from the provisioner and the CLI.
- No import cycle, neither through two top-level packages nor inside one.
- Tests (and the benchmarks) import from ``tests`` only ``tests.support``.

The cycle rule is checked on modules, not packages: backends may import
``lazyfs.fs.mount`` while ``lazyfs.provision.provisioner`` imports backends,
so the package graph has a cycle by design; what must not exist is a chain
of imports that leads from a module back to itself.

Every import counts, also under ``if TYPE_CHECKING:`` and inside functions, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name
(``tests.support.import_graph`` reads them).  What each subpackage of lazyfs
may import is pinned by ``test_package_imports``.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.import_graph import (
    CHECKED_PACKAGES,
    FIRST_PARTY,
    Edge,
    Import,
    all_imports,
    import_cycles,
    imports_of,
    module_name,
    top,
)

ROOT = Path(__file__).resolve().parents[2]

# Import cycles known today, as the one import of each that is left out of
# the graph; each entry is (importer, imported).  Empty is the goal: an entry
# that no longer closes a cycle fails the test until it is taken off.
KNOWN_IMPORT_CYCLES: frozenset[Edge] = frozenset()

# Modules of lazyfs that backends may import: the public mount API.
BACKENDS_MAY_IMPORT_FROM_LAZYFS: frozenset[str] = frozenset({"lazyfs.fs.mount"})

# Files of lazyfs (relative to the repository root, glob patterns) that may
# import backends.
LAZYFS_MAY_IMPORT_BACKENDS = ("lazyfs/provision/*.py", "lazyfs/cli.py")


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


def check(
    root: Path,
    backends_may_import: frozenset[str] = BACKENDS_MAY_IMPORT_FROM_LAZYFS,
    known_cycles: frozenset[Edge] = frozenset(),
) -> list[str]:
    """Every broken rule under ``root``, one line each, starting with file:line
    (the cycles, which run through many files, start "import cycle")."""
    imports, problems = all_imports(root)
    violations = rule_violations(imports, backends_may_import)
    return problems + violations + import_cycles(imports, known_cycles)


def test_repository_follows_the_import_rules() -> None:
    problems = check(ROOT, known_cycles=KNOWN_IMPORT_CYCLES)
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


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"lazyfs/a.py": "from lazyfs import b\n", "lazyfs/b.py": "import lazyfs.a\n"},
            "import cycle inside lazyfs: lazyfs.a (lazyfs/a.py:1) -> lazyfs.b (lazyfs/b.py:1)"
            " -> lazyfs.a",
        ),
        (
            {
                "providers/a.py": "from . import a\nfrom .b import x\n",
                "providers/b.py": "import providers.a\n",
            },
            "import cycle inside providers: providers.a (providers/a.py:2) -> providers.b",
        ),
        (
            {
                "lazyfs/x/a.py": "def f():\n    from lazyfs.x import b\n",
                "lazyfs/x/b.py": "from lazyfs.y import c\n",
                "lazyfs/y/c.py": "import typing\nif typing.TYPE_CHECKING:\n    import lazyfs.x.a\n",
            },
            "import cycle inside lazyfs: lazyfs.x.a (lazyfs/x/a.py:2)"
            " -> lazyfs.x.b (lazyfs/x/b.py:1) -> lazyfs.y.c (lazyfs/y/c.py:3) -> lazyfs.x.a",
        ),
    ],
)
def test_checker_finds_cycles_inside_one_package(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    problems = check(write_tree(tmp_path, files))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_checker_reports_each_cycle_once(tmp_path: Path) -> None:
    files = {
        "lazyfs/a.py": "import lazyfs.b\nimport lazyfs.c\n",
        "lazyfs/b.py": "import lazyfs.c\n",
        "lazyfs/c.py": "import lazyfs.a\n",
        "backends/d.py": "import backends.e\n",
        "backends/e.py": "import backends.d\n",
    }
    problems = check(write_tree(tmp_path, files))
    assert sorted(p.split(":")[0] for p in problems) == [
        "import cycle inside backends",
        "import cycle inside lazyfs",
    ], problems


CYCLE = {"lazyfs/a.py": "import lazyfs.b\n", "lazyfs/b.py": "import lazyfs.a\n"}


@pytest.mark.parametrize(
    ("files", "known", "expected"),
    [
        # The known edge breaks the cycle: nothing to report.
        (CYCLE, {("lazyfs.b", "lazyfs.a")}, []),
        (CYCLE, {("lazyfs.a", "lazyfs.b")}, []),
        # A known edge that is no import is stale, and leaves the cycle standing.
        (
            CYCLE,
            {("lazyfs.c", "lazyfs.a")},
            [
                "known import cycle lazyfs.c -> lazyfs.a is gone",
                "import cycle inside lazyfs: lazyfs.a (lazyfs/a.py:1) -> lazyfs.b (lazyfs/b.py:1)",
            ],
        ),
        # The cycle was removed: the entry is stale.
        (
            {"lazyfs/a.py": "import lazyfs.b\n", "lazyfs/b.py": "import json\n"},
            {("lazyfs.a", "lazyfs.b")},
            ["known import cycle lazyfs.a -> lazyfs.b is gone"],
        ),
        # Known for a cycle of three, one of whose other imports is gone.
        (
            {"lazyfs/a.py": "import lazyfs.b\n", "lazyfs/b.py": "import lazyfs.c\n"},
            {("lazyfs.a", "lazyfs.b")},
            ["known import cycle lazyfs.a -> lazyfs.b is gone"],
        ),
        # Breaking one of two cycles through a module leaves the other.
        (
            {
                **CYCLE,
                "lazyfs/c.py": "import lazyfs.a\n",
                "lazyfs/a.py": "import lazyfs.b, lazyfs.c\n",
            },
            {("lazyfs.b", "lazyfs.a")},
            ["import cycle inside lazyfs: lazyfs.a (lazyfs/a.py:1) -> lazyfs.c"],
        ),
    ],
)
def test_known_cycles_are_left_out_while_they_exist(
    tmp_path: Path, files: dict[str, str], known: set[Edge], expected: list[str]
) -> None:
    problems = check(write_tree(tmp_path, files), known_cycles=frozenset(known))
    assert len(problems) == len(expected), problems
    for problem, prefix in zip(problems, expected, strict=True):
        assert problem.startswith(prefix), problems


def modules_loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing ``modules``."""
    code = f"import sys, {', '.join(modules)}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_backends_without_fuse_load_no_fuse_code() -> None:
    loaded = modules_loaded_by("backends.copy", "backends.bind", "backends.overlay")
    assert "backends.copy" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "pyfuse3"}, sorted(loaded)


def test_the_subprocess_check_sees_pyfuse3_when_it_is_loaded() -> None:
    # Else the test above would pass where pyfuse3 is missing or goes by
    # another name.
    assert "pyfuse3" in modules_loaded_by("pyfuse3")


# Tests share helpers through tests/support/ only: a test module or conftest
# that other files import cannot be moved, split or deleted on its own.

HELPER_IMPORTERS = ("tests", "scripts/benchlib")


def helper_import_problems(root: Path) -> list[str]:
    """Every import, in the tests or the benchmarks, of ``tests`` outside ``tests.support``."""
    files = [
        path
        for directory in HELPER_IMPORTERS
        if (root / directory).is_dir()
        for path in sorted((root / directory).rglob("*.py"))
    ]
    modules = {module_name(path.relative_to(root)) for path in files}
    return [
        f"{imp.where}: {imp.module} imports {imp.target}; "
        "what tests share lives in tests.support, and is imported from there"
        for path in files
        for imp in imports_of(root, path, modules)
        if top(imp.target) == "tests"
        and imp.target != "tests.support"
        and not imp.target.startswith("tests.support.")
    ]


def test_tests_import_shared_helpers_from_tests_support_only() -> None:
    problems = helper_import_problems(ROOT)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"tests/unit/test_a.py": "from tests.support.images import Entry\n"}, []),
        ({"tests/unit/test_a.py": "from tests.support import images, tree\n"}, []),
        ({"tests/support/a.py": "from . import b\n", "tests/support/b.py": ""}, []),
        ({"tests/unit/test_a.py": "import json, pytest, lazyfs.cli\n"}, []),
        (
            {"tests/unit/test_a.py": "from tests.unit.test_b import helper\n"},
            ["tests/unit/test_a.py:1: tests.unit.test_a imports tests.unit.test_b;"],
        ),
        (
            {"tests/e2e/test_a.py": "\nfrom tests.e2e.conftest import Lazyfs\n"},
            ["tests/e2e/test_a.py:2: tests.e2e.test_a imports tests.e2e.conftest;"],
        ),
        ({"tests/e2e/conftest.py": "from tests.conftest import x\n"}, ["tests/e2e/conftest.py:1:"]),
        ({"tests/unit/test_a.py": "from .test_b import helper\n"}, ["tests/unit/test_a.py:1:"]),
        ({"tests/unit/test_a.py": "from tests.registry import servers\n"}, ["tests/unit/"]),
        ({"tests/unit/test_a.py": "import tests\n"}, ["tests/unit/test_a.py:1:"]),
        ({"scripts/benchlib/a.py": "from tests.images import build\n"}, ["scripts/benchlib/"]),
        ({"scripts/other.py": "from tests.images import build\n"}, []),
    ],
)
def test_checker_finds_helpers_imported_from_outside_tests_support(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    write_tree(tmp_path, files)
    problems = helper_import_problems(tmp_path)
    assert len(problems) == len(expected), problems
    for problem, prefix in zip(problems, expected, strict=True):
        assert problem.startswith(prefix), problems
