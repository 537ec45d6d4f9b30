"""The store's users: an entry written once, kept when its work dir comes back mid-pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyfs.store import users
from lazyfs.store.users import register, work_dirs


def entries(store: Path) -> list[bytes]:
    return sorted(p.read_bytes() for p in (store / users.USERS).iterdir())


def test_a_named_work_dir_is_not_written_again(tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir(mode=0o700)
    work.mkdir(mode=0o700)
    register(store, work)
    (entry,) = (store / users.USERS).iterdir()
    before = entry.stat()
    register(store, work)  # as every command's start does: on a full disk no write could
    assert entry.stat().st_ino == before.st_ino
    assert work_dirs(store) == [work]


def test_a_work_dir_made_again_while_a_pass_drops_its_entry_stays_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir(mode=0o700)
    work.mkdir(mode=0o700)
    register(store, work)
    work.rmdir()
    real = os.path.lexists
    looks: list[object] = []

    def made_again_after_the_first_look(path: str | os.PathLike[str]) -> bool:
        found = real(path)
        if Path(path) == work and not looks:
            # A provisioner starts now: it makes the work dir, finds it named, writes nothing.
            work.mkdir(mode=0o700)
            register(store, work)
        looks.append(path)
        return found

    monkeypatch.setattr(os.path, "lexists", made_again_after_the_first_look)
    assert work_dirs(store) == [work]
    monkeypatch.undo()
    assert entries(store) == [os.fsencode(work) + b"\n"]
