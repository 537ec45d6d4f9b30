"""Hostile and mutated layers: copy, overlay and fuse give one verdict and one tree.

Hypothesis draws images of one to three layers in two ways:

- structured: entries over a tiny alphabet of names, so that layers collide
  and markers land in odd places (whiteouts and opaque markers in missing
  directories, under files, at the root, through symlinks; AUFS names;
  ``..``, absolute and over-long names), of every tar type, with owners,
  mtimes, modes, device numbers, link targets and xattrs now sane, now
  absurd (``trusted.overlay.*``, malformed capabilities, unknown
  namespaces, hardlinks to missing, directory or self targets);
- mutated: such an image with bytes of one layer overwritten, in its
  headers mostly, the header checksum repaired or not.

Each image goes, in-process, to the copy backend (``backends.apply``), to
the merged FUSE tree built from the layers' indexes, and to the overlay
backend, mounted read-only (``tests.support.layer_trees``).  All must accept it with
the same tree (``tests.support.tree``'s digest: kinds, modes, owners, contents,
targets, devices, mtimes, xattrs, hardlinks) or all refuse it as a bad
image, with one line; nothing may end in another exception.  The overlay
backend may also answer that it cannot show a union that the others build
(a layer writing or marking through a lower non-directory, a hardlink to
another layer's file): a ``BackendError`` that says so, never a wrong tree.
``FOUND`` holds images that once failed so, asked again on every run.  400
drawn images take well under a minute.  Needs root and overlayfs.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backends.overlay import overlay_usable
from providers.errors import BackendError, BadImage
from tests.support.layer_trees import Outcome, copy_tree, fuse_tree, outcome, overlay_tree
from tests.support.tree import diff_trees

pytestmark = pytest.mark.integration
Test = TypeVar("Test", bound=Callable[..., None])

# What the overlay backend may answer where the others build the union.
OVERLAY_CANNOT = ("overlay cannot show that union", "the overlay backend cannot make it")

NAMES = ("a", "b", "c")
# Names that are odd in themselves: refused, or AUFS bookkeeping.
ODD_NAMES = ("../a", "/a", "a/../b", ".wh.", ".wh..", ".wh.a/b", ".wh..wh.plnk/a", "x" * 256)
KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "whiteout": tarfile.REGTYPE,
    "opaque": tarfile.REGTYPE,
}
# Files and directories most, so that most images are accepted and trees compared.
LINKS = ("symlink", "hardlink")
WEIGHTED_KINDS = [*KINDS, "file", "file", "file", "dir", "dir", "dir", "whiteout", "opaque"]
CAP = bytes.fromhex("0100000200040000000000000000000000000000")
CAP_V3_ROOT = bytes.fromhex("010000030004000000000000000000000000000000000000")
# Odd values, one field at a time.
ODD_IDS = (2**32 - 2, 2**32 - 1, -1, 2**40)
ODD_MTIMES = ("-4000000000.5", "-1.5", "1e30", "nan", "x")
ODD_MODES = (0o4755, 0o7777, 0o170777)
ODD_DEVICES = ((0, 0), (4095, 2**20 - 1), (4096, 0), (0, 2**20))
ODD_TARGETS = ("", "/", "missing", "a" * 5000, "/a", "../a", "a/../..")
ODD_XATTRS = (
    ("trusted.overlay.opaque", b"y"),
    ("trusted.overlay.redirect", b"/etc"),
    ("security.capability", CAP),
    ("security.capability", CAP_V3_ROOT),
    ("security.capability", b"\x01"),
    ("system.posix_acl_access", b"\x02"),
    ("bogus.x", b"1"),
    ("user.", b"1"),
    ("trusted.x", b"1"),
)
ODD_FIELDS = ("owner", "mtime", "mode", "device", "target", "type", "name", "xattr")


@dataclass(frozen=True)
class Member:
    """One tar member as drawn, readable in a failing example."""

    name: str
    type: bytes
    mode: int = 0o644
    owner: int = 0
    device: tuple[int, int] = (1, 3)
    target: str = ""
    pax: tuple[tuple[str, str], ...] = ()
    data: bytes = b""

    def encode(self) -> bytes:
        """Header and data, in pax form; GNU's where pax cannot hold a number."""
        info = tarfile.TarInfo(self.name)
        info.type, info.mode = self.type, self.mode
        info.uid = info.gid = self.owner
        info.uname = info.gname = ""
        info.mtime = 1_600_000_000
        info.devmajor, info.devminor = self.device
        info.linkname = self.target
        info.pax_headers = dict(self.pax)
        info.size = len(self.data)
        try:
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        except ValueError:
            info.pax_headers = {}
            header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        return header + self.data + b"\0" * (-len(self.data) % tarfile.BLOCKSIZE)


