"""Mount points as the mount table names them (``providers.mountinfo``)."""

from __future__ import annotations

from pathlib import Path

from providers.mountinfo import is_mounted, real_path


def test_a_path_is_named_through_its_parents_symlinks_but_its_last_component_is_not_looked_at(
    tmp_path: Path,
) -> None:
    # The mount table has real paths: a work dir reached through a symlink (/var/run)
    # named live mounts otherwise. The last component is never looked at: on a FUSE
    # mount point, that asks the mount process, which may be wedged.
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to("real")
    (tmp_path / "real" / "last").symlink_to("/elsewhere")
    assert real_path(tmp_path / "linked" / "x") == tmp_path / "real" / "x"
    assert real_path(tmp_path / "linked" / "last") == tmp_path / "real" / "last"
    assert real_path(Path("/")) == Path("/")


def test_proc_is_mounted_by_any_path_that_reaches_it(tmp_path: Path) -> None:
    (tmp_path / "root").symlink_to("/")
    assert is_mounted(tmp_path / "root" / "proc") and is_mounted(Path("/proc"))
    assert not is_mounted(tmp_path)
