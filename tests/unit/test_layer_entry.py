"""One classification of a tar member, shared by applying a layer and indexing it.

``classify_member`` is checked on its own, table-driven; then every row is
fed, as a one-layer archive, to both of its consumers: ``apply_layer`` (the
copy, bind and overlay backends) and ``scan_stream`` (the FUSE index).  They
must refuse the same members with the same error, and for accepted ones the
file apply made must carry the values the index holds.  Owners, devices and
trusted.* xattrs need root, so those checks do.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from backends.apply import apply_layer
from lazyfs.index.build import scan_stream
from lazyfs.index.model import IndexEntry, Kind
from providers.errors import BadImage, UnsafeLayer
from providers.layer_entry import (
    MAX_MTIME_NS,
    MIN_MTIME_NS,
    EntryKind,
    LayerEntry,
    carried_xattr,
    clamp_mtime,
    classify_member,
)
from providers.layer_rules import Action
from tests.support.tar_members import ROOT_ONLY, Member, dir_, layer, reg, sym, tar_info, xattrs

NS = 1_000_000_000
# vfs_cap_data: revision 2 or 3 | effective, cap_net_bind_service, [rootid].
CAP_DATA = struct.pack("<IIII", 1 << 10, 0, 0, 0)
CAP_V2 = struct.pack("<I", 0x02000001) + CAP_DATA
CAP_V3_ROOT = struct.pack("<I", 0x03000001) + CAP_DATA + struct.pack("<I", 0)
CAP_V3_1000 = struct.pack("<I", 0x03000001) + CAP_DATA + struct.pack("<I", 1000)


def hardlink(name: str, target: str, **fields: object) -> Member:
    return tar_info(name, tarfile.LNKTYPE, linkname=target, **fields), b""


def device(name: str, kind: bytes, major: int, minor: int) -> Member:
    return tar_info(name, kind, devmajor=major, devminor=minor), b""


def named(values: dict[str, bytes]) -> dict[str, str]:
    """pax headers for xattrs by their full names."""
    return {
        f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
        for name, value in values.items()
    }


def mtime(text: str) -> dict[str, str]:
    return {"mtime": text}


# --- the classification on its own ------------------------------------------------


def only(member: Member) -> LayerEntry:
    """The one classified member of a one-member archive."""
    with tarfile.open(fileobj=layer(member)) as read:
        info = read.next()
        assert info is not None
        return classify_member(info, layer="layer0")


def test_a_hardlink_takes_nothing_from_its_header_but_its_target() -> None:
    entry = only(hardlink("h", "./etc//f", uid=2**40, gid=-1, pax_headers=mtime("1e30")))
    assert entry == classify_member(_plain_hardlink(), layer="layer0")
    assert entry.kind is EntryKind.HARDLINK and entry.link == ("etc", "f")


def _plain_hardlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("h")
    info.type, info.linkname = tarfile.LNKTYPE, "etc/f"
    return info


@pytest.mark.parametrize(
    ("seconds", "expected_ns"),
    [
        (0, 0),
        (-1, -NS),
        (-(2**31) + 1, (-(2**31) + 1) * NS),
        (-(2**31), MIN_MTIME_NS),
        (-(2**40), MIN_MTIME_NS),
        (15032385534, 15032385534 * NS),
        (15032385535, MAX_MTIME_NS),
        (2**40, MAX_MTIME_NS),
    ],
)
def test_mtimes_are_clamped_to_what_ext4_stores(seconds: int, expected_ns: int) -> None:
    # A nanosecond more than the whole second: kept inside, lost at the ends.
    wanted = expected_ns + 1 if expected_ns not in (MIN_MTIME_NS, MAX_MTIME_NS) else expected_ns
    assert clamp_mtime(seconds * NS + 1) == wanted


def test_symlink_modes_are_0777_and_type_bits_go() -> None:
    assert only(sym("s", "t", mode=0o600)).mode == 0o777
    assert only(reg("f", mode=0o104755)).mode == 0o4755


def test_markers_take_nothing_from_their_header() -> None:
    entry = only(reg("d/.wh.x", uid=-5, pax_headers=mtime("garbage")))
    assert entry.rule.action is Action.WHITEOUT and entry.kind is None


@pytest.mark.parametrize(
    ("name", "kind", "carried"),
    [
        ("user.mime", EntryKind.FILE, True),
        ("user.mime", EntryKind.DIR, True),
        ("user.mime", EntryKind.SYMLINK, False),
        ("user.mime", EntryKind.CHAR, False),
        ("trusted.x", EntryKind.SYMLINK, True),
        ("security.capability", EntryKind.FILE, True),
        ("trusted.overlay.opaque", EntryKind.DIR, False),
        ("trusted.overlay.redirect", EntryKind.FILE, False),
        ("trusted.overlayx", EntryKind.FILE, True),
        ("system.posix_acl_access", EntryKind.FILE, False),
        ("bogus.x", EntryKind.FILE, False),
    ],
)
def test_carried_xattrs(name: str, kind: EntryKind, carried: bool) -> None:
    assert carried_xattr(name, kind) is carried


# --- both consumers, one verdict --------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    members: tuple[Member, ...]
    refused: str = ""  # a fragment of the error both must give; "" when accepted


CASES = [
    Case("hardlink-with-absurd-owner", (reg("f"), hardlink("h", "f", uid=2**40, gid=-1))),
    Case("hardlink-with-absurd-mtime", (reg("f"), hardlink("h", "f", pax_headers=mtime("1e30")))),
    Case("hardlink-with-garbage-mtime", (reg("f"), hardlink("h", "f", pax_headers=mtime("x")))),
    Case("file-with-absurd-owner", (reg("f", uid=2**40),), "has the owner"),
    Case("file-with-absurd-mtime", (reg("f", pax_headers=mtime("1e30")),), "absurd mtime"),
    Case("mtime-before-1901", (reg("f", pax_headers=mtime("-4000000000.5")),)),
    Case("mtime-after-2116", (reg("f", pax_headers=mtime("5000000000")),), "absurd mtime"),
    Case("mtime-of-a-symlink", (sym("s", "t", pax_headers=mtime("-4000000000")),)),
    Case("device-4095-1048575", (device("d", tarfile.BLKTYPE, 4095, 2**20 - 1),)),
    Case("device-major-4096", (device("d", tarfile.CHRTYPE, 4096, 0),), "Linux lacks"),
    Case("device-minor-2-20", (device("d", tarfile.BLKTYPE, 1, 2**20),), "Linux lacks"),
    Case("char-device-0-0", (device("d", tarfile.CHRTYPE, 0, 0),), "0/0 character device"),
    Case("block-device-0-0", (device("d", tarfile.BLKTYPE, 0, 0),)),
    Case("fifo-ignores-device-numbers", (device("p", tarfile.FIFOTYPE, 4096, 2**21),)),
    Case(
        "overlay-xattrs-dropped",
        (
            dir_("d", pax_headers=named({"trusted.overlay.opaque": b"y", "user.a": b"1"})),
            reg("d/f", pax_headers=named({"trusted.overlay.redirect": b"/etc"})),
        ),
    ),
    Case("user-xattr-on-a-symlink-dropped", (sym("s", "t", pax_headers=xattrs(user_a=b"1")),)),
    Case("trusted-xattr-on-a-symlink", (sym("s", "t", pax_headers=xattrs(trusted_a=b"1")),)),
    Case("acl-dropped", (reg("f", pax_headers=xattrs(system_posix_acl_access=b"\x02")),)),
    Case("unknown-namespace-dropped", (reg("f", pax_headers=xattrs(bogus_x=b"1")),)),
    Case("bare-namespace", (reg("f", pax_headers=xattrs(user_=b"1")),), "Linux refuses"),
    Case(
        "xattr-name-too-long",
        (reg("f", pax_headers=xattrs(**{"user_" + "x" * 251: b"1"})),),
        "Linux refuses",
    ),
    Case("capability-v2", (reg("f", pax_headers=xattrs(security_capability=CAP_V2)),)),
    Case("capability-v3-root", (reg("f", pax_headers=xattrs(security_capability=CAP_V3_ROOT)),)),
    Case("capability-v3-1000", (reg("f", pax_headers=xattrs(security_capability=CAP_V3_1000)),)),
    Case(
        "capability-v1",
        (reg("f", pax_headers=xattrs(security_capability=CAP_V2[:12])),),
        "security.capability",
    ),
    Case(
        "capability-empty",
        (dir_("d", pax_headers=xattrs(security_capability=b"")),),
        "security.capability",
    ),
    Case(
        "capability-with-unknown-flags",
        (reg("f", pax_headers=xattrs(security_capability=b"\x01\x0f" + CAP_V2[2:])),),
        "security.capability",
    ),
]


def applied(root: Path, members: tuple[Member, ...]) -> BadImage | None:
    try:
        apply_layer(root, layer(*members), layer="layer0")
    except BadImage as error:
        return error
    return None


def indexed(members: tuple[Member, ...]) -> tuple[IndexEntry, ...] | BadImage:
    try:
        return scan_stream(layer(*members), layer="layer0")
    except BadImage as error:
        return error


def on_disk(root: Path, entry: IndexEntry) -> IndexEntry:
    """What apply made at ``entry.path``, in the index's terms."""
    path = root.joinpath(*entry.path)
    st = path.lstat()
    kinds = {stat.S_IFCHR: Kind.CHAR, stat.S_IFBLK: Kind.BLOCK}
    names = [n for n in os.listxattr(path, follow_symlinks=False) if n != "security.selinux"]
    return IndexEntry(
        path=entry.path,
        kind=entry.kind,
        mode=0o777 if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
        mtime_ns=st.st_mtime_ns,
        target=os.readlink(path) if stat.S_ISLNK(st.st_mode) else entry.target,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
        if stat.S_IFMT(st.st_mode) in kinds
        else (0, 0),
        xattrs=tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)),
        offset=entry.offset,
    )


