"""A published index's entries are held to lazyfs's own scan: accepted iff a scan gives them.

Every entry of a scan of a realistic layer (whiteouts, an opaque directory,
links, devices, xattrs a scan drops or normalises, a sparse file, names
that are not UTF-8) passes ``entry_trouble``; entries a scan never gives
are refused in one line; and for entries drawn by Hypothesis, one is
accepted exactly when the tar member it names, written with its values
and scanned, gives it back.
"""

from __future__ import annotations

import dataclasses
import decimal
import io
import struct
import tarfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.index.artifact_entries import entry_trouble
from lazyfs.index.build import scan_stream
from lazyfs.index.formats import build_index
from lazyfs.index.model import IndexEntry, Kind, LayerIndex, dumps, loads
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from providers.layer_entry import MAX_ID, MIN_MTIME_NS

NS = 1_000_000_000
BASE = 1_600_000_000_123_456_789
# vfs_cap_data: revision 2 or 3 | effective, cap_net_bind_service, [rootid].
CAP_DATA = struct.pack("<IIII", 1 << 10, 0, 0, 0)
CAP_V2 = struct.pack("<I", 0x02000001) + CAP_DATA
CAP_V3_ROOT = struct.pack("<I", 0x03000001) + CAP_DATA + struct.pack("<I", 0)
CAP_V3_1000 = struct.pack("<I", 0x03000001) + CAP_DATA + struct.pack("<I", 1000)
_TYPES = {
    Kind.FILE: tarfile.REGTYPE,
    Kind.DIR: tarfile.DIRTYPE,
    Kind.SYMLINK: tarfile.SYMTYPE,
    Kind.HARDLINK: tarfile.LNKTYPE,
    Kind.CHAR: tarfile.CHRTYPE,
    Kind.BLOCK: tarfile.BLKTYPE,
    Kind.FIFO: tarfile.FIFOTYPE,
    Kind.WHITEOUT: tarfile.REGTYPE,
    Kind.OPAQUE: tarfile.REGTYPE,
}


