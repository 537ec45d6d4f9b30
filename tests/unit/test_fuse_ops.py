"""The read-only FUSE operations, called in-process (no mount).

Every test runs on both paths (``tests.support.fuse_paths``): today's, with a handle
per open, and the no-open one, driven as the kernel drives it.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest

from lazyfs.blobs.ranges import ChunkCache, LocalTars, open_layers
from lazyfs.fs.read_only import CACHE_TIMEOUT, NoOpenReadOnlyOperations, ReadOnlyOperations
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO
from providers.digest import Digest, digest_bytes
from tests.support import fuse_paths
from tests.support.images import Entry, whiteout, write_layer
from tests.support.kept_trees import served_tree

CTX = cast(pyfuse3.RequestContext, None)
BIG = bytes(range(256)) * 2000  # 512000 bytes: several chunks

LOWER = [
    Entry("etc", "dir", mode=0o755),
    Entry("etc/passwd", data=b"root\n", xattrs={"user.a": b"1", "user.b": b"\x00"}),
    Entry("etc/gone", data=b"x"),
    Entry("big", data=BIG),
    Entry("link", "symlink", target="etc/passwd"),
    Entry("hard", "hardlink", target="etc/passwd"),
    Entry("null", "char", mode=0o666, rdev=(1, 3)),
]
UPPER = [whiteout("etc/gone"), *(Entry(f"etc/f{i:02}", data=b"%d" % i) for i in range(20))]


@pytest.fixture(params=fuse_paths.PATHS)
def ops(tmp_path: Path, request: pytest.FixtureRequest) -> ReadOnlyOperations:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    indexes, tars = [], {}
    for i, entries in enumerate([LOWER, UPPER]):
        data = write_layer(entries, tmp_path / f"{i}.tar").read_bytes()
        blob = tmp_path / f"blob{i}"
        blob.write_bytes(gzip.compress(data) if i == 0 else data)
        digest = digest_bytes(blob.read_bytes())
        index = ensure_index(layers, tmp, digest, blob)
        indexes.append(index)
        tars[digest] = check_data_present(layers, blob, index)
    chunks = ChunkCache(open_layers(tars), chunk_size=4096)
    tree = served_tree(layers, indexes)  # what a mount serves: the packed tree, mapped
    if request.param == fuse_paths.NO_OPEN:
        kernel = fuse_paths.NoOpenKernel(NoOpenReadOnlyOperations(tree, chunks))
        return cast(ReadOnlyOperations, kernel)
    return ReadOnlyOperations(tree, chunks)


async def lookup(ops: ReadOnlyOperations, path: str) -> pyfuse3.EntryAttributes:
    ino = pyfuse3.InodeT(ROOT_INO)
    for part in path.split("/"):
        ino = (await ops.lookup(ino, pyfuse3.FileNameT(part.encode()), CTX)).st_ino
    return await ops.getattr(ino, CTX)


async def read_all(ops: ReadOnlyOperations, path: str, size: int = 10_000) -> bytes:
    attrs = await lookup(ops, path)
    info = await ops.open(attrs.st_ino, os.O_RDONLY, CTX)
    assert info.keep_cache
    parts, offset = [], 0
    while chunk := await ops.read(info.fh, offset, size):
        parts.append(chunk)
        offset += len(chunk)
    await ops.release(info.fh)
    return b"".join(parts)


async def test_lookup_getattr_and_negative_entries(ops: ReadOnlyOperations) -> None:
    passwd = await lookup(ops, "etc/passwd")
    assert stat.S_ISREG(passwd.st_mode) and passwd.st_size == 5 and passwd.st_nlink == 2
    assert passwd.entry_timeout == passwd.attr_timeout == CACHE_TIMEOUT
    assert (await lookup(ops, "hard")).st_ino == passwd.st_ino
    assert (await lookup(ops, "null")).st_rdev == os.makedev(1, 3)
    missing = await ops.lookup(pyfuse3.InodeT(ROOT_INO), pyfuse3.FileNameT(b"nope"), CTX)
    assert missing.st_ino == 0 and missing.entry_timeout == CACHE_TIMEOUT
    gone = await ops.lookup((await lookup(ops, "etc")).st_ino, pyfuse3.FileNameT(b"gone"), CTX)
    assert gone.st_ino == 0
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.getattr(pyfuse3.InodeT(10_000), CTX)
    assert caught.value.errno == errno.ENOENT


@pytest.mark.parametrize("size", [1, 4095, 4096, 5000, 131072])
async def test_reads_return_the_file_in_any_read_size(ops: ReadOnlyOperations, size: int) -> None:
    assert await read_all(ops, "etc/passwd", size) == b"root\n"
    assert await read_all(ops, "big", size) == BIG


async def test_reads_past_the_end_and_hot_files_read_once(ops: ReadOnlyOperations) -> None:
    fh = (await lookup(ops, "big")).st_ino
    assert await ops.read(pyfuse3.FileHandleT(fh), len(BIG) - 3, 100) == BIG[-3:]
    assert await ops.read(pyfuse3.FileHandleT(fh), len(BIG) + 10, 100) == b""
    await read_all(ops, "big")
    misses = ops.chunks.misses
    await read_all(ops, "big")
    assert ops.chunks.misses == misses


async def test_readdir_offsets_are_stable(
    ops: ReadOnlyOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bytes, int]] = []
    inos: dict[bytes, int] = {}
    room = [7]

    def reply(token: Any, name: bytes, attr: Any, next_id: int) -> bool:
        if room[0] == 0:
            return False
        room[0] -= 1
        seen.append((name, next_id))
        inos[name] = attr.st_ino
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    etc = (await lookup(ops, "etc")).st_ino
    fh = await ops.opendir(etc, CTX)
    token = cast(pyfuse3.ReaddirToken, None)
    await ops.readdir(fh, 0, token)
    while room[0] == 0:
        room[0] = 7
        await ops.readdir(fh, seen[-1][1], token)
    names = [name for name, _ in seen]
    assert names[:2] == [b".", b".."] and inos[b"."] == etc and inos[b".."] == ROOT_INO
    assert names == sorted(names) and len(names) == 23 and b"gone" not in names
    assert [next_id for _, next_id in seen] == list(range(1, 24))
    await ops.readdir(await ops.opendir(pyfuse3.InodeT(ROOT_INO), CTX), 0, token)
    assert inos[b"."] == inos[b".."] == ROOT_INO  # the root is its own parent


async def test_links_xattrs_and_statfs(ops: ReadOnlyOperations) -> None:
    link = await lookup(ops, "link")
    assert await ops.readlink(link.st_ino, CTX) == b"etc/passwd"
    passwd = (await lookup(ops, "etc/passwd")).st_ino
    assert await ops.listxattr(passwd, CTX) == [b"user.a", b"user.b"]
    assert await ops.getxattr(passwd, pyfuse3.XAttrNameT(b"user.b"), CTX) == b"\x00"
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.getxattr(passwd, pyfuse3.XAttrNameT(b"user.c"), CTX)
    assert caught.value.errno == pyfuse3.ENOATTR
    stats = await ops.statfs(CTX)
    assert stats.f_files == len(ops.tree.inodes) and stats.f_bfree == 0


# On the no-open path no open reaches the operations: the kernel refuses
# writes to the ro mount itself (tests/integration/test_fuse_mount.py).
@pytest.mark.parametrize("ops", [fuse_paths.OPEN], indirect=True)
@pytest.mark.parametrize(
    ("path", "flags", "code"),
    [
        ("etc/passwd", os.O_WRONLY, errno.EROFS),
        ("etc/passwd", os.O_RDONLY | os.O_TRUNC, errno.EROFS),
        ("etc", os.O_RDONLY, errno.EISDIR),
    ],
)
async def test_open_refusals(ops: ReadOnlyOperations, path: str, flags: int, code: int) -> None:
    ino = (await lookup(ops, path)).st_ino
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.open(ino, flags, CTX)
    assert caught.value.errno == code


@pytest.mark.parametrize("ops", [fuse_paths.NO_OPEN], indirect=True)
async def test_the_no_open_path_answers_enosys_to_every_open(ops: ReadOnlyOperations) -> None:
    operations = cast(fuse_paths.NoOpenKernel, ops).ops  # itself, not as the kernel drives it
    for path, flags in [("etc/passwd", os.O_RDONLY), ("big", os.O_RDWR), ("etc", os.O_RDONLY)]:
        ino = (await lookup(ops, path)).st_ino
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await operations.open(ino, flags, CTX)
        assert caught.value.errno == errno.ENOSYS
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await operations.opendir(pyfuse3.InodeT(ROOT_INO), CTX)
    assert caught.value.errno == errno.ENOSYS


async def test_unexpected_failures_are_eio_and_logged(
    ops: ReadOnlyOperations, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fh = pyfuse3.FileHandleT((await lookup(ops, "big")).st_ino)
    ops.chunks.source = LocalTars({Digest("sha256:" + "0" * 64): tmp_path / "nothing"})
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.read(fh, 0, 10)
    assert caught.value.errno == errno.EIO
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "KeyError" in caplog.text
