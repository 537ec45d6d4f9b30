"""``clean_tmp`` judges an entry of the store's tmp/ by its writer's flock, not its pid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lazyfs.store.atomic import staged_file
from lazyfs.store.temps import clean_tmp
from providers.locked_temps import LOCKED, locked_scratch, temp_prefix


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_locked_entries_stay_and_unlocked_ones_go_whatever_their_pid(tmp_path: Path) -> None:
    # Named by a pid that is gone here (a writer in another pid namespace), but held.
    dead = _dead_pid()
    with (
        staged_file(tmp_path, mode=0o600, prefix=f"{dead}.{LOCKED}.") as held,
        locked_scratch(tmp_path) as scratch,
    ):
        (scratch / "layer").mkdir()
        # Named by a live pid (this one), but nobody holds it: a writer in another
        # namespace that died, or one of this pid's before it was reused.
        (tmp_path / f"{temp_prefix()}file").write_bytes(b"half")
        (tmp_path / f"{temp_prefix()}dir" / "deep").mkdir(parents=True)

        assert clean_tmp(tmp_path) == 2

        assert sorted(tmp_path.iterdir()) == sorted([held.path, scratch])
        held.file.write(b"whole")
        held.commit(tmp_path / "target")  # the writer goes on as if nobody had looked
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["target"]


def test_entries_of_writers_that_take_no_lock_are_judged_by_pid(tmp_path: Path) -> None:
    # What older lazyfs versions left, and the overlay probe's short trial directory.
    live = tmp_path / f"{os.getpid()}.abcd"
    gone = tmp_path / f"{_dead_pid()}.efgh"
    live.mkdir()
    gone.mkdir()
    assert clean_tmp(tmp_path) == 1
    assert list(tmp_path.iterdir()) == [live]


def test_names_no_process_can_have_are_stray_files(tmp_path: Path) -> None:
    # Past pid_t, or 0 (which kill(2) takes for its own process group): not a
    # writer's pid, so the entry is a stray and goes, without an OverflowError.
    for name in ("99999999999999999999.abcd", "0.efgh"):
        (tmp_path / name).mkdir()
    assert clean_tmp(tmp_path) == 2
    assert list(tmp_path.iterdir()) == []
