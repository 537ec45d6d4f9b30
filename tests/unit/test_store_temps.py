"""``Temps``: the temporary files of work given up go at once, and no new one comes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.store.temps import Abandoned, Temps


def test_abandon_removes_the_open_files_and_nothing_half_written_is_published(
    tmp_path: Path,
) -> None:
    temps = Temps()
    with pytest.raises(FileNotFoundError), temps.staged(tmp_path, mode=0o444, prefix="1.") as one:
        one.file.write(b"half")
        temps.abandon()
        assert list(tmp_path.iterdir()) == []
        one.commit(tmp_path / "trusted")  # the writer, going on, finds its file gone
    assert list(tmp_path.iterdir()) == []


def test_after_abandon_no_file_is_made_and_a_copy_stops(tmp_path: Path) -> None:
    temps = Temps()
    counted: list[int] = []
    advance = temps.checking(counted.append)
    advance(3)
    temps.abandon()
    temps.abandon()  # idempotent
    with pytest.raises(Abandoned):
        advance(4)
    with pytest.raises(Abandoned), temps.staged(tmp_path, mode=None, prefix="1."):
        pass
    assert counted == [3]
    assert list(tmp_path.iterdir()) == []


def test_a_committed_file_stays_and_a_failed_one_goes(tmp_path: Path) -> None:
    temps = Temps()
    with temps.staged(tmp_path, mode=0o600, prefix="1.") as done:
        done.file.write(b"whole")
        done.commit(tmp_path / "trusted")
    with pytest.raises(OSError), temps.staged(tmp_path, mode=0o600, prefix="1."):
        raise OSError("no room")
    temps.abandon()
    assert [p.name for p in tmp_path.iterdir()] == ["trusted"]
    assert (tmp_path / "trusted").read_bytes() == b"whole"