@dataclass(frozen=True)
class Mutation:
    """Bytes of one layer overwritten: (offset, byte) pairs; checksums repaired or not."""

    layer: int
    changes: tuple[tuple[int, int], ...]
    repaired: bool


@dataclass(frozen=True)
class Image:
    layers: tuple[tuple[Member, ...], ...]
    mutation: Mutation | None = None

    def tars(self) -> list[bytes]:
        tars = [
            b"".join(m.encode() for m in layer) + b"\0" * (2 * tarfile.BLOCKSIZE)
            for layer in self.layers
        ]
        if self.mutation is not None:
            data = bytearray(tars[self.mutation.layer])
            for offset, value in self.mutation.changes:
                if offset < len(data):
                    data[offset] = value
            if self.mutation.repaired:
                repair_checksums(data)
            tars[self.mutation.layer] = bytes(data)
        return tars


@st.composite
def members(draw: st.DrawFn, kinds: dict[str, str]) -> Member:
    """One member, often at or below a path drawn before; sane but for one odd field now and then.

    ``kinds`` holds the paths written so far and the kind written last:
    parents are mostly directories, link targets paths of the image.
    """
    kind = draw(st.sampled_from(WEIGHTED_KINDS))
    dirs = [path for path, written in kinds.items() if written == "dir"]
    where = draw(st.integers(0, 7))
    if kind == "opaque" and draw(st.integers(0, 3)) == 0:
        path = ["a"]  # the root's marker, which hides every lower layer
    elif where < 4 and dirs:
        path = [*draw(st.sampled_from(dirs)).split("/"), draw(st.sampled_from(NAMES))]
    elif where == 4 and kinds:  # below anything: a file, a symlink
        path = [*draw(st.sampled_from(sorted(kinds))).split("/"), draw(st.sampled_from(NAMES))]
    elif where == 5:  # parents nobody wrote; or the root, for a header or a marker
        shallowest = 0 if kind in ("dir", "opaque") else 2
        path = [draw(st.sampled_from(NAMES)) for _ in range(draw(st.integers(shallowest, 3)))]
    else:
        path = [draw(st.sampled_from(NAMES))]
    if kind == "whiteout":
        name = "/".join([*path[:-1], ".wh." + (path[-1] if path else "a")])
    elif kind == "opaque":
        name = "/".join([*path[:-1], ".wh..wh..opq"])
    else:
        name = "/".join(path) or "."
        if path:
            kinds[name] = kind
    member = Member(
        name,
        KINDS[kind],
        mode=draw(st.sampled_from([0o644, 0o755, 0o600])),
        device=draw(st.sampled_from([(1, 3), (7, 0)])),
        target=draw(st.sampled_from(sorted(kinds))) if kinds and kind in LINKS else "",
        data=draw(st.sampled_from([b"", b"x", b"hello\n"])) if kind == "file" else b"",
    )
    pax = {"mtime": draw(st.sampled_from(["1600000000.123456789", "1500000000.5"]))}
    if draw(st.integers(0, 3)) == 0:
        pax["SCHILY.xattr.user.a"] = draw(st.sampled_from(["1", "two"]))
    if draw(st.integers(0, 7)) == 0:
        key, raw = draw(st.sampled_from(ODD_XATTRS))
        pax[f"SCHILY.xattr.{key}"] = raw.decode("utf-8", "surrogateescape")
    if kind == "hardlink" and draw(st.booleans()):
        # A link shares its target's inode: what its header says of it is ignored.
        member = replace(member, owner=draw(st.sampled_from(ODD_IDS)))
        pax["mtime"] = draw(st.sampled_from(ODD_MTIMES))
    if draw(st.integers(0, 4)) == 0:
        field = draw(st.sampled_from(ODD_FIELDS))
        if field == "owner":
            member = replace(member, owner=draw(st.sampled_from(ODD_IDS)))
        elif field == "mtime":
            pax["mtime"] = draw(st.sampled_from(ODD_MTIMES))
        elif field == "mode":
            member = replace(member, mode=draw(st.sampled_from(ODD_MODES)))
        elif field == "device":
            member = replace(member, device=draw(st.sampled_from(ODD_DEVICES)))
        elif field == "target":
            member = replace(member, target=draw(st.sampled_from(ODD_TARGETS)))
        elif field == "type":
            member = replace(member, type=b"V")
        elif field == "name":
            odd = draw(st.sampled_from(ODD_NAMES))
            member = replace(member, name=f"{name}/{odd}" if draw(st.booleans()) else odd)
        else:
            key, raw = draw(st.sampled_from(ODD_XATTRS))
            pax[f"SCHILY.xattr.{key}"] = raw.decode("utf-8", "surrogateescape")
    return replace(member, pax=tuple(pax.items()))


