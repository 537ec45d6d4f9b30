"""The images every backend must turn into exactly what ``umoci unpack`` gives.

Each case is a list of layers (``tests.support.images.Entry``), bottom first.  Every
directory has a header in some layer: one that never has is made by the
extractor at its own time, which no two extractors agree on.  ``rich`` is
``tests.support.images.RICH_LAYERS``; the others add what it lacks.
"""

from __future__ import annotations

from collections.abc import Mapping

from tests.support.images import BASE_MTIME_NS, RICH_LAYERS, Entry, opaque, whiteout


def _t(n: int) -> int:
    return BASE_MTIME_NS + n * 3_600_000_000_007


def _dir(
    path: str,
    n: int,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid, mtime_ns=_t(n), xattrs=xattrs or {})


def _file(
    path: str,
    n: int,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    return Entry(
        path,
        data=data or path.encode() + b"\n",
        mode=mode,
        uid=uid,
        gid=gid,
        mtime_ns=_t(n),
        xattrs=xattrs or {},
    )


# Four layers of type changes, whiteouts and opaque directories in the middle,
# and directories later layers write into without a header of their own.
TYPES_LAYERS: list[list[Entry]] = [
    [
        Entry("s2d", "symlink", target="elsewhere", mtime_ns=_t(1)),
        _dir("d2s", 2),
        _file("d2s/child", 3),
        _file("f2d", 4),
        _dir("wd", 5),
        _file("wd/old", 6),
        _dir("wo", 7, 0o711),
        _file("wo/old", 8),
        _dir("op", 9),
        _file("op/a", 10),
        _dir("op/sub", 11),
        _file("op/sub/b", 12),
        _dir("impl", 13, 0o750, 5, 6, xattrs={"user.kept": b"lower"}),
        _dir("n1", 14, 0o700, 7, 7),
        _dir("n1/n2", 15, 0o2755, 8, 9),
        _file("gone-in-2", 16),
        _file("kept", 17, mode=0o4711),
        _dir("dev", 18),
        Entry("dev/zero", "char", mode=0o666, rdev=(1, 5), mtime_ns=_t(19)),
        Entry("dev/loop0", "block", mode=0o660, gid=6, rdev=(7, 0), mtime_ns=_t(20)),
    ],
    [  # middle: the type changes, a whiteout + directory in one layer, an opaque dir
        _dir("s2d", 21, 0o751),
        _file("s2d/in", 22),
        Entry("d2s", "symlink", target="/op", mtime_ns=_t(23)),
        whiteout("wd"),
        whiteout("wo"),
        _dir("wo", 24, 0o755),
        _file("wo/new", 25),
        _dir("op", 26, 0o750, 1, 2),
        opaque("op"),
        _file("op/mid", 27),
        _file("impl/file", 28),
        whiteout("gone-in-2"),
    ],
    [  # above the middle: recreate, and write into directories without headers
        _dir("f2d", 29, 0o700),
        _file("f2d/child", 30, mode=0o600, uid=1000, gid=1000),
        _dir("wd", 31, 0o770),
        _file("wd/new", 32),
        _file("op/top", 33),
        _file("n1/n2/deep", 34, xattrs={"user.deep": b"\x00\xff"}),
        _file("shared", 35, data=b"one inode\n", mode=0o2755),
        Entry("also-shared", "hardlink", target="shared"),
    ],
    [  # top: small, so most of the tree is lower
        _file("kept", 36, mode=0o4755, xattrs={"user.top": b"yes"}),
        Entry("dev/fifo", "fifo", mode=0o620, mtime_ns=_t(37)),
    ],
]

# One layer, for the bind backend too: everything a single layer can hold.
SINGLE_LAYER: list[list[Entry]] = [
    [
        _dir("bin", 40),
        _file("bin/tool", 41, b"#!/bin/sh\necho hi\n", mode=0o4755),
        _dir("etc", 42),
        _file("etc/hosts", 43, b"127.0.0.1 localhost\n", uid=1000, gid=1000),
        Entry("etc/link", "symlink", target="hosts", mtime_ns=_t(44)),
        Entry("etc/hard", "hardlink", target="etc/hosts"),
        _file("etc/labelled", 45, xattrs={"user.label": b"one"}),
        _dir("dev", 46),
        Entry("dev/null", "char", mode=0o666, rdev=(1, 3), mtime_ns=_t(47)),
        _dir("tmp", 48, 0o1777),
    ]
]

FORGED = {"trusted.overlay.opaque": b"y", "trusted.overlay.redirect": b"/etc", "user.ok": b"1"}

# Markers where they hide nothing: whiteouts and opaque markers in
# directories no layer has (no phantom directory may appear), whiteouts in a
# directory only their own layer has; markers reached through a symlink their
# layer made; and xattrs overlayfs would obey.
MARKERS_LAYERS: list[list[Entry]] = [
    [
        _dir("etc", 50),
        _file("etc/a", 51),
        _dir("etc/sub", 52, 0o750),
        _file("etc/sub/b", 53),
        _dir("x", 54),
        _file("x/f", 55),
        _file("x/g", 56),
    ],
    [
        whiteout("nowhere/f"),
        whiteout("no/where/f"),
        opaque("gone"),
        _dir("own", 58, 0o711),
        whiteout("own/nothing"),
        _file("own/file", 59),
        Entry("s", "symlink", target="x", mtime_ns=_t(60)),
        whiteout("s/f"),
        _dir("etc/sub", 61, 0o755, xattrs=FORGED),
        _file("etc/forged", 62, xattrs=FORGED),
    ],
    [
        _dir("new", 63),
        _file("new/file", 64),
        whiteout("new/nothing"),
        whiteout("etc/sub/gone/deeper"),
    ],
]

# An opaque root hides every lower layer, whatever overlayfs does with the
# marker of a layer's root directory.
OPAQUE_ROOT_LAYERS: list[list[Entry]] = [
    [_dir("etc", 80), _file("etc/a", 81), _dir("x", 82), _file("x/f", 83), _file("y", 84)],
    [_file("between", 85)],
    [opaque("."), _dir("etc", 86, 0o700), _file("etc/new", 87), _file("z", 88)],
]

# One layer twice, as images built from an empty step or a repeated one hold:
# overlayfs takes no directory twice in one mount.
REPEATED_LAYERS: list[list[Entry]] = [
    [_dir("d", 70), _file("d/f", 71)],
    [_file("d/g", 72), whiteout("d/f")],
    [_dir("d", 70), _file("d/f", 71)],
]

# The root's own attributes come from the topmost layer with a "./" entry,
# not from the top layer (the tree comparison leaves the root out:
# ``root_header`` says what it must be): a header in the bottom layer only,
# where overlay once gave the top layer's own 0755 root:root root; and a
# header over another, under a layer without one.  Both spellings, "." and "./".
ROOT_ATTRS_LAYERS: list[list[Entry]] = [
    [_dir(".", 90, 0o1777, 1000, 1000), _file("f", 91)],
    [_file("g", 92)],
]
ROOT_ATTRS_MIDDLE_LAYERS: list[list[Entry]] = [
    [_dir("./", 93, 0o700, 5, 6), _file("f", 94)],
    [_dir("./", 95, 0o2775, 1000, 1001, xattrs={"user.root": b"middle"}), _file("g", 96)],
    [_file("h", 97)],
]

CASES: dict[str, list[list[Entry]]] = {
    "rich": RICH_LAYERS,
    "types": TYPES_LAYERS,
    "single": SINGLE_LAYER,
    "markers": MARKERS_LAYERS,
    "opaque-root": OPAQUE_ROOT_LAYERS,
    "repeated": REPEATED_LAYERS,
    "root-attrs": ROOT_ATTRS_LAYERS,
    "root-attrs-middle": ROOT_ATTRS_MIDDLE_LAYERS,
}


def root_header(case: str) -> Entry | None:
    """The topmost "./" entry of ``case``'s layers: what its root must look like."""
    for entries in reversed(CASES[case]):
        for entry in reversed(entries):
            if entry.path.strip("/") in ("", "."):
                return entry
    return None
