"""A lower directory changed while it is listed, on both writable paths: no name gone comes back.

A directory nothing had changed when its listing began is read from the
tree's own listing, which never changes. Once a name in it is removed or
renamed away, the rest of that listing must leave the name out: an entry
for it would give the kernel a dentry, and a stat would find the name, an
open write into what it named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest

from lazyfs.tree.merge import ROOT_INO
from tests.support import fuse_paths
from tests.support.images import Entry
from tests.support.writable_ops import CTX, ino, name, ops_of_layers

NAMES = [f"f{i:02}" for i in range(12)]


@pytest.mark.parametrize("path", fuse_paths.PATHS)
@pytest.mark.parametrize("how", ["unlink", "rename"])
async def test_a_name_gone_from_a_lower_directory_while_listed_is_left_out(
    tmp_path: Path, path: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = [[Entry("big", "dir"), *(Entry(f"big/{n}", data=b"x") for n in NAMES)]]
    ops = ops_of_layers(tmp_path, path, image)
    if path == fuse_paths.NO_OPEN:
        ops = cast(Any, fuse_paths.NoOpenKernel(ops))
    big = await ino(ops, "big")
    got: list[tuple[bytes, int]] = []
    room = [4]  # entries the kernel's buffer takes, this call

    def reply(token: Any, entry: bytes, attr: Any, next_id: int) -> bool:
        if room[0] == 0:
            return False
        room[0] -= 1
        got.append((entry, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(big, CTX)
    await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
    if how == "unlink":
        await ops.unlink(big, name("f08"), CTX)
    else:
        await ops.rename(big, name("f08"), ROOT_INO, name("moved"), 0, CTX)
    room[0] = 100
    await ops.readdir(fh, got[-1][1], cast(pyfuse3.ReaddirToken, None))
    await ops.releasedir(fh)
    names = [entry for entry, _ in got]
    assert names == [b".", b"..", *(n.encode() for n in NAMES if n != "f08")]
