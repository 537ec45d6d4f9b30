"""A published layer index's entries held to what a scan of a layer gives.

A scan (``lazyfs.index.build``) makes an entry of a tar member through
``providers.layer_rules.rule_for`` (the name: unsafe ones refused;
whiteouts, opaque markers, AUFS bookkeeping) and
``providers.layer_entry.classify_fields`` (type, owner, mode, mtime, link
target, device, xattrs: refused or normalised), then
``lazyfs.index.model.index_entry``.  A published index comes from a
registry (``lazyfs.index.artifact``), so each of its entries is put through
those same functions: the member name it was read from is rebuilt from its
path and kind, its own values are classified as that member's would be,
and the entry is kept only if that gives it back exactly.  So an entry is
accepted iff a scan could have given it, and no rule of a scan is written
twice here: a refusal is the scan's own reason (``BadEntry.reason``), or
names the fields a scan never gives as they are (a symlink's mode, xattrs
a scan drops or normalises, a hardlink's owner).

What a scan checks outside those functions is checked with the same code
or bound: every string is one a tar reader decodes bytes to (``tar_text``:
UTF-8, bytes that are not as U+DC80-U+DCFF), an xattr value has at most
``MAX_XATTR_VALUE_BYTES``, a file at most ``MAX_ENTRY_SIZE`` bytes, the
extents ``checked_extents`` gives and its data inside the tar stream.
Where in the stream beyond that (after its own header, clear of other
entries' data) only the tar can tell: a file's bytes are held to its header
when first read (``lazyfs.blobs.entry_check``).

The merged tree and the FUSE operations rely on what a scan guarantees: an
entry a scan never gives makes the artifact a BadImage, and the layer is
pulled whole, not mounted with an entry that fails later (an exception in
the mount process, EIO on every lookup).

Pure.
"""

from __future__ import annotations

from dataclasses import fields
from operator import attrgetter

from lazyfs.index.model import IndexEntry, Kind, LayerIndex, written_values
from lazyfs.index.tar_text import decoded
from providers.errors import BadEntry
from providers.extents import FileLayout, checked_extents
from providers.layer_entry import EntryKind, classify_fields
from providers.layer_limits import MAX_ENTRY_SIZE, MAX_XATTR_VALUE_BYTES
from providers.layer_rules import WHITEOUT_OPAQUE, WHITEOUT_PREFIX, Action, rule_for

# The kind a member that writes each kind of entry is classified as; markers write nothing.
_WRITTEN: dict[Kind, EntryKind] = {
    kind: EntryKind(kind.value) for kind in Kind if kind not in (Kind.WHITEOUT, Kind.OPAQUE)
}
_KIND_WORDS = {
    Kind.FILE: "a file",
    Kind.DIR: "a directory",
    Kind.SYMLINK: "a symlink",
    Kind.HARDLINK: "a hardlink",
    Kind.CHAR: "a character device",
    Kind.BLOCK: "a block device",
    Kind.FIFO: "a fifo",
    Kind.WHITEOUT: "a whiteout",
    Kind.OPAQUE: "an opaque marker",
}
_ACTION_WORDS = {
    Action.WRITE: "an entry to write",
    Action.WHITEOUT: "a whiteout",
    Action.OPAQUE: "an opaque marker",
    Action.IGNORE: "AUFS bookkeeping",
}
_FIELDS = tuple(field.name for field in fields(IndexEntry))
_values = attrgetter(*_FIELDS)  # an entry's fields, in written_values' order
_FIELD_WORDS = {"mtime_ns": "mtime", "target": "link target", "rdev": "device"}
# A reason may quote a name or a number of any length from the artifact.
_MAX_REASON = 300


def entry_trouble(index: LayerIndex) -> str | None:
    """Why an entry of ``index`` is not one a scan could give (its name, in one line), or None."""
    layer, tar_size = str(index.digest), index.tar_size
    for entry in index.entries:
        try:
            why = _trouble(entry, tar_size, layer)
        except BadEntry as refused:
            why = refused.reason
        except UnicodeEncodeError:
            # A scan's strings hold surrogates only for bytes that are not UTF-8 (U+DC80-U+DCFF).
            why = "has a character no filesystem stores"
        if why is not None:
            return f"entry {'/'.join(entry.path)[:200]!r} {why[:_MAX_REASON]}"
    return None


def _trouble(entry: IndexEntry, tar_size: int, layer: str) -> str | None:
    kind, path, target, xattrs = entry.kind, entry.path, entry.target, entry.xattrs
    written = _WRITTEN.get(kind)  # None for a whiteout or an opaque marker
    if written is not None:
        action, name = Action.WRITE, "/".join(path) if path else "."
    elif kind is Kind.OPAQUE:
        action, name = Action.OPAQUE, "/".join((*path, WHITEOUT_OPAQUE))
    elif path:
        action, name = Action.WHITEOUT, "/".join((*path[:-1], WHITEOUT_PREFIX + path[-1]))
    else:
        return "is a whiteout of the root, which no name gives"
    if not (name.isascii() and target.isascii()) or xattrs:  # ASCII decodes as itself
        if not (decoded(name) and decoded(target) and all(decoded(x) for x, _ in xattrs)):
            return "has escaped bytes that a tar reader decodes as UTF-8"
        for _, value in xattrs:  # as tar_stream.pax_xattrs bounds them, before classify_fields
            if len(value) > MAX_XATTR_VALUE_BYTES:
                return f"has an xattr value of {len(value)} bytes"
    rule = rule_for(name, layer=layer)
    if rule.action is not action:
        return f"is {_KIND_WORDS[kind]} whose name a scan takes for {_ACTION_WORDS[rule.action]}"
    if written is not None:
        classified = classify_fields(
            name,
            rule,
            written,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            mtime_ns=entry.mtime_ns,
            size=entry.size,
            linkname=target,
            device=entry.rdev,
            xattrs=dict(xattrs) if xattrs else None,
            layer=layer,
        )
        is_file = kind is Kind.FILE
        layout = FileLayout(entry.size, entry.offset, entry.extents) if is_file else None
        # index_entry's fields, compared without making one (see written_values).
        scanned = written_values(classified, layout=layout)
    else:
        scanned = _values(IndexEntry(rule.path, kind))
    given = _values(entry)
    if scanned != given:
        differ = [
            _FIELD_WORDS.get(f, f)
            for f, a, b in zip(_FIELDS, given, scanned, strict=True)
            if a != b
        ]
        return f"is {_KIND_WORDS[kind]} whose {', '.join(differ)} a scan never gives"
    return _data_trouble(entry, tar_size, name, layer) if kind is Kind.FILE else None


def _data_trouble(entry: IndexEntry, tar_size: int, name: str, layer: str) -> str | None:
    """Why a file's data is not where a scan could put it (``tar_stream.file_layout``), or None."""
    size, extents = entry.size, entry.extents
    if not 0 <= size <= MAX_ENTRY_SIZE:
        return f"has the size {size}"
    stored = size
    if extents is not None:
        # A scan's extents are those checked_extents gives for the map's (offset, length) pairs.
        pairs = [(start, length) for start, length, _ in extents]
        if checked_extents(pairs, size, layer=layer, entry=name) != extents:
            return "has sparse extents a scan never gives"
        stored = sum(length for _, length in pairs)
    if entry.offset < 0 or entry.offset + stored > tar_size:
        return "reaches past the layer's tar stream"
    return None