def member(
    name: str,
    kind: Kind = Kind.FILE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime_ns: int = BASE,
    target: str = "",
    rdev: tuple[int, int] = (0, 0),
    xattrs: tuple[tuple[str, bytes], ...] = (),
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    """A tar member with exactly these values: the mtime to the nanosecond, xattrs in PAX."""
    info = tarfile.TarInfo(name)
    info.type = _TYPES[kind]
    info.mode, info.uid, info.gid = mode, uid, gid
    info.uname = info.gname = ""
    info.mtime = max(mtime_ns // NS, 0)
    info.linkname = target
    info.devmajor, info.devminor = rdev
    info.pax_headers = {"mtime": str(decimal.Decimal(mtime_ns).scaleb(-9)), **(pax or {})}
    for xattr, value in xattrs:
        # tarfile writes str values back as their original bytes.
        info.pax_headers[f"SCHILY.xattr.{xattr}"] = value.decode("utf-8", "surrogateescape")
    info.size = len(data)
    return info, data


def tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sparse(name: str, extents: int) -> tuple[tarfile.TarInfo, bytes]:
    """A GNU sparse file (PAX 0.1) of ``extents`` one-byte extents 8 KiB apart."""
    real = extents * 8192
    pax = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": name,
           "GNU.sparse.realsize": str(real), "GNU.sparse.size": str(real),
           "GNU.sparse.numblocks": str(extents),
           "GNU.sparse.map": ",".join(f"{n * 8192},1" for n in range(extents))}  # fmt: skip
    return member(f"GNUSparseFile.0/{name}", data=b"x" * extents, pax=pax)


LINK_XATTRS = (("user.x", b"1"), ("security.selinux", b"l\0"))
LAYER = [
    member(".", Kind.DIR, mode=0o755),
    member("etc", Kind.DIR, mode=0o755, mtime_ns=BASE + 1),
    member(
        "etc/passwd",
        data=b"root:x:0:0::/root:/bin/sh\n",
        xattrs=(
            ("user.origin", b"layer"),
            ("security.capability", CAP_V3_ROOT),  # kept as the version 2 the kernel shows
            ("trusted.overlay.opaque", b"y"),  # dropped: overlayfs' own
            ("system.posix_acl_access", b"\x02\x00\x00\x00"),  # dropped: the kernel's
        ),
    ),
    member("etc/tool", data=b"tool\n", mode=0o4755, xattrs=(("security.capability", CAP_V3_1000),)),
    # A symlink's mode is 0777; user.* xattrs are dropped from it.
    member("etc/link", Kind.SYMLINK, mode=0o755, target="passwd", xattrs=LINK_XATTRS),
    member("etc/hard", Kind.HARDLINK, mode=0o600, uid=5, target="etc/passwd"),  # owner: none
    member("dev", Kind.DIR, mode=0o755),
    member("dev/null", Kind.CHAR, mode=0o666, rdev=(1, 3)),
    member("dev/sda", Kind.BLOCK, mode=0o660, gid=6, rdev=(8, 0)),
    member("dev/fifo", Kind.FIFO, mode=0o600),
    member("old/.wh.gone"),
    member("opq", Kind.DIR, mode=0o750, uid=MAX_ID, gid=1000),
    member("opq/.wh..wh..opq"),
    member(".wh..wh.plnk/1234.5678", data=b"aufs"),  # bookkeeping: no entry
    member("caf\udce9", data=b"latin-1 name"),  # not UTF-8: its byte escaped
    member("caf\u00e9", data=b"UTF-8 name"),
    member("old/epoch", mtime_ns=-3_000_000_000 * NS),  # before ext4's: clamped
    member("old/first", mtime_ns=MIN_MTIME_NS + NS + 7),
    sparse("db", 300),
]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> LayerIndex:
    tmp = tmp_path_factory.mktemp("scan")
    blob = tmp / "layer.tar"
    blob.write_bytes(tar(*LAYER))
    return build_index(digest_bytes(blob.read_bytes()), blob, tmp / "scratch")


def entry(index: LayerIndex, *path: str) -> IndexEntry:
    return next(e for e in index.entries if e.path == path and e.kind is not Kind.WHITEOUT)


def test_every_entry_of_a_scan_is_one_a_scan_gives(scanned: LayerIndex) -> None:
    # The layer holds what the rules drop and normalise: the scan did so.
    passwd = entry(scanned, "etc", "passwd")
    assert passwd.xattrs == (("user.origin", b"layer"), ("security.capability", CAP_V2))
    assert entry(scanned, "etc", "link").mode == 0o777
    assert entry(scanned, "etc", "link").xattrs == (("security.selinux", b"l\0"),)
    assert entry(scanned, "etc", "hard").uid == 0
    assert entry(scanned, "old", "epoch").mtime_ns == MIN_MTIME_NS
    assert entry(scanned, "db").extents is not None
    assert {e.kind for e in scanned.entries} == set(Kind)
    assert not any(e.path[:1] == (".wh..wh.plnk",) for e in scanned.entries)
    assert entry_trouble(scanned) is None
    for one in scanned.entries:
        assert entry_trouble(dataclasses.replace(scanned, entries=(one,))) is None, one
    assert entry_trouble(loads(dumps(scanned))) is None


def _refusal(index: LayerIndex, where: tuple[str, ...], change: dict[str, Any]) -> str | None:
    entries = list(index.entries)
    number = next(i for i, e in enumerate(entries) if e.path == where)
    entries[number] = dataclasses.replace(entries[number], **change)
    return entry_trouble(dataclasses.replace(index, entries=tuple(entries)))


FILE = ("etc", "passwd")
CAPABILITY = (("security.capability", CAP_V2),)


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        # What a scan refuses, drops or normalises, which an index could carry.
        (FILE, {"path": ("a", ".wh.b")}, "is a file whose name a scan takes for a whiteout"),
        (FILE, {"path": ("a", ".wh..wh..opq")}, "a scan takes for an opaque marker"),
        (FILE, {"path": (".wh..wh.plnk", "x")}, "a scan takes for AUFS bookkeeping"),
        (FILE, {"path": (".wh.a", "x")}, "has the whiteout '.wh.a' as a parent"),
        (FILE, {"xattrs": (("trusted.overlay.opaque", b"y"),)}, "is a file whose xattrs a scan"),
        (FILE, {"xattrs": (("system.posix_acl_access", b"\x02"),)}, "whose xattrs a scan never"),
        (FILE, {"xattrs": (("security.capability", b"\0" * 20),)}, "security.capability the"),
        (FILE, {"xattrs": (("security.capability", CAP_V3_ROOT),)}, "whose xattrs a scan"),
        (FILE, {"xattrs": (("user.a", b"1"), ("user.a", b"1"))}, "whose xattrs a scan never"),
        (FILE, {"mtime_ns": MIN_MTIME_NS + 7}, "is a file whose mtime a scan never gives"),
        (FILE, {"path": ("\udcc3\udca9",)}, "escaped bytes that a tar reader decodes as UTF-8"),
        (FILE, {"extents": ((0, 1, 0), (0, 1, 1))}, "sparse extents that overlap"),
        (FILE, {"extents": ((0, 1, 5),)}, "has sparse extents a scan never gives"),
        (FILE, {"extents": ((0, 0, 0),)}, "has sparse extents a scan never gives"),
        (("etc", "link"), {"mode": 0o755}, "is a symlink whose mode a scan never gives"),
        (("etc", "link"), {"xattrs": (("user.x", b"1"),)}, "is a symlink whose xattrs"),
        (("etc", "hard"), {"uid": 5}, "is a hardlink whose uid a scan never gives"),
        (("etc", "hard"), {"mode": 0o644, "xattrs": CAPABILITY}, "whose mode, xattrs a scan"),
        (("etc", "hard"), {"target": "etc//passwd"}, "is a hardlink whose link target"),
        (("etc", "hard"), {"target": "old/.wh.gone"}, "is a hardlink to the whiteout"),
        (("old", "gone"), {"mode": 0o644}, "is a whiteout whose mode a scan never gives"),
        (("old", "gone"), {"path": (".wh..opq",)}, "a scan takes for an opaque marker"),
        (("old", "gone"), {"path": ()}, "is a whiteout of the root"),
        (("opq",), {"kind": Kind.OPAQUE, "path": (".wh..wh.x",)}, "takes for AUFS bookkeeping"),
        (("dev", "fifo"), {"size": 1}, "is a fifo whose size a scan never gives"),
    ],
)
def test_entries_a_scan_never_gives_are_refused(
    scanned: LayerIndex, path: tuple[str, ...], change: dict[str, Any], message: str
) -> None:
    why = _refusal(scanned, path, change)
    assert why is not None and message in why, why
    assert "\n" not in why