@st.composite
def structured(draw: st.DrawFn) -> Image:
    """One to three layers of up to eight members, names shared between them."""
    kinds: dict[str, str] = {}
    count = draw(st.integers(1, 3))
    return Image(tuple(tuple(draw(st.lists(members(kinds), max_size=8))) for _ in range(count)))


def repair_checksums(data: bytearray) -> None:
    for start in range(0, len(data) - tarfile.BLOCKSIZE + 1, tarfile.BLOCKSIZE):
        block = data[start : start + tarfile.BLOCKSIZE]
        if block[257:262] == b"ustar":
            block[148:156] = b" " * 8
            block[148:156] = b"%06o\0 " % sum(block)
            data[start : start + tarfile.BLOCKSIZE] = block


@st.composite
def mutated(draw: st.DrawFn) -> Image:
    image = draw(structured())
    which = draw(st.integers(0, len(image.layers) - 1))
    size = len(image.tars()[which])
    changes = []
    for _ in range(draw(st.integers(1, 4))):
        # Mostly the header fields: name, mode, ids, size, mtime, type, link, devices.
        offset = draw(st.one_of(st.integers(0, 345), st.integers(0, tarfile.BLOCKSIZE - 1)))
        block = draw(st.integers(0, max(0, size // tarfile.BLOCKSIZE - 1)))
        value = draw(st.sampled_from([0, 0x20, 0x30, 0x37, 0x2F, 0x2E, 0xFF]))
        changes.append((block * tarfile.BLOCKSIZE + offset, value))
    return replace(image, mutation=Mutation(which, tuple(changes), draw(st.booleans())))


images = st.one_of(structured(), structured(), structured(), mutated())


def verdict(found: Outcome) -> str:
    return "accepted" if found.accepted else "refused"


def check_one_line(found: Outcome) -> None:
    if not found.accepted:
        assert found.error is not None and issubclass(found.error, BadImage), found
        assert "\n" not in found.message


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("owners, devices and overlay layers need root")
    base = Path(tempfile.mkdtemp(prefix="lazyfs-verdicts-"))
    try:
        if not overlay_usable(base):
            pytest.skip("overlayfs is not usable here")
        yield base
    finally:
        shutil.rmtree(base)


def _m(name: str, kind: str = "file", **fields: object) -> Member:
    return Member(name, KINDS[kind], **fields)  # type: ignore[arg-type]


def _image(*layers: tuple[Member, ...]) -> Image:
    return Image(tuple(layers))


FORGED = (("SCHILY.xattr.trusted.overlay.opaque", "y"), ("SCHILY.xattr.user.a", "1"))
# What the fuzzer found on layers once, kept so that every run asks again.
FOUND = {
    "overlayfs-xattrs": _image((_m("d", "dir", pax=FORGED), _m("d/f"), _m("d/g", pax=FORGED))),
    "whiteout-in-a-missing-directory": _image((_m("x", "dir"),), (_m("a/b/.wh.c"),)),
    "opaque-marker-in-a-missing-directory": _image((_m("x", "dir"),), (_m("a/.wh..wh..opq"),)),
    "whiteout-in-its-own-directory": _image((_m("a", "dir"), _m("a/a"), _m("a/.wh.b"))),
    "opaque-root": _image((_m("x", "dir"), _m("x/f"), _m("y")), (_m(".wh..wh..opq"), _m("z"))),
    "one-layer-twice": _image((_m("y"),), (_m("y"),)),
    "hardlink-with-an-absurd-owner": _image(
        (_m("f"),), (_m("h", "hardlink", target="f", owner=2**40),)
    ),
    "hardlink-with-an-absurd-mtime": _image(
        (_m("f"), _m("h", "hardlink", target="f", pax=(("mtime", "1e30"),)))
    ),
    "hardlink-to-nothing": _image((_m("h", "hardlink", target="missing"),)),
    "device-mknod-refuses": _image((_m("d", "char", device=(4096, 0)),)),
    "marker-through-a-symlink-of-its-layer": _image(
        (_m("d", "dir"), _m("d/x"), _m("d/y")), (_m("s", "symlink", target="d"), _m("s/.wh.x"))
    ),
    "a-marker-made-directory-under-a-later-opaque-root": _image(
        (_m("a", "dir"),), (_m("a/.wh.b"), _m(".wh..wh..opq"), _m("a/a", "symlink", target="b"))
    ),
    "whiteout-of-a-directory-made-for-markers": _image(
        (_m("a", "dir"), _m("a/a")), (_m("a/.wh.a"), _m(".wh.a"))
    ),
    "a-directory-made-after-an-opaque-root": _image(
        (_m("a", "dir"), _m("a/a")), (_m(".wh..wh..opq"), _m("a/a", "dir"), _m(".wh..wh..opq"))
    ),
    "a-marker-through-a-lower-symlink-loop-then-an-opaque-root": _image(
        (_m("a", "symlink", target="a"),), (_m("b"), _m("a/.wh.a"), _m(".wh..wh..opq"))
    ),
    "a-marker-made-directory-an-opaque-root-cut-off": _image(
        (_m("a", "dir"), _m("a/a")),
        (_m("a/.wh..wh..opq"), _m(".wh..wh..opq"), _m("a/a"), _m(".wh..wh..opq")),
    ),
    "directory-over-the-layers-own-file": _image(
        (_m("a", "dir"), _m("a/a", "dir")), (_m("a"), _m("a", "dir"))
    ),
    # From a, "a/../.." is the root: the missing a/a is left by "..", never made.
    "a-symlink-through-a-missing-directory-and-back-out": _image(
        (_m("a/b", "symlink", target="a/../.."), _m("a/b/a", "dir", pax=FORGED))
    ),
    # Alone, the upper layer finds no x and goes lexically to y; in the
    # union x leads to d/e and "x/.." to d.
    "a-way-out-of-a-missing-directory-that-a-lower-symlink-holds": _image(
        (_m("d/e", "dir"), _m("x", "symlink", target="d/e")),
        (_m("l", "symlink", target="x/../y"), _m("l/f")),
    ),
    "missing-directories-left-by-dotdot-then-made": _image(
        (_m("s", "symlink", target="m/n/../../m/o/../p"), _m("s/f"))
    ),
    # The header of a/a went with a: the a/a made for a/a/a later has none.
    "a-directory-header-gone-with-its-parent-then-made-again": _image(
        (_m("a", "dir"), _m("a/a", "dir"), _m("a"), _m("a", "dir"), _m("a/a/a"))
    ),
    "a-marker-made-directory-whited-out-then-made-again": _image(
        (_m("a", "dir"), _m("a/b", "dir")), (_m("a/b/.wh.a"), _m("a/.wh.b"), _m("a/b/a", "dir"))
    ),
    # b/a/a goes through the lower device b/a before b is replaced.
    "through-a-lower-device-then-its-parent-replaced": _image(
        (_m("b/a", "char"),), (_m("b/a/a", "dir"), _m("b", "char"), _m("b", "dir"), _m("b/a/a/a"))
    ),
    # c/.wh.a makes no directory c: the link names what the layers below have there.
    "a-hardlink-to-a-lower-device-a-marker-went-under": _image(
        (_m("c", "char"),), (_m("c/.wh.a"), _m("b", "hardlink", target="c"))
    ),
    "a-hardlink-to-nothing-but-a-marker-directory": _image(
        (_m("x", "dir"),), (_m("c/.wh.a"), _m("b", "hardlink", target="c"))
    ),
}


def with_examples(found: Iterable[Image]) -> Callable[[Test], Test]:
    """``hypothesis.example`` for each of ``found``."""

    def decorate(test: Test) -> Test:
        for image in found:
            test = example(image=image)(test)
        return test

    return decorate


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(image=images)
@with_examples(FOUND.values())
def test_one_verdict_and_one_tree(scratch: Path, image: Image) -> None:
    layers = image.tars()
    work = Path(tempfile.mkdtemp(dir=scratch))
    try:
        copied = outcome(copy_tree, layers, work / "copy")
        merged = outcome(fuse_tree, layers, work / "fuse")
        stacked = outcome(overlay_tree, layers, work / "overlay")
    finally:
        shutil.rmtree(work)
    cannot = stacked.error is not None and issubclass(stacked.error, BackendError)
    cannot = cannot and any(text in stacked.message for text in OVERLAY_CANNOT)
    others = [merged] if cannot else [merged, stacked]
    check_one_line(copied)
    for other in others:
        check_one_line(other)
        assert verdict(copied) == verdict(other), (copied, other)
    if copied.tree is not None:
        for other in others:
            assert other.tree is not None
            differences = diff_trees(copied.tree, other.tree)
            assert differences == [], "\n".join(differences)
        assert not any(
            name.startswith("trusted.overlay.")
            for node in copied.tree.values()
            for name, _ in node.xattrs
        )
