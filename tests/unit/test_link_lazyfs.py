"""scripts/link-lazyfs: who gets the name ``lazyfs`` on PATH when checkouts come and go."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "link-lazyfs"


def venv_lazyfs(checkout: Path) -> Path:
    program = checkout / ".venv" / "bin" / "lazyfs"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    return program


def link_lazyfs(target: Path, link: Path) -> str:
    """Run the script; its stderr (it always succeeds)."""
    done = subprocess.run([SCRIPT, target, link], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    return done.stderr


@pytest.fixture
def ours(tmp_path: Path) -> Path:
    return venv_lazyfs(tmp_path / "checkout")


def test_the_name_is_made_when_nothing_has_it(ours: Path, tmp_path: Path) -> None:
    link = tmp_path / "lazyfs"
    assert link_lazyfs(ours, link) == ""
    assert os.readlink(link) == str(ours)
    assert link_lazyfs(ours, link) == ""  # again: nothing to do, nothing said
    assert os.readlink(link) == str(ours)


def test_a_link_to_a_removed_checkout_is_taken_over(ours: Path, tmp_path: Path) -> None:
    link = tmp_path / "lazyfs"
    link.symlink_to(tmp_path / "removed-clone" / ".venv" / "bin" / "lazyfs")
    assert link_lazyfs(ours, link) == ""
    assert os.readlink(link) == str(ours)


def test_a_link_to_a_working_checkout_is_kept_and_said(ours: Path, tmp_path: Path) -> None:
    other = venv_lazyfs(tmp_path / "first-checkout")
    link = tmp_path / "lazyfs"
    link.symlink_to(other)
    said = link_lazyfs(ours, link)
    assert said == (
        f"setup: {link} is not this checkout's ({other}); "
        "run .venv/bin/lazyfs, or put it first on PATH\n"
    )
    assert os.readlink(link) == str(other)


@pytest.mark.parametrize("kind", ["file", "foreign dangling link"])
def test_anything_else_of_the_name_is_left_alone(ours: Path, tmp_path: Path, kind: str) -> None:
    link = tmp_path / "lazyfs"
    if kind == "file":
        link.write_text("someone else's lazyfs\n")
    else:
        link.symlink_to(tmp_path / "opt" / "lazyfs")
    assert link_lazyfs(ours, link).startswith(f"setup: {link} is not this checkout's")
    if kind == "file":
        assert not link.is_symlink() and link.read_text() == "someone else's lazyfs\n"
    else:
        assert os.readlink(link) == str(tmp_path / "opt" / "lazyfs")
