"""The copy-on-write FUSE operations, called in-process (no mount), and the upper they write.

Every test runs on both paths (``tests.support.fuse_paths``): today's, with a handle
per open, and the no-open one, driven as the kernel drives it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pyfuse3
import pytest
import trio
import trio.testing

from lazyfs.fs.debug import log_requests
from lazyfs.fs.upper import METACOPY_XATTR, OPAQUE_XATTR, REDIRECT_XATTR
from lazyfs.fs.writable import WritableOperations
from lazyfs.store.atomic import Staged
from lazyfs.tree.merge import ROOT_INO, DataRef
from tests.support import fuse_paths
from tests.support.images import Entry
from tests.support.tree import is_whiteout
from tests.support.writable_ops import BIG, CTX, ino, make_ops, name, ops_of_layers, setting


@pytest.fixture(params=fuse_paths.PATHS)
def ops(tmp_path: Path, request: pytest.FixtureRequest) -> WritableOperations:
    return make_ops(tmp_path, request.param)


async def names(ops: WritableOperations, path: str) -> list[str]:
    return sorted(n.decode() for n, _ in ops.upper.listing(await ino(ops, path) if path else 1))


async def read(ops: WritableOperations, path: str) -> bytes:
    info = await ops.open(await ino(ops, path), os.O_RDONLY, CTX)
    try:
        return await ops.read(info.fh, 0, 10 << 20)
    finally:
        await ops.release(info.fh)


def upper(ops: WritableOperations) -> Path:
    return ops.upper.upper


async def test_write_copies_up_once_and_the_lower_stays(ops: WritableOperations) -> None:
    passwd = await ino(ops, "etc/passwd")
    info = await ops.open(passwd, os.O_WRONLY, CTX)
    assert await ops.write(info.fh, 5, b"more\n") == 5
    await ops.fsync(info.fh, False)
    await ops.release(info.fh)
    assert await read(ops, "etc/passwd") == b"root\nmore\n"
    assert await read(ops, "hard") == b"root\nmore\n"  # one inode, two names
    on_disk = upper(ops) / "etc" / "passwd"
    assert on_disk.read_bytes() == b"root\nmore\n"
    assert os.stat(on_disk).st_nlink == 2 and (upper(ops) / "hard").samefile(on_disk)
    assert os.getxattr(on_disk, "user.a") == b"1"
    assert METACOPY_XATTR not in os.listxattr(on_disk)
    assert not list(ops.upper.work.iterdir())


@pytest.mark.parametrize("data", [b"", b"lower bytes"], ids=["empty", "lower"])
@pytest.mark.parametrize("path", fuse_paths.PATHS)
async def test_an_unlinked_open_file_takes_chmod_chown_utimens_setxattr_and_writes(
    tmp_path: Path, path: str, data: bytes
) -> None:
    # Each was ENOENT (the upper looked for a name), as were writes after them to an
    # empty lower file on the no-open path. Any local filesystem, overlayfs too, takes them.
    ops = ops_of_layers(tmp_path, path, [[Entry("d", "dir"), Entry("d/f", data=data)]])
    d, f = await ino(ops, "d"), await ino(ops, "d/f")
    info = await ops.open(f, os.O_RDWR, CTX)
    await ops.unlink(d, name("f"), CTX)
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o4750)
    attr.st_uid, attr.st_gid = 7, 8
    attr.st_mtime_ns = 10**18
    got = await ops.setattr(f, attr, setting("mode"), info.fh, CTX)
    assert got.st_mode == stat.S_IFREG | 0o4750
    got = await ops.setattr(f, attr, setting("uid", "gid", "mtime"), info.fh, CTX)
    assert (got.st_uid, got.st_gid, got.st_mtime_ns) == (7, 8, 10**18)
    assert got.st_mode == stat.S_IFREG | 0o0750  # chown(2) drops setuid
    await ops.setxattr(f, b"user.k", b"v", CTX)
    assert await ops.getxattr(f, b"user.k", CTX) == b"v"
    assert await ops.write(info.fh, 0, b"new") == 3
    assert await ops.read(info.fh, 0, 100) == b"new" + data[3:]
    await ops.release(info.fh)
    assert sorted(os.listdir(upper(ops))) == ["d"] and is_whiteout(upper(ops) / "d" / "f")


async def test_chmod_is_a_metadata_copy(ops: WritableOperations) -> None:
    big = await ino(ops, "big")
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o700)
    fields = setting("mode")
    got = await ops.setattr(big, attr, fields, None, CTX)
    assert got.st_mode & 0o7777 == 0o700 and got.st_size == len(BIG)
    on_disk = os.stat(upper(ops) / "big")
    assert on_disk.st_size == len(BIG) and on_disk.st_blocks == 0
    assert os.getxattr(upper(ops) / "big", METACOPY_XATTR) == b""
    assert await read(ops, "big") == BIG
    fields = setting("size")
    attr.st_size = 10
    await ops.setattr(big, attr, fields, None, CTX)
    assert await read(ops, "big") == BIG[:10]
    assert (upper(ops) / "big").read_bytes() == BIG[:10]
    assert os.stat(upper(ops) / "big").st_mode & 0o7777 == 0o700


async def test_unlink_rmdir_whiteouts_and_recreate(ops: WritableOperations) -> None:
    etc = await ino(ops, "etc")
    await ops.unlink(etc, name("top"), CTX)
    assert is_whiteout(upper(ops) / "etc" / "top")
    assert await names(ops, "etc") == ["passwd"]
    info, _ = await ops.create(etc, name("top"), 0o644, os.O_WRONLY, CTX)
    await ops.write(info.fh, 0, b"again")
    await ops.release(info.fh)
    assert await read(ops, "etc/top") == b"again"
    assert (upper(ops) / "etc" / "top").read_bytes() == b"again"
    d = await ino(ops, "d")
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.rmdir(ROOT_INO, name("d"), CTX)
    assert refused.value.errno == errno.ENOTEMPTY
    await ops.unlink(d, name("x"), CTX)
    await ops.rmdir(ROOT_INO, name("d"), CTX)
    assert is_whiteout(upper(ops) / "d")
    await ops.mkdir(ROOT_INO, name("d"), 0o755, CTX)
    assert await names(ops, "d") == []
    assert os.getxattr(upper(ops) / "d", OPAQUE_XATTR) == b"y"
    await ops.mkdir(ROOT_INO, name("fresh"), 0o755, CTX)
    assert OPAQUE_XATTR not in os.listxattr(upper(ops) / "fresh")


async def test_a_lower_file_removed_while_open_still_reads(ops: WritableOperations) -> None:
    info = await ops.open(await ino(ops, "big"), os.O_RDONLY, CTX)
    await ops.unlink(ROOT_INO, name("big"), CTX)
    assert await ops.read(info.fh, 0, 10) == BIG[:10]
    await ops.release(info.fh)


async def test_a_reader_opened_before_a_copy_up_follows_it(ops: WritableOperations) -> None:
    passwd = await ino(ops, "etc/passwd")
    reader = await ops.open(passwd, os.O_RDONLY, CTX)
    assert await ops.read(reader.fh, 0, 100) == b"root\n"
    writer = await ops.open(passwd, os.O_WRONLY, CTX)
    await ops.write(writer.fh, 0, b"ROOT")
    await ops.release(writer.fh)
    await ops.rename(await ino(ops, "etc"), name("passwd"), ROOT_INO, name("moved"), 0, CTX)
    assert await ops.read(reader.fh, 0, 100) == b"ROOT\n"
    await ops.unlink(ROOT_INO, name("moved"), CTX)
    await ops.unlink(ROOT_INO, name("hard"), CTX)
    assert await ops.read(reader.fh, 0, 100) == b"ROOT\n"  # its fd outlives the names
    await ops.release(reader.fh)


async def test_rename_link_symlink_and_refusals(ops: WritableOperations) -> None:
    etc = await ino(ops, "etc")
    await ops.rename(etc, name("passwd"), ROOT_INO, name("moved"), 0, CTX)
    assert await read(ops, "moved") == b"root\n"
    assert is_whiteout(upper(ops) / "etc" / "passwd")
    assert (await ops.getattr(await ino(ops, "hard"), CTX)).st_nlink == 2
    # A lower directory moves through a redirect (no longer EXDEV), and back.
    await ops.rename(ROOT_INO, name("etc"), ROOT_INO, name("etc2"), 0, CTX)
    assert await read(ops, "etc2/top") == b"top\n" and await ino(ops, "etc2") == etc
    assert os.getxattr(upper(ops) / "etc2", REDIRECT_XATTR) == b"/etc"
    assert is_whiteout(upper(ops) / "etc")
    await ops.rename(ROOT_INO, name("etc2"), ROOT_INO, name("etc"), 0, CTX)
    assert not os.path.lexists(upper(ops) / "etc2")
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.rename(ROOT_INO, name("moved"), ROOT_INO, name("link"), 1, CTX)
    assert refused.value.errno == errno.EEXIST
    linked = await ops.link(await ino(ops, "moved"), etc, name("again"), CTX)
    assert linked.st_nlink == 3
    await ops.symlink(ROOT_INO, name("s"), name("etc/again"), CTX)
    assert await ops.readlink(await ino(ops, "s"), CTX) == b"etc/again"
    assert os.readlink(upper(ops) / "s") == "etc/again"
    await ops.mkdir(ROOT_INO, name("new"), 0o755, CTX)
    await ops.rename(ROOT_INO, name("new"), etc, name("sub"), 0, CTX)
    assert (upper(ops) / "etc" / "sub").is_dir()
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.create(etc, name("sub"), 0o644, os.O_WRONLY, CTX)
    assert refused.value.errno == errno.EEXIST
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.unlink(etc, name("nope"), CTX)
    assert refused.value.errno == errno.ENOENT


async def test_xattrs_and_times(ops: WritableOperations) -> None:
    passwd = await ino(ops, "etc/passwd")
    await ops.setxattr(passwd, pyfuse3.XAttrNameT(b"user.b"), b"2", CTX)
    await ops.removexattr(passwd, pyfuse3.XAttrNameT(b"user.a"), CTX)
    assert await ops.listxattr(passwd, CTX) == [b"user.b"]
    assert sorted(os.listxattr(upper(ops) / "etc" / "passwd")) == [METACOPY_XATTR, "user.b"]
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.removexattr(passwd, pyfuse3.XAttrNameT(b"user.a"), CTX)
    assert refused.value.errno == pyfuse3.ENOATTR
    attr = pyfuse3.EntryAttributes()
    attr.st_atime_ns = attr.st_mtime_ns = 10**18
    fields = setting("atime", "mtime")
    assert (await ops.setattr(passwd, attr, fields, None, CTX)).st_mtime_ns == 10**18
    assert os.stat(upper(ops) / "etc" / "passwd").st_mtime_ns == 10**18


@pytest.mark.parametrize("xattr", [b"system.posix_acl_access", b"system.anything"])
async def test_system_xattrs_are_refused_before_any_copy_up(
    ops: WritableOperations, xattr: bytes
) -> None:
    # Any user may send them (the kernel checks no right to system.* on FUSE),
    # and it does not enforce POSIX ACLs here: one written to the host's upper
    # file would set its group bits to the ACL's mask.
    acl = bytes.fromhex("02000000" "0100060000000000" "0400040000000000" "1000060000000000"
                        "2000000000000000")  # fmt: skip
    passwd = await ino(ops, "etc/passwd")
    other = cast(pyfuse3.RequestContext, SimpleNamespace(uid=65534, gid=65534, umask=0o022, pid=2))
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.setxattr(passwd, pyfuse3.XAttrNameT(xattr), acl, other)
    assert refused.value.errno == errno.EOPNOTSUPP
    assert not (upper(ops) / "etc").exists()
    assert await ops.listxattr(passwd, CTX) == [b"user.a"]


@pytest.mark.parametrize(
    ("mode", "left"), [(0o6777, 0o0777), (0o6767, 0o2767)], ids=["group-exec", "mandatory-lock"]
)
async def test_open_with_o_trunc_by_another_user_drops_set_id_bits(
    tmp_path: Path, mode: int, left: int
) -> None:
    # On the handles path the kernel asks for atomic O_TRUNC and then leaves
    # dropping the set-id bits to the filesystem, as truncate(2) drops them.
    ops = ops_of_layers(tmp_path, fuse_paths.OPEN, [[Entry("suid", data=b"binary", mode=mode)]])
    suid = await ino(ops, "suid")
    other = cast(pyfuse3.RequestContext, SimpleNamespace(uid=65534, gid=65534, umask=0o022, pid=2))
    info = await ops.open(suid, os.O_WRONLY | os.O_TRUNC, other)
    await ops.release(info.fh)
    assert stat.S_IMODE((await ops.getattr(suid, CTX)).st_mode) == left
    assert stat.S_IMODE(os.stat(upper(ops) / "suid").st_mode) == left
    # Root's own truncate keeps them, as CAP_FSETID does.
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | mode
    await ops.setattr(suid, attr, setting("mode"), None, CTX)
    info = await ops.open(suid, os.O_WRONLY | os.O_TRUNC, CTX)
    await ops.release(info.fh)
    assert stat.S_IMODE((await ops.getattr(suid, CTX)).st_mode) == mode


async def test_truncating_to_zero_copies_no_data(ops: WritableOperations) -> None:
    big = await ino(ops, "big")
    reader = await ops.open(big, os.O_RDONLY, CTX)
    info = await ops.open(big, os.O_WRONLY | os.O_TRUNC, CTX)
    assert (await ops.getattr(big, CTX)).st_size == 0
    assert METACOPY_XATTR not in os.listxattr(upper(ops) / "big")
    await ops.write(info.fh, 0, b"new")
    await ops.release(info.fh)
    assert await read(ops, "big") == b"new"
    # A handle opened on the lower file sees the new bytes too, as the page cache does.
    assert await ops.read(reader.fh, 0, 4) == b"new"
    await ops.release(reader.fh)


async def test_a_reader_keeps_the_copied_up_bytes_after_the_last_name_goes(
    ops: WritableOperations,
) -> None:
    big = await ino(ops, "big")
    reader = await ops.open(big, os.O_RDONLY, CTX)
    writer = await ops.open(big, os.O_WRONLY, CTX)
    await ops.write(writer.fh, 0, b"NEW")
    await ops.release(writer.fh)
    await ops.unlink(ROOT_INO, name("big"), CTX)
    assert await ops.read(reader.fh, 0, 5) == b"NEW" + BIG[3:5]
    await ops.release(reader.fh)


async def test_a_full_upper_answers_enospc_and_others_eio(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, _ = await ops.create(ROOT_INO, name("f"), 0o644, os.O_WRONLY, CTX)

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.write(info.fh, 0, b"x")
    assert refused.value.errno == errno.ENOSPC

    def broken(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EBADMSG, "Bad message")

    monkeypatch.setattr(os, "pwrite", broken)
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.write(info.fh, 0, b"x")
    assert refused.value.errno == errno.EIO
    await ops.release(info.fh)


async def test_concurrent_writers_copy_the_data_up_once(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = []
    copy_bytes = ops.upper._copy_bytes

    def counted(data: DataRef, staged: Staged) -> None:
        copies.append(staged.path)
        copy_bytes(data, staged)

    monkeypatch.setattr(ops.upper, "_copy_bytes", counted)
    big = await ino(ops, "big")
    handles: list[pyfuse3.FileInfo] = []

    async def open_one() -> None:
        info = await ops.open(big, os.O_RDWR, CTX)
        await ops.write(info.fh, 0, BIG[:1])  # no-open copies up here, not at open
        handles.append(info)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(open_one)
    assert len(copies) == 1 and len(handles) == 10
    for info in handles:
        assert await ops.read(info.fh, len(BIG) - 3, 10) == BIG[-3:]
        await ops.release(info.fh)
    assert not list(ops.upper.work.iterdir())


async def test_readdir_lists_dot_and_dotdot_first(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bytes, int]] = []

    def reply(token: object, entry_name: bytes, attr: pyfuse3.EntryAttributes, _: int) -> bool:
        seen.append((entry_name, attr.st_ino))
        return True

    async def listing(directory: int) -> list[tuple[bytes, int]]:
        seen.clear()
        fh = await ops.opendir(pyfuse3.InodeT(directory), CTX)
        await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
        await ops.releasedir(fh)
        return list(seen)

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    d = await ino(ops, "d")
    made = (await ops.mkdir(d, name("new"), 0o755, CTX)).st_ino
    assert await listing(d) == [
        (b".", d),
        (b"..", ROOT_INO),
        (b"new", made),
        (b"x", await ino(ops, "d/x")),
    ]
    assert await listing(made) == [(b".", made), (b"..", d)]
    assert (await listing(ROOT_INO))[:2] == [(b".", ROOT_INO), (b"..", ROOT_INO)]


async def test_a_listing_from_the_start_again_shows_the_directory_as_it_is_now(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rewinddir: POSIX and overlayfs show changes made since opendir. The handle of
    # the open path kept its first snapshot: a deleted name stayed, a new one never came.
    seen: list[bytes] = []

    def reply(token: object, entry_name: bytes, attr: pyfuse3.EntryAttributes, _: int) -> bool:
        seen.append(entry_name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    d = await ino(ops, "d")
    fh = await ops.opendir(d, CTX)
    await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
    assert seen == [b".", b"..", b"x"]
    await ops.unlink(d, name("x"), CTX)
    info, _ = await ops.create(d, name("new"), 0o644, os.O_WRONLY, CTX)
    await ops.release(info.fh)
    seen.clear()
    await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
    await ops.releasedir(fh)
    assert seen == [b".", b"..", b"new"]


async def test_exchanging_names_keeps_no_descriptor_open(ops: WritableOperations) -> None:
    # Each exchange pinned an fd on the upper file at the second name, let go of only
    # when the kernel forgot that inode, which it may never do while the name stays:
    # a thousand files exchanged ran the mount process out of descriptors (EIO then).
    made = []
    for number in range(20):
        info, entry = await ops.create(ROOT_INO, name(f"f{number}"), 0o644, os.O_WRONLY, CTX)
        await ops.write(info.fh, 0, b"x")
        await ops.release(info.fh)
        made.append(entry.st_ino)
    before = len(os.listdir("/proc/self/fd"))
    for number in range(0, 20, 2):
        a, b = name(f"f{number}"), name(f"f{number + 1}")
        await ops.rename(ROOT_INO, a, ROOT_INO, b, pyfuse3.RENAME_EXCHANGE, CTX)
    assert len(os.listdir("/proc/self/fd")) == before
    assert await ino(ops, "f0") == made[1] and await ino(ops, "f1") == made[0]


async def test_rename_exchange_swaps_names_in_memory_and_in_upper(ops: WritableOperations) -> None:
    exchange = pyfuse3.RENAME_EXCHANGE
    etc, d = await ino(ops, "etc"), await ino(ops, "d")
    passwd, x = await ino(ops, "etc/passwd"), await ino(ops, "d/x")
    await ops.rename(etc, name("passwd"), d, name("x"), exchange, CTX)
    assert (await ino(ops, "etc/passwd"), await ino(ops, "d/x")) == (x, passwd)
    assert await read(ops, "etc/passwd") == b"dx"
    assert await read(ops, "d/x") == await read(ops, "hard") == b"root\n"
    assert (await ops.getattr(passwd, CTX)).st_nlink == 2
    # No bytes copied: metacopies that say where theirs are.
    for where, lower in (("etc/passwd", {b"/d/x"}), ("d/x", {b"/etc/passwd", b"/hard"})):
        assert os.getxattr(upper(ops) / where, REDIRECT_XATTR) in lower  # passwd has two
        assert os.getxattr(upper(ops) / where, METACOPY_XATTR) == b""
    # A new directory and a lower file: the directory takes a lower name, so it turns opaque.
    made = (await ops.mkdir(ROOT_INO, name("new"), 0o755, CTX)).st_ino
    await ops.rename(ROOT_INO, name("new"), ROOT_INO, name("big"), exchange, CTX)
    assert await ino(ops, "big") == made and await read(ops, "new") == BIG
    assert (upper(ops) / "big").is_dir() and os.stat(upper(ops) / "new").st_blocks == 0
    assert os.getxattr(upper(ops) / "new", REDIRECT_XATTR) == b"/big"
    assert os.getxattr(upper(ops) / "big", OPAQUE_XATTR) == b"y"
    assert sorted(await names(ops, "")) == ["big", "d", "etc", "hard", "link", "new"]


@pytest.mark.parametrize(
    ("a", "b", "flags", "code"),
    [
        ("big", "nope", pyfuse3.RENAME_EXCHANGE, errno.ENOENT),
        ("mine", "mine/in", pyfuse3.RENAME_EXCHANGE, errno.EINVAL),  # into itself
        ("big", "link", pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE, errno.EINVAL),
    ],
)
async def test_rename_exchange_refusals(
    ops: WritableOperations, a: str, b: str, flags: int, code: int
) -> None:
    mine = (await ops.mkdir(ROOT_INO, name("mine"), 0o755, CTX)).st_ino
    await ops.mkdir(mine, name("in"), 0o755, CTX)

    async def place(path: str) -> tuple[pyfuse3.InodeT, pyfuse3.FileNameT]:
        head, _, last = path.rpartition("/")
        return (await ino(ops, head) if head else pyfuse3.InodeT(ROOT_INO)), name(last)

    (a_dir, a_name), (b_dir, b_name) = await place(a), await place(b)
    before = sorted(p.name for p in upper(ops).iterdir())
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.rename(a_dir, a_name, b_dir, b_name, flags, CTX)
    assert refused.value.errno == code
    assert sorted(p.name for p in upper(ops).iterdir()) == before


async def test_debug_logs_each_request_and_its_answer(
    ops: WritableOperations, caplog: pytest.LogCaptureFixture
) -> None:
    log_requests(ops)
    with caplog.at_level(logging.DEBUG, logger="lazyfs.requests"):
        info, attrs = await ops.create(ROOT_INO, name("f"), 0o644, os.O_WRONLY | os.O_TRUNC, CTX)
        await ops.write(info.fh, 0, b"x" * 100)
        await ops.release(info.fh)
        with pytest.raises(pyfuse3.FUSEError):
            await ops.unlink(ROOT_INO, name("nope"), CTX)
        link = await ino(ops, "link")
        await ops.readlink(link, CTX)
    assert caplog.messages == [
        f"create(1, b'f', 420, O_WRONLY|O_TRUNC) -> fh {info.fh}, ino {attrs.st_ino}",
        f"write({info.fh}, 0, <100 bytes>) -> 100",
        f"release({info.fh}) -> ok",
        "unlink(1, b'nope') -> ENOENT",
        f"lookup(1, b'link') -> ino {link}",
        f"readlink({link}) -> b'etc'",
    ]


async def test_a_rename_during_a_copy_up_moves_where_the_bytes_land(
    ops: WritableOperations,
) -> None:
    big = ops.upper.node(await ino(ops, "big"))
    dst = (await ops.mkdir(ROOT_INO, name("dst"), 0o755, CTX)).st_ino

    async def rename_meanwhile() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the copy is in its worker thread
        # Renames never wait for a copy-up: they copy no bytes.
        await ops.rename(ROOT_INO, name("big"), dst, name("big"), 0, CTX)
        exchange = pyfuse3.RENAME_EXCHANGE
        await ops.rename(ROOT_INO, name("d"), dst, name("big"), exchange, CTX)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rename_meanwhile)
        await ops.upper.copy_up_data(big)
    assert (upper(ops) / "d").read_bytes() == BIG
    assert REDIRECT_XATTR not in os.listxattr(upper(ops) / "d")
    assert await read(ops, "d") == BIG and await names(ops, "dst/big") == ["x"]
    assert is_whiteout(upper(ops) / "big")


async def test_debug_lines_stay_short_for_long_arguments(
    ops: WritableOperations, caplog: pytest.LogCaptureFixture
) -> None:
    log_requests(ops)
    with caplog.at_level(logging.DEBUG, logger="lazyfs.requests"):
        await ops.forget([(pyfuse3.InodeT(i), 1) for i in range(2, 1002)])
    (line,) = caplog.messages
    assert line.startswith("forget([(2, 1), (3, 1)")
    assert line.endswith(f"... (1000 items)) -> ok [{ops.upper.held()} nodes held]")
    assert len(line) < 300
