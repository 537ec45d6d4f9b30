"""Finding a FUSE mount's device in the mount table, and raising its read-ahead there.

The sysfs and mount-table files are stand-ins under ``tmp_path``; a real
mount's window is checked in ``tests/integration/test_fuse_read_ahead.py``.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from lazyfs.fs import caps, kernel_read_ahead
from lazyfs.fs.kernel_read_ahead import after_init, fuse_device, raise_read_ahead

ROOT = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"
FUSE = "120 22 0:61 / /srv/m rw,nosuid,nodev shared:70 - fuse lazyfs rw,user_id=0,group_id=0"


@pytest.mark.parametrize(
    ("lines", "mountpoint", "device"),
    [
        ([ROOT, FUSE], "/srv/m", "0:61"),
        ([ROOT, FUSE], "/srv", None),  # not a mount point
        ([ROOT], "/", None),  # a mount, not a FUSE one
        # A mount over an earlier one at the same path hides it: the last listed wins.
        ([FUSE, FUSE.replace("120 22 0:61", "121 120 0:62")], "/srv/m", "0:62"),
        # fuse.NAME (a subtype) is FUSE too.
        ([FUSE.replace(" - fuse ", " - fuse.lazyfs ")], "/srv/m", "0:61"),
        # Spaces and tabs in a path are octal escapes in the table.
        ([FUSE.replace("/srv/m", "/srv/a\\040b\\011c")], "/srv/a b\tc", "0:61"),
        # Optional fields (any number of them) come before the separator.
        ([FUSE.replace("shared:70", "shared:70 master:3 propagate_from:2")], "/srv/m", "0:61"),
        (["garbage", "1 2 3", ""], "/srv/m", None),
    ],
)
def test_fuse_device_in_the_mount_table(
    lines: list[str], mountpoint: str, device: str | None
) -> None:
    assert fuse_device("\n".join(lines) + "\n", mountpoint) == device


def _sysfs(tmp_path: Path, window: int) -> tuple[Path, Path, Path]:
    """A mount table naming the FUSE mount of /srv/m, and its device's read_ahead_kb."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"{ROOT}\n{FUSE}\n")
    bdi = tmp_path / "bdi"
    (bdi / "0:61").mkdir(parents=True)
    knob = bdi / "0:61" / "read_ahead_kb"
    knob.write_text(f"{window}\n")
    return mountinfo, bdi, knob


def test_the_window_is_raised(tmp_path: Path) -> None:
    mountinfo, bdi, knob = _sysfs(tmp_path, 128)
    assert raise_read_ahead("/srv/m", 512, mountinfo=mountinfo, bdi=bdi)
    assert knob.read_text().strip() == "512"


def test_a_larger_window_is_never_lowered(tmp_path: Path) -> None:
    mountinfo, bdi, knob = _sysfs(tmp_path, 1024)
    assert not raise_read_ahead("/srv/m", 512, mountinfo=mountinfo, bdi=bdi)
    assert knob.read_text().strip() == "1024"


def test_no_mount_or_no_device_leaves_everything_as_it_is(tmp_path: Path) -> None:
    mountinfo, bdi, knob = _sysfs(tmp_path, 128)
    assert not raise_read_ahead("/srv/other", 512, mountinfo=mountinfo, bdi=bdi)
    assert not raise_read_ahead("/srv/m", 512, mountinfo=tmp_path / "none", bdi=bdi)
    knob.unlink()
    assert not raise_read_ahead("/srv/m", 512, mountinfo=mountinfo, bdi=bdi)
    assert knob.exists() is False


class _Ops(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.inits = 0

    def init(self) -> None:
        self.inits += 1


def _stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The mount table and sysfs of ``_sysfs`` in place of the real ones; the knob."""
    mountinfo, bdi, knob = _sysfs(tmp_path, 128)
    monkeypatch.setattr(kernel_read_ahead, "MOUNTINFO", mountinfo)
    monkeypatch.setattr(kernel_read_ahead, "SYSFS_BDI", bdi)
    monkeypatch.setattr(os.path, "realpath", lambda path: str(path))
    return knob


def test_init_raises_the_window_before_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pyfuse3's ``max_readahead``: the answer says 512 KiB, and init raises the device's."""
    knob = _stand_ins(tmp_path, monkeypatch)
    ops = _Ops()
    init = after_init(ops, Path("/srv/m"), 512, answered=True)
    assert ops.init is init
    assert vars(ops)["max_readahead"] == 512 * 1024
    ops.init()
    assert ops.inits == 1  # what init did before still runs
    assert knob.read_text().strip() == "512"


def test_without_the_answer_init_raises_it_at_trios_next_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stock pyfuse3 answers with the kernel's offer: raised after the answer has gone."""
    knob = _stand_ins(tmp_path, monkeypatch)
    ops = _Ops()
    after_init(ops, Path("/srv/m"), 512, answered=False)
    assert "max_readahead" not in vars(ops)

    async def answering() -> None:
        ops.init()
        assert knob.read_text().strip() == "128"  # not while the answer is being made
        await trio.testing.wait_all_tasks_blocked()  # the callback has run by then

    trio.run(answering)
    assert ops.inits == 1
    assert knob.read_text().strip() == "512"


@pytest.mark.parametrize("answered", [True, False])
def test_caps_tell_whether_pyfuse3_answers_with_the_window(answered: bool) -> None:
    class Operations:
        pass

    if answered:
        Operations.max_readahead = None  # type: ignore[attr-defined]
    module = types.ModuleType("pyfuse3")
    module.Operations = Operations  # type: ignore[attr-defined]
    assert caps.pyfuse3_answers_read_ahead(module) is answered


def test_the_pyfuse3_setup_builds_answers_with_the_window() -> None:
    if not pyfuse3.__version__.split("+")[-1].startswith("lazyfs"):
        pytest.skip("a stock pyfuse3")
    assert caps.pyfuse3_answers_read_ahead()
