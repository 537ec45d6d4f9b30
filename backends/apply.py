"""Apply image layers (tar streams) to a directory, safely.

``apply_layer(root, stream, layer=...)`` applies one uncompressed tar stream
on top of what ``root`` already holds; ``apply_layers(root, layers)`` opens,
decompresses and applies layer blobs bottom first.  Both are blocking and
neither is atomic: on error ``root`` holds part of the layer and the caller
throws it away.  The stream is read to its end, so a decompressor's trailer
check (gzip CRC) runs, but it is not closed.

What an entry means is decided by ``providers.layer_rules``; this module does
it to a real directory the way containerd and umoci do:

- a directory over a directory keeps the directory and its contents and takes
  the new attributes (mode, owner, mtime, xattrs); any other entry replaces
  what is there, recursively;
- whiteouts and opaque markers hide what lower layers made, never what this
  layer made, whatever the order of entries in the archive;
- parent directories that are symlinks (usrmerge's ``lib -> usr/lib``) are
  followed inside the rootfs, absolute targets starting at its root, and a
  ``..`` above the root is refused; missing parents are made (0755, owner of
  the process: root when it matters);
- the last component of a name is never followed: a symlink there is replaced;
- hardlinks point at another path of the image, resolved the same way;
- owners are set only when running as root; device nodes are made only as
  root and otherwise skipped with one warning per layer; directory modes and
  mtimes are set when the whole layer is in, deepest first, since adding
  children changes them.

Every filesystem call goes through directory descriptors opened one
component at a time with O_NOFOLLOW, so neither the archive nor a concurrent
process can redirect a write outside ``root``.  Errors name the layer and the
entry: ``UnsafeLayer`` for entries that would escape, ``BadImage`` for
archives that are corrupt, truncated or make no sense, ``BackendError`` when
the filesystem refuses (a full disk, permissions).

With ``whiteouts="overlay"`` one layer goes alone into an empty directory in
overlayfs' lower-layer form and nothing is removed: ``.wh.NAME`` becomes a
0/0 character device (or marks the layer's own directory NAME opaque), and
``.wh..wh..opq`` sets ``trusted.overlay.opaque=y``; the layer's own entries
still win.  Image xattrs ``trusted.overlay.*`` are dropped (they would steer
overlayfs) and real 0/0 character devices refused (they would be whiteouts).
Whiteouts need root.  The safety rules are as above; symlinked parents are
followed within the layer only.  Both modes return the directories the layer
made without a header: a union gives them a lower layer's attributes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, TypeVar, cast

from backends.base import LayerFile
from providers import layer_rules as rules
from providers.compression import decompressed
from providers.errors import BackendError, BadImage, UnsafeLayer, bad_entry
from providers.layer_rules import RelPath
from providers.tar_sparse import stored_chunks
from providers.tar_stream import (
    CHUNK,
    MAX_ENTRIES,
    MAX_ENTRY_SIZE,
    MAX_ID,
    CheckedTarInfo,
    LayerLimits,
    LayerReader,
    file_layout,
    pax_mtime_ns,
    pax_xattrs,
)

log = logging.getLogger(__name__)

# Tar writers list a tree depth first: the directory being filled and its
# ancestors are what is asked for again.
FD_CACHE_SIZE = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# xattrs a filesystem cannot store or we may not set: reported, not fatal.
_SKIPPABLE_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})
OVERLAY_XATTR_PREFIX = "trusted.overlay."
OVERLAY_OPAQUE = "trusted.overlay.opaque"
Whiteouts = Literal["apply", "overlay"]

T = TypeVar("T")


def apply_layers(
    root: Path,
    layers: Sequence[LayerFile],
    *,
    whiteouts: Whiteouts = "apply",
    limits: LayerLimits | None = None,
) -> frozenset[RelPath]:
    """Apply layer blobs (gzip, zstd or plain tar) to ``root``, bottom first.

    Each layer unpacks within ``limits`` (default: ``LayerLimits()``) for
    its blob's size.  Returns ``apply_layer``'s answer for the last layer.
    """
    implicit: frozenset[RelPath] = frozenset()
    for layer in layers:
        with layer.path.open("rb") as blob:
            implicit = apply_layer(
                root,
                decompressed(blob),
                layer=str(layer.digest),
                whiteouts=whiteouts,
                limits=limits,
                compressed_size=os.fstat(blob.fileno()).st_size,
            )
    return implicit


def apply_layer(
    root: Path,
    tar_stream: BinaryIO,
    *,
    layer: str,
    whiteouts: Whiteouts = "apply",
    limits: LayerLimits | None = None,
    compressed_size: int | None = None,
) -> frozenset[RelPath]:
    """Apply one uncompressed tar stream to the existing directory ``root``.

    ``layer`` names the layer (its digest) in errors; ``whiteouts`` applies
    them or writes them for overlayfs; the stream may have what ``limits``
    allow a blob of ``compressed_size`` (None: unknown) bytes, BadImage
    past it.  Returns the directories the layer made without a header.  The
    module docstring has the rules.
    """
    stream = LayerReader(tar_stream, layer, limits=limits, compressed_size=compressed_size)
    with _Tree(root, layer, overlay=whiteouts == "overlay") as tree:
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
                _Entry(tree, archive, member).apply()
            tree.finish()
            while stream.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError) as error:
            raise BadImage(f"bad layer {layer}: corrupt or truncated tar: {error}") from error
        return tree.implicit_dirs()


class _Tree:
    """The rootfs being written, reached only through directory descriptors.

    Remembers, for one layer, which resolved paths the layer made (so its
    whiteouts spare them) and which directories get their mode and mtime at
    the end.  Descriptors of recently used directories are cached by the
    path as written in the archive; any removal empties the cache, because a
    removed directory or symlink changes where cached paths lead.  A
    descriptor leaving the cache stays open until ``release``, so the entry
    in progress never sees its descriptors closed under it.
    """

    def __init__(self, root: Path, layer: str, *, overlay: bool = False) -> None:
        self.layer = layer
        self.overlay = overlay
        # Overlay mode: whiteout devices this layer made.  Both modes:
        # directories made for entries below them, without a header.
        self._whiteouts: set[RelPath] = set()
        self._implicit: set[RelPath] = set()
        # The caller chose root; following a symlink there is its business.
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.privileged = os.geteuid() == 0
        self.skipped: Counter[str] = Counter()
        self.skipped_paths: set[RelPath] = set()
        self._fds: OrderedDict[RelPath, tuple[int, RelPath]] = OrderedDict()
        self._retired: list[int] = []
        self._created: set[RelPath] = set()
        self._ancestors: set[RelPath] = set()  # strict ancestors of _created
        self._dirs: dict[RelPath, tuple[int, int]] = {}
        # Times of directories as the layer found them: adding or removing a
        # child changes a directory's mtime, and (as umoci does) a directory
        # the layer has no header for keeps the time the lower layer gave it.
        self._found_times: dict[RelPath, tuple[int, int]] = {}

    def __enter__(self) -> _Tree:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._invalidate()
        self.release()
        os.close(self.root_fd)

    def release(self) -> None:
        """Close descriptors that left the cache; called between entries."""
        while self._retired:
            os.close(self._retired.pop())

    def _invalidate(self) -> None:
        self._retired.extend(fd for fd, _ in self._fds.values())
        self._fds.clear()

    def _cache(self, path: RelPath, found: tuple[int, RelPath]) -> None:
        old = self._fds.pop(path, None)
        if old is not None:
            self._retired.append(old[0])
        self._fds[path] = found
        if len(self._fds) > FD_CACHE_SIZE:
            self._retired.append(self._fds.popitem(last=False)[1][0])

    def mark_created(self, path: RelPath) -> None:
        self._created.add(path)
        for end in range(len(path) - 1, -1, -1):
            if path[:end] in self._ancestors:
                break
            self._ancestors.add(path[:end])

    def defer_dir(self, path: RelPath, mode: int, mtime_ns: int) -> None:
        self._dirs[path] = (mode, mtime_ns)

    def walk(
        self, path: RelPath, entry: str, *, create: bool, follow: bool = True
    ) -> tuple[int, RelPath] | None:
        """The directory at ``path``: a descriptor (cache-owned) and its resolved path.

        With ``follow``, symlinks on the way are followed inside the rootfs;
        without, meeting one gives None.  A missing component is made when
        ``create``, else gives None.  A non-directory on the way is an error
        when ``create`` (the entry needs a parent), else gives None.
        """
        if not path:
            self._remember(self.root_fd, ())
            return self.root_fd, ()
        start, fd, resolved = 0, self.root_fd, path[:0]
        for end in range(len(path), 0, -1):
            hit = self._fds.get(path[:end])
            if hit is not None and (follow or hit[1] == path[:end]):
                if end == len(path):
                    self._fds.move_to_end(path)
                    return hit
                start, (fd, resolved) = end, hit
                break
        found = self._walk(fd, resolved, path[start:], entry, create=create, follow=follow)
        if found is not None:
            self._remember(*found)
            self._cache(path, found)
        return found

    def _remember(self, fd: int, resolved: RelPath) -> None:
        if resolved not in self._found_times:
            st = os.fstat(fd)
            self._found_times[resolved] = (st.st_atime_ns, st.st_mtime_ns)

    def _walk(
        self, fd: int, start: RelPath, parts: RelPath, entry: str, *, create: bool, follow: bool
    ) -> tuple[int, RelPath] | None:
        resolved = list(start)
        todo = list(reversed(parts))
        owned = done = False
        hops = 0
        try:
            while todo:
                part = todo.pop()
                if part == "..":  # only symlink targets bring these
                    if not resolved:
                        raise UnsafeLayer(self.layer, entry, "goes through a symlink above root")
                    step: int | str | None = os.open("..", _DIR_FLAGS, dir_fd=fd)
                    resolved.pop()
                else:
                    step = self._step(fd, resolved, part, entry, create=create)
                if step is None:
                    return None
                if isinstance(step, str):
                    hops += 1
                    if not follow:
                        return None
                    if hops > rules.MAX_SYMLINK_HOPS:
                        raise UnsafeLayer(self.layer, entry, "goes through too many symlinks")
                    absolute, more = rules.split_link_target(step)
                    if absolute:
                        if owned:
                            os.close(fd)
                        fd, owned, resolved = self.root_fd, False, []
                    todo.extend(reversed(more))
                    continue
                if part != "..":
                    resolved.append(part)
                if owned:
                    os.close(fd)
                fd, owned = step, True
            if not owned:
                fd, owned = os.dup(fd), True
            done = True
            return fd, tuple(resolved)
        finally:
            if owned and not done:
                os.close(fd)

    def _step(
        self, fd: int, resolved: list[str], part: str, entry: str, *, create: bool
    ) -> int | str | None:
        """Open directory ``part`` in ``fd``: its descriptor, a symlink's target, or None."""
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                return None
            self._remember(fd, tuple(resolved))  # before the mkdir changes its time
            return self._implicit_dir(fd, (*resolved, part))
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
        if create and (*resolved, part) in self._whiteouts:
            # The layer hid a lower NAME and puts things in NAME: a fresh,
            # opaque directory is what that means to overlayfs.
            os.unlink(part, dir_fd=fd)
            self._invalidate()
            return self._implicit_dir(fd, (*resolved, part))
        target = _readlink(fd, part)
        if target is None and create:
            where = "/".join((*resolved, part))
            raise bad_entry(self.layer, entry, f"needs {where!r} as a directory")
        return target

    def _implicit_dir(self, parent_fd: int, path: RelPath) -> int:
        """Make the missing directory ``path`` for an entry below it."""
        os.mkdir(path[-1], 0o755, dir_fd=parent_fd)
        child = os.open(path[-1], _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(child, 0o755)  # whatever the umask
        self.mark_created(path)
        if path in self._whiteouts:
            # Fresh over a hidden namesake: its own attributes are the union's.
            self._whiteouts.discard(path)
            _set_opaque(child)
        else:
            self._implicit.add(path)
        return child

    def implicit_dirs(self) -> frozenset[RelPath]:
        return frozenset(self._implicit - self._dirs.keys())

    def create(self, parent_fd: int, name: str, make: Callable[[], T]) -> T:
        """``make()`` the entry ``name``, replacing whatever is there."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent_fd, name)
            return make()

    def _remove(self, parent_fd: int, name: str) -> None:
        self._invalidate()
        if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)

    def make_dir(self, path: RelPath, parent_fd: int, resolved: RelPath) -> tuple[int, bool]:
        """The directory at ``path`` (made, or kept if one is there) and whether it was there."""
        hit = self._fds.get(path)
        if hit is not None and hit[1] == resolved:
            return hit[0], True
        name = resolved[-1]
        existed = False
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                existed = True
            else:
                self._remove(parent_fd, name)
                os.mkdir(name, 0o755, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        self._cache(path, (fd, resolved))
        if resolved in self._whiteouts:
            # Hidden lower namesake, own directory: an opaque one (overlay mode).
            self._whiteouts.discard(resolved)
            _set_opaque(fd)
        return fd, existed

    def hardlink(self, target: RelPath, parent_fd: int, resolved: RelPath, entry: str) -> None:
        found = self.walk(target[:-1], entry, create=False)
        source = "/".join(target)
        if found is None:
            raise self._no_link_source(entry, source)
        source_dir, source_parent = found
        source_name = target[-1]
        try:
            mode = os.stat(source_name, dir_fd=source_dir, follow_symlinks=False).st_mode
        except FileNotFoundError:
            if (*source_parent, source_name) in self.skipped_paths:
                return
            raise self._no_link_source(entry, source) from None
        if stat.S_ISDIR(mode):
            raise bad_entry(self.layer, entry, f"is a hardlink to the directory {source!r}")
        if (*source_parent, source_name) == resolved:
            return
        name = resolved[-1]
        self.create(
            parent_fd,
            name,
            lambda: os.link(
                source_name,
                name,
                src_dir_fd=source_dir,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            ),
        )

    def _no_link_source(self, entry: str, source: str) -> Exception:
        if self.overlay:
            # It may be in a lower layer: fine in a union, impossible in one layer alone.
            return BackendError(
                f"layer {self.layer}: entry {entry!r} is a hardlink to {source!r}, which is "
                "not in its own layer; the overlay backend cannot make it (use copy)"
            )
        return bad_entry(self.layer, entry, f"is a hardlink to {source!r}, which does not exist")

    def whiteout(self, path: RelPath, entry: str) -> None:
        if self.overlay:
            self._overlay_whiteout(path, entry)
            return
        found = self.walk(path[:-1], entry, create=False)
        if found is not None:
            self._hide(found[0], path[-1], (*found[1], path[-1]))

    def _overlay_whiteout(self, path: RelPath, entry: str) -> None:
        if not self.privileged:
            raise BackendError(f"layer {self.layer}: entry {entry!r}: whiteouts need root")
        found = self.walk(path[:-1], entry, create=True)
        assert found is not None  # walk with create either finds, makes or raises
        parent_fd, parent = found
        name = path[-1]
        try:
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent_fd)
            self._whiteouts.add((*parent, name))
            return
        if stat.S_ISDIR(mode):
            # The layer's own directory: it keeps its entries, loses the lower ones.
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                _set_opaque(fd)
            finally:
                os.close(fd)
        # Any other entry of the layer hides its lower namesake by itself.

    def opaque(self, path: RelPath, entry: str) -> None:
        if self.overlay:
            made = self.walk(path, entry, create=True)
            assert made is not None  # walk with create either finds, makes or raises
            _set_opaque(made[0])
            return
        found = self.walk(path, entry, create=False)
        if found is not None:
            for child in os.listdir(found[0]):
                self._hide(found[0], child, (*found[1], child))

    def _hide(self, parent_fd: int, name: str, path: RelPath) -> None:
        """Remove what lower layers made at ``path``, keeping what this layer made."""
        try:
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if path not in self._created and path not in self._ancestors:
            self._remove(parent_fd, name)
        elif stat.S_ISDIR(mode):
            # Ours, or holding something of ours: its lower children go.
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                for child in os.listdir(fd):
                    self._hide(fd, child, (*path, child))
            finally:
                os.close(fd)

    def finish(self) -> None:
        """Set the deferred directory modes and mtimes, deepest first."""
        for path in sorted(self._dirs, key=len, reverse=True):
            mode, mtime_ns = self._dirs[path]
            entry = "/".join(path) or "."
            try:
                if not path:
                    _set_dir_times(self.root_fd, mode, mtime_ns)
                    continue
                found = self.walk(path[:-1], entry, create=False, follow=False)
                if found is None:
                    continue  # a later entry of the layer replaced it
                try:
                    fd = os.open(path[-1], _DIR_FLAGS, dir_fd=found[0])
                except OSError:
                    continue
                try:
                    _set_dir_times(fd, mode, mtime_ns)
                finally:
                    os.close(fd)
            except OSError as error:
                raise _backend_error(self.layer, entry, error) from error
            finally:
                self.release()
        self._restore_found_times()
        for what, count in sorted(self.skipped.items()):
            log.warning("layer %s: skipped %d %s", self.layer, count, what)

    def _restore_found_times(self) -> None:
        for path, times in list(self._found_times.items()):
            if path in self._dirs:
                continue  # the layer's own header decided this one's time
            if not path:
                os.utime(self.root_fd, ns=times)
                continue
            found = self.walk(path[:-1], "/".join(path), create=False, follow=False)
            try:
                if found is not None:
                    fd = os.open(path[-1], _DIR_FLAGS, dir_fd=found[0])
                    try:
                        os.utime(fd, ns=times)
                    finally:
                        os.close(fd)
            except OSError:
                continue  # removed or replaced later in the layer: nothing to keep
            finally:
                self.release()


def _set_opaque(fd: int) -> None:
    os.setxattr(fd, OVERLAY_OPAQUE, b"y")


def _set_dir_times(fd: int, mode: int, mtime_ns: int) -> None:
    os.fchmod(fd, mode)
    os.utime(fd, ns=(mtime_ns, mtime_ns))


def _readlink(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.EINVAL:  # not a symlink
            return None
        raise


def _backend_error(layer: str, entry: str, error: OSError) -> BackendError:
    return BackendError(f"layer {layer}: entry {entry!r}: {error.strerror or error}")


class _Entry:
    """One tar member, applied to the tree."""

    def __init__(self, tree: _Tree, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.tree = tree
        self.archive = archive
        self.member = member
        self.name = member.name
        self.layer = tree.layer

    def apply(self) -> None:
        try:
            self._apply()
        except OSError as error:
            raise _backend_error(self.layer, self.name, error) from error
        except OverflowError as error:
            # Numbers no syscall takes (device numbers) come from the archive.
            raise bad_entry(self.layer, self.name, f"has impossible values: {error}") from error
        finally:
            self.tree.release()

    def _apply(self) -> None:
        rule = rules.rule_for(self.name, layer=self.layer)
        if rule.action is rules.Action.IGNORE:
            return
        if rule.action is rules.Action.WHITEOUT:
            self.tree.whiteout(rule.path, self.name)
            return
        if rule.action is rules.Action.OPAQUE:
            self.tree.opaque(rule.path, self.name)
            return
        member, path, tree = self.member, rule.path, self.tree
        if member.size > MAX_ENTRY_SIZE:
            raise bad_entry(self.layer, self.name, f"claims {member.size} bytes")
        if not path:
            if not member.isdir():
                raise bad_entry(self.layer, self.name, "is the root but not a directory")
            self._attributes(tree.root_fd, tree.root_fd, ".", replace_xattrs=True)
            tree.defer_dir((), member.mode & 0o7777, self._mtime_ns())
            return
        found = tree.walk(path[:-1], self.name, create=True)
        assert found is not None  # walk with create either finds, makes or raises
        parent_fd, parent = found
        name = path[-1]
        resolved = (*parent, name)
        if member.isdir():
            fd, existed = tree.make_dir(path, parent_fd, resolved)
            self._attributes(fd, parent_fd, name, replace_xattrs=existed)
            tree.defer_dir(resolved, member.mode & 0o7777, self._mtime_ns())
        elif member.isreg():
            self._regular(parent_fd, name)
        elif member.issym():
            target = member.linkname
            rules.check_symlink_target(target, layer=self.layer, entry=self.name)
            tree.create(parent_fd, name, lambda: os.symlink(target, name, dir_fd=parent_fd))
            self._attributes(None, parent_fd, name)
        elif member.islnk():
            target_path = rules.hardlink_target(member.linkname, layer=self.layer, entry=self.name)
            # The link shares its target's inode and so its attributes.
            tree.hardlink(target_path, parent_fd, resolved, self.name)
        elif member.ischr() or member.isblk() or member.isfifo():
            if not member.isfifo() and not tree.privileged:
                tree.skipped["device nodes (making them needs root)"] += 1
                tree.skipped_paths.add(resolved)
                return
            if tree.overlay and member.ischr() and member.devmajor == member.devminor == 0:
                raise BackendError(
                    f"layer {self.layer}: entry {self.name!r} is a 0/0 character device, "
                    "which overlayfs would take for a whiteout"
                )
            self._node(parent_fd, name)
        else:
            raise bad_entry(self.layer, self.name, f"has the unsupported tar type {member.type!r}")
        tree.mark_created(resolved)

    def _regular(self, parent_fd: int, name: str) -> None:
        layout = file_layout(self.member, layer=self.layer)
        fd = self.tree.create(
            parent_fd, name, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
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
            self._attributes(fd, parent_fd, name)
        finally:
            os.close(fd)

    def _node(self, parent_fd: int, name: str) -> None:
        member = self.member
        if member.isfifo():
            kind, device = stat.S_IFIFO, 0
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
        self.tree.create(
            parent_fd, name, lambda: os.mknod(name, kind | 0o600, device, dir_fd=parent_fd)
        )
        self._attributes(None, parent_fd, name)

    def _mtime_ns(self) -> int:
        return pax_mtime_ns(self.member, self.layer)

    def _attributes(
        self, fd: int | None, parent_fd: int, name: str, *, replace_xattrs: bool = False
    ) -> None:
        """Owner, then mode, xattrs and mtime: chown clears setuid and capabilities.

        ``fd`` is the object itself where opening it is safe (directories,
        regular files); otherwise ``name`` in ``parent_fd`` is changed
        without following it.  Directories get mode and mtime in ``finish``.
        """
        member = self.member
        if self.tree.privileged:
            if not (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID):
                raise bad_entry(self.layer, self.name, f"has the owner {member.uid}:{member.gid}")
            if fd is not None:
                os.fchown(fd, member.uid, member.gid)
            else:
                os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        directory = member.isdir()
        if not directory and not member.issym():
            if fd is not None:
                os.fchmod(fd, member.mode & 0o7777)
            else:
                os.chmod(name, member.mode & 0o7777, dir_fd=parent_fd, follow_symlinks=False)
        xattrs = self._xattrs()
        if xattrs or replace_xattrs:
            # Symlinks and nodes cannot be opened safely; reach them through
            # their pinned parent, without following the last component.
            where: int | str = fd if fd is not None else f"/proc/self/fd/{parent_fd}/{name}"
            self._set_xattrs(where, xattrs, replace=replace_xattrs)
        if not directory:
            mtime_ns = self._mtime_ns()
            if fd is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            else:
                os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def _xattrs(self) -> dict[str, bytes]:
        if not self.member.pax_headers:
            return {}
        found = pax_xattrs(self.member, self.layer)
        if self.tree.overlay:
            for name in [n for n in found if n.startswith(OVERLAY_XATTR_PREFIX)]:
                # They would forge whiteouts, opaque dirs or redirects.
                del found[name]
                self.tree.skipped["overlayfs' own xattrs"] += 1
        return found

    def _set_xattrs(self, where: int | str, xattrs: dict[str, bytes], *, replace: bool) -> None:
        """Set ``xattrs``; with ``replace``, first drop those a lower layer left.

        What the filesystem or our privileges refuse (user.* on a symlink,
        security.* unprivileged) is counted and reported, not fatal.
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
            self.tree.skipped[f"xattrs ({os.strerror(error.errno or 0)})"] += 1
