"""Apply image layers (tar streams) to a directory, safely.

``apply_layer(root, stream, layer=...)`` applies one uncompressed tar stream
on top of what ``root`` already holds; ``apply_layers(root, layers)`` opens,
decompresses and applies layer blobs bottom first, given as local files
(``LayerFile``, which ``local_files`` asks a blob source for).  Both are blocking and
neither is atomic: on error ``root`` holds part of the layer and the caller
throws it away.  The stream is read to its end, so a decompressor's trailer
check (gzip CRC) runs, but it is not closed.

What an entry means, and whether it is refused, is decided by
``providers.layer_entry`` (its names by ``providers.layer_rules``), as for
the merged FUSE tree; this module does it to a real directory the way
containerd and umoci do:

- a directory over a directory keeps the directory and its contents and takes
  the new attributes (mode, owner, mtime, xattrs); any other entry replaces
  what is there, recursively;
- whiteouts and opaque markers hide what lower layers made, never what this
  layer made, whatever the order of entries in the archive;
- parent directories that are symlinks (usrmerge's ``lib -> usr/lib``) are
  followed inside the rootfs, absolute targets starting at its root, and a
  ``..`` above the root is refused; missing parents are made (0755, owner of
  the process: root when it matters; mtime 0, as the merged FUSE tree has
  them);
- the last component of a name is never followed: a symlink there is replaced;
- hardlinks point at another path of the image, resolved the same way;
- owners are set only when running as root; otherwise, with
  ``rootless_owners`` (the copy backend), a regular file's or directory's
  owner other than 0:0 is kept in the ``user.rootlesscontainers`` xattr, as
  ``umoci unpack --rootless`` keeps it (``backends.rootless_owners``), and the
  files are the user's; device nodes are made only as root and otherwise
  skipped with one warning per layer; directory modes and mtimes are set
  when the whole layer is in, deepest first, since adding children changes
  them;
- as a user, a directory whose mode keeps its owner out (a lower layer's
  0555 ``usr/lib``) is opened to its owner while the layer is written, and
  gets its mode back after, as umoci does rootless (``apply_walk``).

Every filesystem call goes through directory descriptors opened one
component at a time with O_NOFOLLOW (``backends.apply_walk``), so neither
the archive nor a concurrent process can redirect a write outside ``root``.
Errors name the layer and the
entry: ``UnsafeLayer`` for entries that would escape, ``BadImage`` for
archives that are corrupt, truncated or make no sense, ``BackendError`` when
the filesystem refuses (a full disk, permissions).

With ``whiteouts="overlay"`` one layer goes alone into an empty directory in
overlayfs' lower-layer form and nothing is removed: ``.wh.NAME`` becomes a
0/0 character device (or marks the layer's own directory NAME opaque), and
``.wh..wh..opq`` sets ``trusted.overlay.opaque=y``; the layer's own entries
still win.  (Image xattrs ``trusted.overlay.*`` and 0/0 character devices,
which would steer overlayfs, never get this far.)  Whiteouts need root.  The
safety rules are as above; symlinked parents are followed within the layer
only; a marker under something of the layer's own that is no directory does
nothing.  Both modes return the directories the layer made without a header
(``MadeDirs``): a union gives them a lower layer's attributes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

from backends.apply_tree import OVERLAY_XATTR_PREFIX, MadeDirs, Tree
from backends.apply_walk import backend_error
from backends.rootless_owners import OWNER_XATTR, owner_record
from providers import layer_rules as rules
from providers.compression import decompressed
from providers.digest import Digest
from providers.errors import BadImage
from providers.layer_entry import EntryKind, LayerEntry, classify_member
from providers.layer_rules import RelPath
from providers.manifest import Layer
from providers.source import LocalBlobSource
from providers.tar_sparse import stored_chunks
from providers.tar_stream import (
    CHUNK,
    MAX_ENTRIES,
    CheckedTarInfo,
    LayerLimits,
    LayerReader,
    file_layout,
)

log = logging.getLogger(__name__)

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# xattrs a filesystem cannot store or we may not set: reported, not fatal.
_SKIPPABLE_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})
Whiteouts = Literal["apply", "overlay"]
_NODE_TYPES = {
    EntryKind.FIFO: stat.S_IFIFO,
    EntryKind.CHAR: stat.S_IFCHR,
    EntryKind.BLOCK: stat.S_IFBLK,
}


@dataclass(frozen=True)
class LayerFile:
    """A layer blob as a verified local file (compressed or not), named by its digest."""

    digest: Digest
    path: Path


def local_files(layers: Sequence[Layer], blobs: LocalBlobSource) -> list[LayerFile]:
    """Every one of ``layers`` as a verified local file of ``blobs``, bottom first.

    All are asked for before any is applied, so a layer that cannot be had
    (NotFound, DigestMismatch) fails a build before it starts.
    """
    return [LayerFile(layer.digest, blobs.local_blob(layer)) for layer in layers]


def apply_layers(
    root: Path,
    layers: Sequence[LayerFile],
    *,
    whiteouts: Whiteouts = "apply",
    limits: LayerLimits | None = None,
    rootless_owners: bool = False,
) -> MadeDirs:
    """Apply layer blobs (gzip, zstd or plain tar) to ``root``, bottom first.

    Each layer unpacks within ``limits`` (default: ``LayerLimits()``) for
    its blob's size.  Returns ``apply_layer``'s answer for the last layer.
    ``rootless_owners``: see ``apply_layer``.
    """
    made = MadeDirs()
    for layer in layers:
        with layer.path.open("rb") as blob:
            made = apply_layer(
                root,
                decompressed(blob),
                layer=str(layer.digest),
                whiteouts=whiteouts,
                limits=limits,
                compressed_size=os.fstat(blob.fileno()).st_size,
                rootless_owners=rootless_owners,
            )
    return made


def apply_layer(
    root: Path,
    tar_stream: BinaryIO,
    *,
    layer: str,
    whiteouts: Whiteouts = "apply",
    limits: LayerLimits | None = None,
    compressed_size: int | None = None,
    rootless_owners: bool = False,
) -> MadeDirs:
    """Apply one uncompressed tar stream to the existing directory ``root``.

    ``layer`` names the layer (its digest) in errors; ``whiteouts`` applies
    them or writes them for overlayfs; the stream may have what ``limits``
    allow a blob of ``compressed_size`` (None: unknown) bytes, BadImage
    past it.  With ``rootless_owners``, a process that is not root keeps the
    image's owners in ``user.rootlesscontainers`` xattrs.  Returns the
    directories the layer made without a header (``MadeDirs``).  The module
    docstring has the rules.
    """
    stream = LayerReader(tar_stream, layer, limits=limits, compressed_size=compressed_size)
    with Tree(root, layer, overlay=whiteouts == "overlay") as tree:
        record = rootless_owners and not tree.privileged
        try:
            # Closing the archive would close nothing of ours.
            archive = tarfile.open(fileobj=stream, mode="r:", tarinfo=CheckedTarInfo)  # noqa: SIM115
            count = 0
            while (member := archive.next()) is not None:
                # tarfile keeps every member in a list; memory would grow with the layer.
                archive.members.clear()  # type: ignore[attr-defined]
                count += 1
                if count > MAX_ENTRIES:
                    raise BadImage(f"bad layer {layer}: more than {MAX_ENTRIES} entries")
                _Entry(tree, archive, member, record_owners=record).apply()
            tree.finish()
            while stream.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError) as error:
            raise BadImage(f"bad layer {layer}: corrupt or truncated tar: {error}") from error
        return tree.made_dirs()


class _Entry:
    """One tar member, applied to the tree as ``providers.layer_entry`` classifies it."""

    def __init__(
        self,
        tree: Tree,
        archive: tarfile.TarFile,
        member: tarfile.TarInfo,
        *,
        record_owners: bool = False,
    ) -> None:
        self.tree = tree
        self.record_owners = record_owners
        self.archive = archive
        self.member = member
        self.name = member.name
        self.layer = tree.layer

    def apply(self) -> None:
        try:
            self._apply(classify_member(self.member, layer=self.layer))
        except OSError as error:
            raise backend_error(self.layer, self.name, error) from error
        finally:
            self.tree.release()

    def _apply(self, entry: LayerEntry) -> None:
        rule, tree = entry.rule, self.tree
        if rule.action is rules.Action.IGNORE:
            return
        if rule.action is rules.Action.WHITEOUT:
            tree.whiteout(rule.path, self.name)
            return
        if rule.action is rules.Action.OPAQUE:
            tree.opaque(rule.path, self.name)
            return
        for reason in entry.dropped:
            tree.skipped[reason] += 1
        path, kind = rule.path, entry.kind
        if not path:
            self._attributes(entry, tree.root_fd, tree.root_fd, ".", replace_xattrs=True)
            tree.defer_dir((), entry.mode, entry.mtime_ns)
            return
        found = tree.walk(path[:-1], self.name, create=True)
        assert found is not None  # walk with create either finds, makes or raises
        parent_fd, parent = found
        name = path[-1]
        resolved = (*parent, name)
        if kind is EntryKind.DIR:
            fd, existed = tree.make_dir(path, parent_fd, resolved)
            self._attributes(entry, fd, parent_fd, name, replace_xattrs=existed)
            tree.defer_dir(resolved, entry.mode, entry.mtime_ns)
        elif kind is EntryKind.FILE:
            self._regular(entry, parent_fd, resolved)
        elif kind is EntryKind.SYMLINK:
            target = entry.target
            tree.create(parent_fd, resolved, lambda: os.symlink(target, name, dir_fd=parent_fd))
            self._attributes(entry, None, parent_fd, name)
        elif kind is EntryKind.HARDLINK:
            # The link shares its target's inode and so its attributes.
            tree.hardlink(entry.link, parent_fd, resolved, self.name)
        else:
            if kind is not EntryKind.FIFO and not tree.privileged:
                tree.skipped["device nodes (making them needs root)"] += 1
                tree.skipped_paths.add(resolved)
                return
            self._node(entry, parent_fd, resolved)
        tree.mark_created(resolved)

    def _regular(self, entry: LayerEntry, parent_fd: int, resolved: RelPath) -> None:
        layout = file_layout(self.member, layer=self.layer)
        name = resolved[-1]
        fd = self.tree.create(
            parent_fd, resolved, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
        )
        try:
            stream = cast(BinaryIO, self.archive.fileobj)
            for offset, chunk in stored_chunks(stream, layout, CHUNK):
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            if layout.extents is not None:
                # A sparse file's holes stay holes: the size, not zeros, extends it.
                os.ftruncate(fd, layout.size)
            self._attributes(entry, fd, parent_fd, name)
        finally:
            os.close(fd)

    def _node(self, entry: LayerEntry, parent_fd: int, resolved: RelPath) -> None:
        assert entry.kind is not None  # only written entries get here
        kind = _NODE_TYPES[entry.kind]
        device = os.makedev(*entry.rdev)
        name = resolved[-1]
        self.tree.create(
            parent_fd, resolved, lambda: os.mknod(name, kind | 0o600, device, dir_fd=parent_fd)
        )
        self._attributes(entry, None, parent_fd, name)

    def _attributes(
        self,
        entry: LayerEntry,
        fd: int | None,
        parent_fd: int,
        name: str,
        *,
        replace_xattrs: bool = False,
    ) -> None:
        """Owner, then mode, xattrs and mtime: chown clears setuid and capabilities.

        ``fd`` is the object itself where opening it is safe (directories,
        regular files); otherwise ``name`` in ``parent_fd`` is changed
        without following it.  Directories get mode and mtime in ``finish``.
        """
        xattrs = dict(entry.xattrs)
        directory = entry.kind is EntryKind.DIR
        if self.tree.privileged:
            if fd is not None:
                os.fchown(fd, entry.uid, entry.gid)
            else:
                os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        elif self.record_owners:
            # A directory a lower layer left 0555 was opened to its owner (make_dir).
            owner = self._owner_record(entry, xattrs)
            if owner is not None and not directory:
                # Before the mode: a file of mode 0444 refuses user xattrs even to its owner.
                # Regular files only get here, each one fresh: nothing to replace.
                assert fd is not None
                self._set_xattrs(fd, {OWNER_XATTR: owner}, replace=False, what="owners")
            elif owner is not None:
                xattrs[OWNER_XATTR] = owner
        if not directory and entry.kind is not EntryKind.SYMLINK:
            if fd is not None:
                os.fchmod(fd, entry.mode)
            else:
                os.chmod(name, entry.mode, dir_fd=parent_fd, follow_symlinks=False)
        if xattrs or replace_xattrs:
            # Symlinks and nodes cannot be opened safely; reach them through
            # their pinned parent, without following the last component.
            where: int | str = fd if fd is not None else f"/proc/self/fd/{parent_fd}/{name}"
            self._set_xattrs(where, xattrs, replace=replace_xattrs)
        if not directory:
            times = (entry.mtime_ns, entry.mtime_ns)
            if fd is not None:
                os.utime(fd, ns=times)
            else:
                os.utime(name, ns=times, dir_fd=parent_fd, follow_symlinks=False)

    def _owner_record(self, entry: LayerEntry, xattrs: dict[str, bytes]) -> bytes | None:
        """The ``user.rootlesscontainers`` value ``entry`` gets, unprivileged; None for none.

        As ``umoci unpack --rootless`` does, the layer's own value of it
        (taken out of ``xattrs``) is not kept: the header's owner is the
        truth.  Linux allows user.* xattrs only on regular files and
        directories; umoci tries on the rest, is refused (EPERM) and
        warns per entry: here the owners of symlinks and fifos are counted
        and reported once per layer.  Hardlinks share their target's.
        """
        xattrs.pop(OWNER_XATTR, None)
        owner = owner_record(entry.uid, entry.gid)
        if owner is not None and entry.kind not in (EntryKind.FILE, EntryKind.DIR):
            self.tree.skipped["owners (symlinks and special files take no user.* xattrs)"] += 1
            return None
        return owner

    def _set_xattrs(
        self, where: int | str, xattrs: dict[str, bytes], *, replace: bool, what: str = "xattrs"
    ) -> None:
        """Set ``xattrs``; with ``replace``, first drop those a lower layer left.

        What the filesystem or our privileges refuse (user.* on a symlink,
        security.* unprivileged, user.* where the filesystem has none, such
        as umoci also passes over with a warning) is counted as skipped
        ``what`` and reported, not fatal.
        """
        # Paths end in the entry itself, which must not be followed; descriptors
        # refuse the flag.
        follow = isinstance(where, int)
        try:
            if replace:
                for old in os.listxattr(where, follow_symlinks=follow):
                    # The host's SELinux label is not the image's to remove,
                    # nor overlayfs' markers the layer set (overlay mode).
                    if (
                        old not in xattrs
                        and old != "security.selinux"
                        and not (self.tree.overlay and old.startswith(OVERLAY_XATTR_PREFIX))
                    ):
                        os.removexattr(where, old, follow_symlinks=follow)
            for key, value in xattrs.items():
                os.setxattr(where, key, value, follow_symlinks=follow)
        except OSError as error:
            if error.errno not in _SKIPPABLE_XATTR_ERRNOS:
                raise
            self.tree.skipped[f"{what} ({os.strerror(error.errno or 0)})"] += 1
