"""No module of the product is over MAX_LINES lines (DESIGN.md, section 7).

Counts every ``.py`` file under ``lazyfs/``, ``providers/`` and ``backends/``
but the generated protobuf code.  The modules over the limit today are named
in OVER_LIMIT, an allow-list that only shrinks: a module on it that fits
again fails the test until it is taken off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lazyfs", "providers", "backends")
MAX_LINES = 400
GENERATED = frozenset({"providers/image_pb2.py"})  # scripts/gen-proto writes it

# Modules over the limit today, each to be split (relative to the root).
OVER_LIMIT: frozenset[str] = frozenset(
    {
        "lazyfs/cli.py",
    }
)


def line_count(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def size_problems(
    root: Path, over_limit: frozenset[str] = frozenset(), max_lines: int = MAX_LINES
) -> list[str]:
    """Every module over ``max_lines`` not in ``over_limit``, and every entry of it that fits."""
    sizes = {
        path.relative_to(root).as_posix(): line_count(path)
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }
    problems = [
        f"{name}: {lines} lines, over {max_lines}: split it"
        for name, lines in sizes.items()
        if lines > max_lines and name not in over_limit | GENERATED
    ]
    problems.extend(
        f"{name}: {sizes[name]} lines now: take it off OVER_LIMIT"
        if name in sizes
        else f"{name}: gone: take it off OVER_LIMIT"
        for name in sorted(over_limit)
        if sizes.get(name, 0) <= max_lines
    )
    return problems


def test_no_module_is_over_the_limit() -> None:
    problems = size_problems(ROOT, OVER_LIMIT)
    heading = f"modules over {MAX_LINES} lines (DESIGN.md, section 7):"
    assert not problems, "\n".join([heading, *problems])


def lines(count: int) -> str:
    return "x = 1\n" * count


@pytest.mark.parametrize(
    ("files", "over_limit", "expected"),
    [
        ({"lazyfs/a.py": lines(3)}, set(), []),
        ({"lazyfs/a.py": lines(4)}, set(), ["lazyfs/a.py: 4 lines, over 3: split it"]),
        # Every package, at any depth; only Python files count.
        ({"providers/x/y/a.py": lines(4)}, set(), ["providers/x/y/a.py: 4 lines"]),
        ({"backends/a.py": lines(4)}, set(), ["backends/a.py: 4 lines"]),
        ({"backends/a.pyi": lines(4), "tests/a.py": lines(9), "scripts/a.py": lines(9)}, set(), []),
        # A last line without a newline counts too.
        ({"lazyfs/a.py": lines(3) + "y = 2"}, set(), ["lazyfs/a.py: 4 lines"]),
        ({"providers/image_pb2.py": lines(9)}, set(), []),
        ({"lazyfs/a.py": lines(4)}, {"lazyfs/a.py"}, []),
        (
            {"lazyfs/a.py": lines(4), "lazyfs/b.py": lines(5)},
            {"lazyfs/a.py"},
            ["lazyfs/b.py: 5 lines"],
        ),
        # The allow-list only shrinks.
        ({"lazyfs/a.py": lines(3)}, {"lazyfs/a.py"}, ["lazyfs/a.py: 3 lines now: take it off"]),
        ({}, {"lazyfs/gone.py"}, ["lazyfs/gone.py: gone: take it off"]),
    ],
)
def test_checker_finds_long_modules(
    tmp_path: Path, files: dict[str, str], over_limit: set[str], expected: list[str]
) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    problems = size_problems(tmp_path, frozenset(over_limit), max_lines=3)
    assert len(problems) == len(expected), problems
    for problem, prefix in zip(problems, expected, strict=True):
        assert problem.startswith(prefix), problems