# -- the rule itself, on entries Hypothesis draws -----------------------------------

# For each kind an entry a scan gives, and for each field values near and far from it.
PLAUSIBLE = {
    Kind.FILE: IndexEntry(("a",), Kind.FILE, 0o644, size=3, mtime_ns=BASE, offset=1536),
    Kind.DIR: IndexEntry(("a",), Kind.DIR, 0o755, mtime_ns=BASE),
    Kind.SYMLINK: IndexEntry(("a",), Kind.SYMLINK, 0o777, mtime_ns=BASE, target="b/a"),
    Kind.HARDLINK: IndexEntry(("a",), Kind.HARDLINK, target="b/a"),
    Kind.CHAR: IndexEntry(("a",), Kind.CHAR, 0o666, mtime_ns=BASE, rdev=(1, 3)),
    Kind.BLOCK: IndexEntry(("a",), Kind.BLOCK, 0o660, mtime_ns=BASE, rdev=(8, 0)),
    Kind.FIFO: IndexEntry(("a",), Kind.FIFO, 0o600, mtime_ns=BASE),
    Kind.WHITEOUT: IndexEntry(("a",), Kind.WHITEOUT),
    Kind.OPAQUE: IndexEntry(("a",), Kind.OPAQUE),
}
COMPONENTS = ["a", "b", "caf\u00e9", "caf\udce9", "\udcc3\udca9", "\ud800", ".", "..", "",
              ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", ".wh..opq", "x/y", "a\0"]  # fmt: skip
# No xattr name with an escaped byte (U+DC80-U+DCFF): a tar may hold one and a scan give it,
# but tarfile writes pax keywords as strict UTF-8, so the member below could not be written.
XATTR_NAMES = ["user.a", "security.capability", "trusted.overlay.opaque", "user",
               "system.posix_acl_access", "security.selinux", "user.caf\u00e9", "user.\ud800",
               "user.\udcc3\udca9", "trusted.x"]  # fmt: skip
TARGETS = ["", "a", "b/a", "../x", "/abs", "a//b", ".wh.a", "a\0", "caf\udce9", "\udcc3\udca9",
           "\ud800"]  # fmt: skip
XATTR_VALUES = [b"1", b"", CAP_V2, CAP_V3_ROOT, CAP_V3_1000, b"\0" * 20]
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "path": st.lists(st.sampled_from(COMPONENTS), max_size=3).map(tuple),
    "mode": st.sampled_from([0o644, 0o777, 0, 0o4755, 0o100644, -1]),
    "uid": st.sampled_from([0, 1000, MAX_ID, MAX_ID + 1, -1]),
    "gid": st.sampled_from([0, 1000, MAX_ID + 1]),
    "size": st.sampled_from([0, 3]),
    "mtime_ns": st.sampled_from([BASE, 0, -1, MIN_MTIME_NS, MIN_MTIME_NS + 1, 1 << 62]),
    "target": st.sampled_from(TARGETS),
    "rdev": st.sampled_from([(0, 0), (1, 3), (4096, 0), (0, 1 << 20)]),
    "xattrs": st.lists(
        st.tuples(st.sampled_from(XATTR_NAMES), st.sampled_from(XATTR_VALUES)), max_size=3
    ).map(tuple),
    "offset": st.sampled_from([0, 1536]),
}
TAR_SIZE = 1 << 20


