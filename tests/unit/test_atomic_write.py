"""lazyfs.store.atomic: a file appears at its name whole, with its mode, or not at all."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lazyfs.store.atomic import publish, staged_file, write_atomic


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_write_replaces_the_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "record"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_atomic(target, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o644  # the umask plays no part
    assert [p.name for p in tmp_path.iterdir()] == ["record"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "record"
    target.write_bytes(b"old")

    def refuse(source: object, dest: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(OSError, match="Read-only"):
        write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["record"]


def test_a_staged_file_not_committed_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "record"
    with pytest.raises(RuntimeError, match="half way"), staged_file(tmp_path, mode=0o600) as staged:
        staged.file.write(b"half")
        assert staged.path.parent == tmp_path and staged.path.read_bytes() in (b"", b"half")
        raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []
    assert not target.exists()


def test_the_temporary_file_goes_where_asked_and_commits_once(tmp_path: Path) -> None:
    scratch, home = tmp_path / "scratch", tmp_path / "home"
    scratch.mkdir()
    home.mkdir()
    with staged_file(scratch, mode=None, prefix="copy-") as staged:
        assert staged.path.parent == scratch and staged.path.name.startswith("copy-")
        staged.file.write(b"bytes")
        staged.sync()
        staged.commit(home / "file", sync_dir=False)
        with pytest.raises(RuntimeError, match="committed already"):
            staged.commit(home / "again")
    assert (home / "file").read_bytes() == b"bytes"
    assert mode_of(home / "file") == 0o600  # mode None: as it was made
    assert list(scratch.iterdir()) == [] and [p.name for p in home.iterdir()] == ["file"]


def test_publish_moves_a_finished_file_with_its_mode(tmp_path: Path) -> None:
    made = tmp_path / "made"
    made.write_bytes(b"checkpoints")
    made.chmod(0o640)
    target = tmp_path / "dir" / "gzip-index"
    target.parent.mkdir()
    publish(made, target)
    assert target.read_bytes() == b"checkpoints" and mode_of(target) == 0o640
    assert not made.exists()