@ROOT_ONLY
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_apply_and_index_give_one_verdict_and_one_value(tmp_path: Path, case: Case) -> None:
    root = tmp_path / "root"
    root.mkdir()
    refused_by_apply = applied(root, case.members)
    index = indexed(case.members)
    if case.refused:
        assert isinstance(refused_by_apply, BadImage) and isinstance(index, BadImage)
        assert case.refused in str(refused_by_apply)
        assert str(refused_by_apply) == str(index)
        assert not isinstance(refused_by_apply, UnsafeLayer)
        return
    assert refused_by_apply is None and not isinstance(index, BadImage)
    for entry in index:
        if entry.kind is Kind.HARDLINK:
            source = root.joinpath(*entry.target.split("/"))
            assert root.joinpath(*entry.path).lstat().st_ino == source.lstat().st_ino
            continue
        assert on_disk(root, entry) == replace(entry, xattrs=tuple(sorted(entry.xattrs)))
        assert not any(name.startswith("trusted.overlay.") for name, _ in entry.xattrs)


def test_the_capability_of_root_is_shown_as_version_2() -> None:
    (entry,) = scan_stream(
        layer(reg("f", pax_headers=xattrs(security_capability=CAP_V3_ROOT))), layer="l"
    )
    assert entry.xattrs == (("security.capability", CAP_V2),)
