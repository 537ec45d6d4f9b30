"""A published layer index's entries held to what a scan of a layer could give.

A scan (``lazyfs.index.build``) makes an entry of a tar member only after
``providers.layer_rules`` and ``providers.layer_entry`` have checked it:
plain names of at most ``MAX_NAME_BYTES`` (components ``MAX_COMPONENT_BYTES``),
owners up to ``MAX_ID``, mtimes clamped to what ext4 stores, device numbers
Linux has (no 0/0 character device, overlayfs' whiteout), sizes up to
``MAX_ENTRY_SIZE``, xattr names and values the kernel takes, and only a
directory (or an opaque marker) at the root.  The merged tree and the FUSE
operations rely on those bounds.  Not every rule of a scan is repeated:
names with ``.wh.`` in them, a ``security.capability`` value the kernel
would refuse and an xattr named twice pass here (the merged tree drops
overlayfs' own xattrs whatever their source).  A published index comes
from a registry (``lazyfs.index.artifact``), so each of its entries is held
to the same bounds before it is kept: one that a scan never gives is a
BadImage, and the layer is pulled whole, not mounted with an entry that
fails later (an exception in the mount process, EIO on every lookup).

Pure.
"""

from __future__ import annotations

from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from providers.errors import UnsafeLayer
from providers.layer_entry import (
    MAX_ID,
    MAX_MAJOR,
    MAX_MINOR,
    MAX_MTIME_NS,
    MIN_MTIME_NS,
    XATTR_NAME_MAX,
)
from providers.layer_limits import MAX_ENTRY_SIZE, MAX_XATTR_VALUE_BYTES
from providers.layer_rules import MAX_COMPONENT_BYTES, MAX_NAME_BYTES, check_symlink_target

_AT_ROOT = (Kind.DIR, Kind.OPAQUE)  # ``.wh..wh..opq`` at the top marks the root opaque
_DEVICES = (Kind.CHAR, Kind.BLOCK)


def entry_trouble(index: LayerIndex) -> str | None:
    """Why an entry of ``index`` is not one a scan could give (its name, in one line), or None."""
    for entry in index.entries:
        try:
            why = _trouble(entry, index.tar_size)
        except UnicodeEncodeError:
            # A scan's names hold surrogates only for bytes that are not UTF-8 (U+DC80-U+DCFF).
            why = "has a name with a character no filesystem stores"
        if why is not None:
            return f"entry {'/'.join(entry.path)[:200]!r} {why}"
    return None


def _trouble(entry: IndexEntry, tar_size: int) -> str | None:
    kind = entry.kind
    if not _plain_path(entry.path):
        return "is not a plain relative path"
    if not entry.path and kind not in _AT_ROOT:
        return "is the root but not a directory"
    if not 0 <= entry.mode <= 0o7777:
        return f"has the mode {entry.mode:o}"
    if not (0 <= entry.uid <= MAX_ID and 0 <= entry.gid <= MAX_ID):
        return f"has the owner {entry.uid}:{entry.gid}"
    if not MIN_MTIME_NS <= entry.mtime_ns <= MAX_MTIME_NS:
        return f"has an mtime ext4 does not store ({entry.mtime_ns} ns)"
    if kind is Kind.HARDLINK:
        target = tuple(entry.target.split("/"))
        if not entry.target or not _plain_path(target):
            return "is a hardlink that names no plain path"
    elif kind is Kind.SYMLINK:
        try:
            check_symlink_target(entry.target, layer="", entry="")
        except UnsafeLayer:
            return "has a symlink target no filesystem stores"
    elif entry.target:
        return f"is a {kind.value} with a link target"
    major, minor = entry.rdev
    if kind in _DEVICES:
        if not (0 <= major <= MAX_MAJOR and 0 <= minor <= MAX_MINOR):
            return f"has the device {major}:{minor}, which Linux lacks"
        if kind is Kind.CHAR and major == minor == 0:
            return "is a 0/0 character device, which overlayfs takes for a whiteout"
    elif entry.rdev != (0, 0):
        return f"is a {kind.value} with a device number"
    for name, value in entry.xattrs:
        encoded = name.encode("utf-8", "surrogateescape")
        if not name.partition(".")[2] or "\0" in name or len(encoded) > XATTR_NAME_MAX:
            return f"has the xattr name {name[:100]!r}, which Linux refuses"
        if len(value) > MAX_XATTR_VALUE_BYTES:
            return f"has an xattr value of {len(value)} bytes"
    return _data_trouble(entry, tar_size)


def _data_trouble(entry: IndexEntry, tar_size: int) -> str | None:
    """Why the entry's data is not where a scan could put it, or None."""
    if entry.kind is not Kind.FILE:
        if entry.size or entry.offset or entry.extents is not None:
            return f"is a {entry.kind.value} with data"
        return None
    if not 0 <= entry.size <= MAX_ENTRY_SIZE:
        return f"has the size {entry.size}"
    extents = entry.extents or ()
    stored = sum(e[1] for e in extents) if entry.extents is not None else entry.size
    if any(e[0] < 0 or e[1] < 0 or e[0] + e[1] > entry.size or e[2] < 0 for e in extents):
        return "has extents outside it"
    if any(e[2] + e[1] > stored for e in extents):
        return "has extents outside its data"
    if entry.offset < 0 or entry.offset + stored > tar_size:
        return "reaches past the layer's tar stream"
    return None


def _plain_path(path: tuple[str, ...]) -> bool:
    """No empty, ``.`` or ``..`` component, no NUL, and no longer than a scan allows
    (``providers.layer_rules``: the name ``MAX_NAME_BYTES``, each component
    ``MAX_COMPONENT_BYTES``), by tests on the whole name: once per entry of
    indexes of thousands, on the start's path."""
    if not path:
        return True
    name = "/".join(path)
    wrapped = f"/{name}/"
    if "\0" in name or "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        return False
    length = len(name) if name.isascii() else _bytes(name)
    if length > MAX_NAME_BYTES:
        return False
    # A short name cannot hold a long component.
    return length <= MAX_COMPONENT_BYTES or max(map(_bytes, path)) <= MAX_COMPONENT_BYTES


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))
