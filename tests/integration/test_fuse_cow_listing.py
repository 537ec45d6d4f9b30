"""Listing directories of a writable FUSE mount while they change, as ``rm -rf`` and logrotate do.

POSIX lets a listing skip or repeat only names added or removed while it
runs: every name there throughout is listed once.  And a name gone must be
gone at once, as on kernel overlayfs: an entry the listing answers for it
would make the kernel keep its dentry, so a stat would find it and an open
would write into the file it named.  Each test runs on both FUSE paths and
both ways mount processes start, through ``CowMounts``, which unmounts
whatever the test did.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cow_mounts import CowMounts
from tests.support.images import Entry

pytestmark = pytest.mark.integration


def test_rm_rf_of_a_lower_directory_removes_every_name(mounts: CowMounts) -> None:
    names = [f"f{i:03d}" for i in range(300)]
    m = mounts.mount([[Entry("big", "dir"), *(Entry(f"big/{n}", data=b"") for n in names)]])
    big = m.root / "big"
    removed = []
    with os.scandir(big) as listing:  # readdir, unlink what it gave, readdir on: rm -rf
        for entry in listing:
            os.unlink(entry.path)
            removed.append(entry.name)
    assert sorted(removed) == names
    assert os.listdir(big) == []
    os.rmdir(big)
    assert not big.exists()


def changing(mounts: CowMounts, last: str) -> tuple[Path, Path]:
    """A directory of a new mount, changed since it started (listed from a snapshot):
    300 names, then ``last`` (holding ``old``); and where its upper directory is."""
    entries = [Entry("d", "dir"), *(Entry(f"d/a{i:03d}", data=b"") for i in range(300))]
    m = mounts.mount([[*entries, Entry(f"d/{last}", data=b"old\n"), Entry("o", "dir")]])
    d = m.root / "d"
    (d / "new").write_bytes(b"")
    return d, m.upper / "d"


def test_a_name_removed_while_listed_is_gone_once_listed(mounts: CowMounts) -> None:
    d, upper = changing(mounts, "z")
    with os.scandir(d) as listing:
        next(listing)  # the first batch is read
        os.rename(d / "z", d.parent / "o" / "moved")
        os.unlink(d / "a299")
        rest = [entry.name for entry in listing]
    assert "a298" in rest
    for gone in ("z", "a299"):
        with pytest.raises(FileNotFoundError):
            os.stat(d / gone)
    with open(d / "a299", "w") as f:  # as an application writes a file
        f.write("again\n")
    assert (upper / "a299").read_bytes() == b"again\n"  # a new file, not the unlinked one
    assert (d / "a299").read_bytes() == b"again\n"
    assert (d.parent / "o" / "moved").read_bytes() == b"old\n"


def test_a_log_rotated_while_listed_takes_the_new_lines(mounts: CowMounts) -> None:
    d, upper = changing(mounts, "z.log")
    with os.scandir(d) as listing:  # ls or find has begun
        next(listing)
        os.rename(d / "z.log", d / "z.log.1")  # logrotate
        for _ in listing:
            pass
    with open(d / "z.log", "a") as log:  # the daemon reopens its log
        log.write("new\n")
    assert (upper / "z.log").read_bytes() == b"new\n"
    assert (d / "z.log").read_bytes() == b"new\n"
    assert (d / "z.log.1").read_bytes() == b"old\n"
