"""One tar member of an image layer, checked and normalised before anything acts on it.

``classify_member(member, layer=...)`` is the one place that decides what a
member of a layer is: accepted as it is, accepted with values normalised, or
refused with the error that names the layer and the entry.  Applying a layer
to a directory (``backends.apply``, for the copy, bind and overlay backends)
and indexing it for the merged FUSE tree (``lazyfs.index.build``) act on the
``LayerEntry`` it returns and on nothing else of the header, so every backend
accepts and refuses the same layers and shows the same values.

The name goes through ``providers.layer_rules`` (unsafe names are refused;
whiteouts, opaque markers and AUFS bookkeeping are recognised; for those
nothing else of the header matters).  For an entry that writes:

========================  ============================================================
type                      file, directory, symlink, hardlink, character or block
                          device, fifo; anything else is refused.  The root
                          entry must be a directory.
size                      over ``MAX_ENTRY_SIZE``: refused
hardlink                  the target obeys the name rules; owner, mode, mtime and
                          xattrs of the header are ignored, as tar does: the link
                          shares its target's inode
symlink                   the target must be storable (``check_symlink_target``);
                          the mode is ignored (Linux symlinks are 0777)
owner                     uid and gid in 0..``MAX_ID``, else refused
mode                      the permission bits (0o7777), the type bits dropped
mtime                     nanoseconds from the pax header when there is one;
                          garbage or beyond ±2**62 ns refused; clamped to what
                          ext4 stores (from 1901-12-13, no nanoseconds in its
                          first second), as the kernel would clamp it there
devices                   major < 4096 and minor < 2**20 (what mknod(2) takes),
                          else refused; a 0/0 character device is refused: it
                          is an overlayfs whiteout, in the overlay backend's
                          layers and in a FUSE mount's upper directory alike
xattrs                    see ``check_xattrs``
========================  ============================================================

Pure: no I/O; safe from any thread.
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING, NamedTuple

from providers import layer_rules as rules
from providers.errors import BadEntry, bad_entry
from providers.layer_rules import Action, RelPath, Rule

if TYPE_CHECKING:
    import tarfile

_NS = 1_000_000_000
# ext4's timestamps: 32 signed bits of seconds plus two epoch bits.  At either
# end it keeps no nanoseconds, so a whole second there is clamped too.
MIN_MTIME_NS = -(1 << 31) * _NS
MAX_MTIME_NS = ((1 << 34) - 1 - (1 << 31)) * _NS
# What mknod(2) takes: the kernel's dev_t has 12 bits of major, 20 of minor.
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1
XATTR_NAME_MAX = 255  # bytes, the namespace prefix included

OVERLAY_XATTR_PREFIX = "trusted.overlay."
CAPABILITY_XATTR = "security.capability"
# Namespaces a Linux filesystem stores for any process that may write them.
_CARRIED_NAMESPACES = ("user.", "trusted.", "security.")
# vfs_cap_data (linux/capability.h): a revision in the top byte of magic_etc,
# the effective flag in its lowest bit; version 3 adds the id of the root the
# capabilities belong to.
_CAP_REVISION_2 = 0x02000000
_CAP_REVISION_3 = 0x03000000
_CAP_EFFECTIVE = 0x000001
_CAP_V2_SIZE = 20
_CAP_V3_SIZE = 24


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


# The largest owner id a layer may give: (uid_t)-1 means "leave unchanged" to chown.
MAX_ID = (1 << 32) - 2
# tarfile's type flags, written out: the merged tree (a mount process) uses
# this module's link rules and must not load tarfile and the tar parsers.
_KINDS = {
    b"5": EntryKind.DIR,
    b"2": EntryKind.SYMLINK,
    b"1": EntryKind.HARDLINK,
    b"3": EntryKind.CHAR,
    b"4": EntryKind.BLOCK,
    b"6": EntryKind.FIFO,
}


class LayerEntry(NamedTuple):
    """A member as every reader of the layer must take it.

    ``rule`` says what the member does (``layer_rules.Rule``).  The other
    fields matter only when ``rule.action`` is WRITE and are zero otherwise:
    ``kind``; ``mode`` (0o7777 bits); ``uid``, ``gid``; ``mtime_ns``;
    ``size`` (a file's bytes, 0 for other kinds); ``target``, a symlink's
    target as written; ``link``, a hardlink's target path; ``rdev`` of a
    device; ``xattrs`` to set, in header order; ``dropped``, one reason per
    xattr left out on purpose, for the caller's warning.
    """

    name: str
    rule: Rule
    kind: EntryKind | None = None
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    target: str = ""
    link: RelPath = ()
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    dropped: tuple[str, ...] = ()


def classify_member(member: tarfile.TarInfo, *, layer: str) -> LayerEntry:
    """What ``member`` of layer ``layer`` is; raises BadImage or UnsafeLayer if refused."""
    # Here, not at the top: see _KINDS.
    from providers.tar_stream import MAX_ENTRY_SIZE, pax_mtime_ns, pax_xattrs

    name = member.name
    rule = rules.rule_for(name, layer=layer)
    if rule.action is not Action.WRITE:
        return LayerEntry(name, rule)
    if member.size > MAX_ENTRY_SIZE:
        raise bad_entry(layer, name, f"claims {member.size} bytes")
    kind = EntryKind.FILE if member.isreg() else _KINDS.get(member.type)
    if kind is None:
        raise bad_entry(layer, name, f"has the unsupported tar type {member.type!r}")
    if kind is EntryKind.HARDLINK:
        return classify_fields(name, rule, kind, linkname=member.linkname, layer=layer)
    return classify_fields(
        name,
        rule,
        kind,
        mode=member.mode,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=pax_mtime_ns(member, layer),
        size=member.size,
        linkname=member.linkname,
        device=(member.devmajor, member.devminor),
        xattrs=pax_xattrs(member, layer) if member.pax_headers else None,
        layer=layer,
    )


def classify_fields(
    name: str,
    rule: Rule,
    kind: EntryKind,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    mtime_ns: int = 0,
    size: int = 0,
    linkname: str = "",
    device: tuple[int, int] = (0, 0),
    xattrs: dict[str, bytes] | None = None,
    layer: str,
) -> LayerEntry:
    """The checks of ``classify_member`` past the name and type, on a member's values.

    For readers that have the values without a tar header (an eStargz TOC):
    ``rule`` is ``rules.rule_for(name)`` (WRITE), ``size`` at most
    ``MAX_ENTRY_SIZE``, ``mtime_ns`` what the header gives (refused beyond
    ±2**62 ns, then clamped), ``xattrs`` the header's (values checked for
    size by the caller, as ``tar_stream.pax_xattrs`` checks them).
    """
    if not rule.path and kind is not EntryKind.DIR:
        raise bad_entry(layer, name, "is the root but not a directory")
    if kind is EntryKind.HARDLINK:
        link = rules.hardlink_target(linkname, layer=layer, entry=name)
        return LayerEntry(name, rule, kind, link=link)
    if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
        raise bad_entry(layer, name, f"has the owner {uid}:{gid}")
    if abs(mtime_ns) >= 1 << 62:
        raise bad_entry(layer, name, f"has the absurd mtime {mtime_ns // _NS}")
    target = ""
    if kind is EntryKind.SYMLINK:
        rules.check_symlink_target(linkname, layer=layer, entry=name)
        target = linkname
    rdev = (0, 0)
    if kind is EntryKind.CHAR or kind is EntryKind.BLOCK:
        rdev = _device(name, device, kind, layer=layer)
    kept: tuple[tuple[str, bytes], ...] = ()
    dropped: tuple[str, ...] = ()
    if xattrs:
        kept, dropped = check_xattrs(kind, xattrs, layer=layer, entry=name)
    return LayerEntry(
        name,
        rule,
        kind,
        0o777 if kind is EntryKind.SYMLINK else mode & 0o7777,
        uid,
        gid,
        clamp_mtime(mtime_ns),
        size if kind is EntryKind.FILE else 0,
        target,
        (),
        rdev,
        kept,
        dropped,
    )


def clamp_mtime(mtime_ns: int) -> int:
    """``mtime_ns`` as ext4 stores it: outside its range, its nearest end."""
    seconds = mtime_ns // _NS
    if seconds <= MIN_MTIME_NS // _NS:
        return MIN_MTIME_NS
    if seconds >= MAX_MTIME_NS // _NS:
        return MAX_MTIME_NS
    return mtime_ns


def _device(name: str, device: tuple[int, int], kind: EntryKind, *, layer: str) -> tuple[int, int]:
    major, minor = device
    if not (0 <= major <= MAX_MAJOR and 0 <= minor <= MAX_MINOR):
        raise bad_entry(layer, name, f"has the device {major}:{minor}, which Linux lacks")
    if kind is EntryKind.CHAR and major == minor == 0:
        raise bad_entry(
            layer, name, "is a 0/0 character device, which overlayfs takes for a whiteout"
        )
    return major, minor


def carried_xattr(name: str, kind: EntryKind) -> bool:
    """Whether an xattr ``name`` of the image may reach a rootfs on an entry of ``kind``.

    Never overlayfs' own (``trusted.overlay.*``: they would forge whiteouts,
    opaque directories or redirects in an overlay layer or a FUSE mount's
    upper directory), nor ``system.*`` (POSIX ACLs, which the kernel rewrites
    into the mode, are not carried), nor namespaces Linux does not know, nor
    ``user.*`` on what is neither a file nor a directory (the kernel refuses
    them there).
    """
    if name.startswith(OVERLAY_XATTR_PREFIX) or not name.startswith(_CARRIED_NAMESPACES):
        return False
    return kind in (EntryKind.FILE, EntryKind.DIR) or not name.startswith("user.")


def check_xattrs(
    kind: EntryKind, xattrs: dict[str, bytes], *, layer: str, entry: str
) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
    """The xattrs an entry of ``kind`` keeps, and a reason for each one dropped.

    Names no filesystem takes (empty, a bare namespace, a NUL, over
    ``XATTR_NAME_MAX`` bytes) and a ``security.capability`` the kernel would
    refuse are refused; names ``carried_xattr`` rules out are dropped.  A
    version 3 capability of root (rootid 0) becomes the version 2 the kernel
    shows for it.
    """
    kept: list[tuple[str, bytes]] = []
    dropped: list[str] = []
    for name, value in xattrs.items():
        encoded = name.encode("utf-8", "surrogateescape")
        namespace, dot, rest = name.partition(".")
        if not rest or "\x00" in name or len(encoded) > XATTR_NAME_MAX:
            raise bad_entry(layer, entry, f"has the xattr name {name!r}, which Linux refuses")
        if not carried_xattr(name, kind):
            dropped.append(_drop_reason(name, namespace + dot))
            continue
        if name == CAPABILITY_XATTR:
            value = _capability(value, layer=layer, entry=entry)
        kept.append((name, value))
    return tuple(kept), tuple(dropped)


def _drop_reason(name: str, namespace: str) -> str:
    if name.startswith(OVERLAY_XATTR_PREFIX):
        return "xattrs of overlayfs (trusted.overlay.*)"
    if namespace in _CARRIED_NAMESPACES:
        return "user.* xattrs on neither a file nor a directory"
    return f"xattrs of the namespace {namespace!r}"


def _capability(value: bytes, *, layer: str, entry: str) -> bytes:
    """A ``security.capability`` value as the kernel stores and shows it; refused if malformed."""
    if len(value) in (_CAP_V2_SIZE, _CAP_V3_SIZE):
        (magic,) = struct.unpack_from("<I", value)
        revision, flags = magic & ~_CAP_EFFECTIVE, magic & _CAP_EFFECTIVE
        if len(value) == _CAP_V2_SIZE and revision == _CAP_REVISION_2:
            return value
        if len(value) == _CAP_V3_SIZE and revision == _CAP_REVISION_3:
            (rootid,) = struct.unpack_from("<I", value, _CAP_V2_SIZE)
            if rootid == 0:
                # Root's own: the kernel shows it as version 2.
                magic = _CAP_REVISION_2 | flags
                return struct.pack("<I", magic) + value[4:_CAP_V2_SIZE]
            if rootid <= MAX_ID:
                return value
    raise bad_entry(layer, entry, "has a security.capability the kernel refuses")


# Why a hardlink is refused once the tree it goes into is known: one wording
# for every reader of a layer.


def no_link_source(layer: str, entry: str, source: str) -> BadEntry:
    return bad_entry(layer, entry, f"is a hardlink to {source!r}, which does not exist")


def link_to_directory(layer: str, entry: str, source: str) -> BadEntry:
    return bad_entry(layer, entry, f"is a hardlink to the directory {source!r}")


def link_into_itself(layer: str, entry: str, source: str) -> BadEntry:
    return bad_entry(layer, entry, f"is a hardlink to {source!r}, inside what it replaces")