@st.composite
def entries(draw: st.DrawFn) -> IndexEntry:
    """An entry a scan gives, of any kind, with up to three of its fields drawn anew."""
    entry = PLAUSIBLE[draw(st.sampled_from(list(Kind)))]
    changed = draw(st.sets(st.sampled_from(sorted(VALUES)), max_size=3))
    return dataclasses.replace(entry, **{field: draw(VALUES[field]) for field in sorted(changed)})


def _member_name(entry: IndexEntry) -> str | None:
    path = entry.path
    if entry.kind is Kind.WHITEOUT:
        return "/".join((*path[:-1], ".wh." + path[-1])) if path else None
    if entry.kind is Kind.OPAQUE:
        return "/".join((*path, ".wh..wh..opq"))
    return "/".join(path) or "."


def _scan_of_member(entry: IndexEntry) -> IndexEntry | None:
    """What a scan gives of the one member the entry names, with its values; None for nothing."""
    name = _member_name(entry)
    if name is None:
        return None
    data = b"x" * entry.size if entry.kind is Kind.FILE else b""
    try:
        layer = tar(member(name, entry.kind, data=data, mode=entry.mode, uid=entry.uid,
                           gid=entry.gid, mtime_ns=entry.mtime_ns, target=entry.target,
                           rdev=entry.rdev, xattrs=entry.xattrs))  # fmt: skip
    except UnicodeEncodeError:
        # A lone surrogate (or, in an xattr name, an escaped byte: none is drawn): no bytes
        # decode to it, so no tar holds it.
        return None
    try:
        found = scan_stream(io.BytesIO(layer), layer="sha256:l")
    except BadImage:
        return None
    return found[0] if len(found) == 1 else None


@settings(max_examples=400, deadline=None)
@given(entry=entries())
def test_an_entry_is_accepted_iff_a_scan_of_its_member_gives_it(entry: IndexEntry) -> None:
    index = LayerIndex(Digest("sha256:" + "0" * 64), "none", TAR_SIZE, (entry,))
    why = entry_trouble(index)
    assert why is None or "\n" not in why
    got = _scan_of_member(entry)
    if got is not None and entry.kind is Kind.FILE:
        got = dataclasses.replace(got, offset=entry.offset)  # where, only a tar says
    assert (why is None) == (got == entry), (why, got)


@pytest.mark.parametrize(
    "change",
    [
        {"path": ("a\ud800",) * 3},
        {"path": ("a", "\udfff")},
        {"kind": Kind.SYMLINK, "target": "x\ud800"},
        {"kind": Kind.HARDLINK, "target": "a/\ud800"},
        {"xattrs": (("user.\ud800", b"x"),)},
        {"kind": Kind.WHITEOUT, "path": ("\ud800",)},
        {"kind": Kind.FILE, "target": "\ud800"},
    ],
)
def test_a_lone_surrogate_anywhere_is_one_line(change: dict[str, Any]) -> None:
    # A scan's strings hold surrogates only for bytes that are not UTF-8 (U+DC80-U+DCFF).
    entry = dataclasses.replace(IndexEntry(("a",), Kind.FILE, 0o644), **change)
    why = entry_trouble(LayerIndex(Digest("sha256:" + "0" * 64), "none", 0, (entry,)))
    assert why is not None and "\n" not in why and "a character no filesystem stores" in why


def test_a_long_reason_is_cut() -> None:
    xattr = "user" + "\0" * 5000  # the scan's reason quotes the name whole
    entry = IndexEntry(("a",), Kind.FILE, 0o644, xattrs=((xattr, b""),))
    why = entry_trouble(LayerIndex(Digest("sha256:" + "0" * 64), "none", 0, (entry,)))
    assert why is not None and "xattr name" in why and len(why) < 400
