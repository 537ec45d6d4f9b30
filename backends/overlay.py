"""The overlay backend: a kernel overlayfs mount of layers extracted once.

Each layer is extracted once into the store in overlayfs' lower form
(``<layers_dir>/<hex>/overlay-v2``, see ``backends.extracted``) and shared by
every container using it; provisioning a rootfs copies no file.  Per rootfs,
``<rootfs>/../../scratch/<rootfs name>/`` (as Mesos keeps per-rootfs scratch)
holds what belongs to that container alone:

    l/0 .. l/N-1   symlinks to the layers, top first: short names keep the
                   mount options within the kernel's one page however many
                   layers and however long the store path
    top/           read-only rootfs: a directory stacked above the layers,
                   holding the root's and the union's directory attributes
                   and whiteouts over directories only markers made
                   (``backends.overlay_dirs``); it also makes a one-layer
                   image two lowers, the least overlayfs takes without upper
    upper/ work/   writable rootfs: the container's writes (what top/ would
                   hold goes in upper/ instead)

Layers below one whose root is opaque are left out of the mount; a layer the
image holds twice is extracted twice (overlayfs takes no directory twice).
A hardlink to a file of another layer, or a layer writing through a lower
non-directory, cannot be shown by stacking layers extracted alone: that is a
``BackendError`` saying so (the copy and fuse backends show such images);
a hardlink to nothing is the bad image it is for every backend.

The scratch directory and its parent are closed to other users (``0700``,
see ``providers.private_dir``): upper/ holds the container's copies of setuid
files and l/ leads to the shared layers.

The mount is made by util-linux ``mount`` in a child process whose working
directory is the scratch directory, so every path in the options is
relative and short; lazyfs itself never changes directory (it runs threads).
The rootfs is mounted private, read-only unless writable was asked.

``remount`` mounts a rootfs again where its mount went (a reboot) from what
the scratch directory kept, a writable one with the container's writes; it
mounts only the layers' trees the links lead to, once it has found them to
be the recorded layers' in the store, never extracted again.
``destroy`` unmounts (everything under the rootfs first, then it), removes
the empty mount point and the scratch directory; the shared layers stay.
It is idempotent. ``overlay_usable`` is the probe that decides whether this
backend can run on a store at all.  All of it blocking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from backends.apply import LayerFile, local_files
from backends.apply_tree import LinkOutsideLayer
from backends.base import Rootfs, scratch_dir
from backends.extracted import extracted_layer, made_dirs
from backends.mounts import MS_PRIVATE, is_mounted, mount, unmount, unmount_all_under
from backends.overlay_dirs import (
    LowerDir,
    first_mounted,
    plan_top_dirs,
    union_kind,
    write_top_dirs,
)
from providers.digest import hex_part
from providers.errors import BackendError
from providers.fstree import remove_tree
from providers.layer_entry import link_to_directory, no_link_source
from providers.manifest import Layer
from providers.private_dir import private_dir
from providers.source import LocalBlobSource
from providers.tar_stream import LayerLimits

# mount(2) takes its options in one page, the terminating NUL included.
MAX_OPTIONS = 4095
MAX_LOWERS = 500  # lower directories overlayfs stacks at most (OVL_MAX_STACK)

# What the probe's writes fail with when the store's filesystem cannot take
# anything now (full, over quota), whichever backend wrote there: not a
# reason to choose another. EIO is not among them: overlayfs answers it for
# reasons of its own, which are. Nor is EROFS: a store on a
# read-only filesystem cannot hold overlay's layers while copy still builds
# rootfses in a work dir elsewhere from its blobs.
_UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT})


class OverlayBackend:
    """Read-only or copy-on-write; needs root, overlayfs, and a store that can hold its layers."""

    name = "overlay"

    def __init__(self, layers_dir: Path, tmp_dir: Path, limits: LayerLimits | None = None) -> None:
        self.layers_dir = layers_dir
        self.tmp_dir = tmp_dir
        self.limits = limits

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        if not layers:
            raise BackendError("the overlay backend needs an image of at least one layer")
        if os.geteuid() != 0:
            # Said before any layer is extracted: mount(8) mounts overlayfs for root
            # alone, and would say so only after all of that, in two lines.
            raise BackendError(
                f"the overlay backend needs root to mount overlayfs, and this is uid "
                f"{os.geteuid()}: use --backend copy"
            )
        # Said before any layer is extracted too: where listings carry no file types,
        # the mount works but whiteouts show (and rm -r of image directories fails).
        for directory in _own_filesystems(self.tmp_dir, rootfs.parent):
            if not file_types_listed(directory):
                raise BackendError(
                    f"the overlay backend cannot use {directory}: its filesystem lists no file"
                    " types (d_type), which overlayfs needs to hide whiteouts: use --backend copy"
                )
        if (stacked := len(layers) + (not writable)) > MAX_LOWERS:  # a read-only one's top/
            raise BackendError(  # before any layer is extracted, not as mount(8)'s "wrong fs"
                f"the overlay backend stacks at most {MAX_LOWERS} directories (the kernel's"
                f" limit); this rootfs needs {stacked}: use --backend copy or fuse"
            )
        lowers = self._lowers(local_files(layers, blobs))
        mounted = lowers[first_mounted(lowers) :]
        scratch = scratch_dir(rootfs)
        private_dir(scratch.parent)
        private_dir(scratch, exist_ok=False)
        try:
            private_dir(scratch / "l")
            for index, lower in enumerate(reversed(mounted)):
                os.symlink(lower.path, scratch / "l" / str(index))
            plan = plan_top_dirs(lowers)
            if writable:
                # upper/'s mode is the root's: write_top_dirs sets it.
                for part in ("upper", "work"):
                    private_dir(scratch / part)
                write_top_dirs(scratch / "upper", plan)
            else:
                private_dir(scratch / "top")
                write_top_dirs(scratch / "top", plan)
            rootfs.mkdir(mode=0o755)
            _mount(scratch, rootfs, len(mounted), writable=writable)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(scratch)  # top/ or upper/ may be as deep as the image
            raise
        return Rootfs(rootfs, self.name, writable=writable)

    def remount(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> None:
        """Mount ``rootfs`` again from its scratch directory, as ``provision`` mounted it.

        After a reboot the scratch directory still holds the links to the
        layers and top/, or upper/ with the container's writes and work/
        (whose ``work/work`` the old mount may have left full: overlayfs
        empties it when it mounts).  Only what was recorded is mounted: the
        links must lead, top first, to the store's trees of the top layers
        of ``layers`` (all of them, or down to the one whose opaque root
        hides the rest), each still extracted there.  None is extracted
        again: the writes in upper/ were made over those trees, and a layer
        GC or a person removed says the store lost what this container
        uses.  BackendError says what is missing, and nothing is mounted.
        ``blobs`` is not read: the trees are what is mounted.
        """
        scratch = scratch_dir(rootfs)
        count = self._check_links(layers, scratch / "l")
        for part in ("upper", "work") if writable else ("top",):
            kept = scratch / part
            if kept.is_symlink() or not kept.is_dir():
                raise BackendError(f"{kept}, which this rootfs mounts, is gone")
        unmount_all_under(rootfs)  # whatever is left there
        _mount(scratch, rootfs, count, writable=writable)

    def _check_links(self, layers: Sequence[Layer], links: Path) -> int:
        """How many of ``layers``, the top ones, the links in ``links`` stack, once each
        is found to lead to that layer's tree in this store, extracted (``remount``)."""
        try:
            names = sorted(os.listdir(links), key=lambda name: (len(name), name))
        except OSError as error:
            raise BackendError(
                f"{links}, the links to its layers, is gone: {error.strerror}"
            ) from None
        if not 0 < len(names) <= len(layers) or names != [str(i) for i in range(len(names))]:
            raise BackendError(
                f"{links} holds {', '.join(names) or 'nothing'}, not the links to the top of"
                f" its image's {len(layers)} layers"
            )
        stacked: list[LowerDir] = []
        for index, layer in enumerate(reversed(layers[len(layers) - len(names) :])):
            link = links / str(index)
            if not link.is_symlink():
                raise BackendError(f"{link} is no link to a layer")
            tree = Path(os.readlink(link))
            if not tree.is_dir():
                raise BackendError(
                    f"layer {layer.digest} is no longer extracted in the store ({tree} is gone)"
                )
            if not _same_file(tree.parent, self.layers_dir / hex_part(layer.digest)):
                raise BackendError(
                    f"{link} leads to {tree}, not to layer {layer.digest} in {self.layers_dir}"
                )
            stacked.insert(0, LowerDir(tree, made_dirs(tree)))
        # As provision chose them: below the topmost opaque root nothing, down to it everything.
        if first_mounted(stacked) != 0 or (
            len(stacked) < len(layers) and not stacked[0].root_opaque
        ):
            raise BackendError(f"{links} does not stack the layers its image's opaque roots leave")
        return len(stacked)

    def _lowers(self, layers: Sequence[LayerFile]) -> list[LowerDir]:
        """Every layer extracted in overlay form, bottom first.

        overlayfs takes no directory twice in one mount: a layer the image
        holds twice gets a second copy in the store.
        """
        lowers: list[LowerDir] = []
        seen: Counter[str] = Counter()
        for layer in layers:
            replica = seen[layer.digest]
            seen[layer.digest] += 1
            try:
                path = extracted_layer(
                    self.layers_dir, self.tmp_dir, layer, "overlay", self.limits, replica=replica
                )
            except LinkOutsideLayer as error:
                raise _link_verdict(error, lowers) from error
            lowers.append(LowerDir(path, made_dirs(path)))
        return lowers

    def destroy(self, rootfs: Path) -> None:
        if rootfs.exists():
            # A runtime may have left mounts inside (proc, dev); the rootfs
            # mount itself is among them.
            unmount_all_under(rootfs)
            rootfs.rmdir()
        scratch = scratch_dir(rootfs)
        if scratch.exists():
            unmount_all_under(scratch)  # never delete through a mount
            # upper/ holds whatever the container made, at any depth.
            remove_tree(scratch)


def _mount(scratch: Path, rootfs: Path, layers: int, *, writable: bool) -> None:
    """Mount the overlay kept in ``scratch`` on ``rootfs``, private: its first ``layers``
    links l/0.. (top first) under upper/ and work/ if ``writable``, else under top/.

    The one place the mount options are made, by ``provision`` and ``remount`` alike.
    """
    names = [f"l/{index}" for index in range(layers)]
    if writable:
        options = f"lowerdir={':'.join(names)},upperdir=upper,workdir=work"
    else:
        options = f"ro,lowerdir={':'.join(['top', *names])}"
    mount_overlay(options, rootfs, cwd=scratch)
    try:
        # Private, so mounts a runtime makes inside do not propagate out.
        mount("none", rootfs, None, MS_PRIVATE)
    except BaseException:
        unmount(rootfs)
        raise


def _same_file(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False  # one is gone


def _link_verdict(error: LinkOutsideLayer, below: Sequence[LowerDir]) -> Exception:
    """What a hardlink out of its own layer is in the image below it, as copy would say."""
    kind = union_kind(list(reversed(below)), tuple(error.source.split("/")))
    if kind == "missing":
        return no_link_source(error.layer, error.entry, error.source)
    if kind == "dir":
        return link_to_directory(error.layer, error.entry, error.source)
    return error  # there, but in another layer: overlay cannot link it


def mount_overlay(options: str, target: Path, *, cwd: Path) -> None:
    """Mount overlayfs on ``target`` with ``options``, relative paths taken from ``cwd``."""
    if len(options.encode()) > MAX_OPTIONS:
        raise BackendError(
            f"overlay mount options of {len(options)} bytes exceed the kernel's {MAX_OPTIONS}"
        )
    argv = ["mount", "-t", "overlay", "-o", options, "overlay", str(target)]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BackendError("mount(8) from util-linux is not installed") from None
    if done.returncode != 0:
        reason = _mount_reason(done.stderr, target) or f"exit status {done.returncode}"
        raise BackendError(f"the overlay backend cannot mount {target}: {reason}")


def _mount_reason(stderr: str, target: Path) -> str:
    """The reason in mount(8)'s ``stderr`` on one line: its first, without the
    ``mount: TARGET:`` the error says already (the next lines point to dmesg)."""
    lines = stderr.strip().splitlines()
    if not lines:
        return ""
    return lines[0].strip().removeprefix("mount: ").removeprefix(f"{target}: ")


def _own_filesystems(*directories: Path) -> list[Path]:
    """``directories``, less those on the filesystem of one before them."""
    devices: set[int] = set()
    kept = []
    for directory in directories:
        device = os.stat(directory).st_dev
        if device not in devices:
            devices.add(device)
            kept.append(directory)
    return kept


def file_types_listed(directory: Path) -> bool:
    """Whether listings on ``directory``'s filesystem say each entry's type (d_type).

    overlayfs tells a whiteout from a file by the type its lower's and
    upper's listings give; ext4 made without ``filetype`` and xfs with
    ``ftype=0`` give none (DT_UNKNOWN), and docker refuses overlay2 there.
    Lists a directory holding one file and removes the file before asking
    the entry what it is: an entry with a type answers from it, one without
    must stat the file, which is gone by then.  Leaves nothing behind.
    """
    probe = Path(tempfile.mkdtemp(dir=directory, prefix=f"{os.getpid()}.types."))
    try:
        (probe / "file").touch()
        with os.scandir(probe) as listing:
            entries = list(listing)
        (probe / "file").unlink()
        return len(entries) == 1 and entries[0].is_file(follow_symlinks=False)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def overlay_usable(tmp_dir: Path) -> bool:
    """Whether overlayfs works here with its layers and upper on ``tmp_dir``'s filesystem.

    Tries a tiny mount with a whiteout, an opaque directory and a write in a
    scratch directory ``<tmp_dir>/<pid>.<random>``, and removes it all; the
    filesystem must also list file types (``file_types_listed``), which the
    mount does not check by itself.
    Raises OSError, naming ``tmp_dir``, when a write there fails for want
    of room (``_UNWRITABLE``): that says nothing of
    overlayfs, and no backend could provision there now.
    """
    try:
        with open("/proc/filesystems", encoding="ascii") as table:
            if not any(line.split()[-1:] == ["overlay"] for line in table):
                return False
    except OSError:
        return False
    if os.geteuid() != 0:
        return False
    try:
        trial = Path(tempfile.mkdtemp(dir=tmp_dir, prefix=f"{os.getpid()}."))
    except OSError as error:
        _raise_unwritable(error, tmp_dir)
        return False
    merged = trial / "merged"
    try:
        if not file_types_listed(trial):
            return False
        for part in ("low", "high", "upper", "work", "merged", "low/d"):
            (trial / part).mkdir()
        (trial / "low" / "gone").write_text("x")
        (trial / "low" / "d" / "hidden").write_text("x")
        os.mknod(trial / "high" / "gone", stat.S_IFCHR, os.makedev(0, 0))
        (trial / "high" / "d").mkdir()
        os.setxattr(trial / "high" / "d", "trusted.overlay.opaque", b"y")
        mount_overlay("lowerdir=high:low,upperdir=upper,workdir=work", merged, cwd=trial)
        try:
            (merged / "written").write_text("x")
            return not (merged / "gone").exists() and not any((merged / "d").iterdir())
        finally:
            unmount(merged)
    except BackendError:
        return False
    except OSError as error:
        _raise_unwritable(error, tmp_dir)
        return False
    finally:
        # Never delete through a mount that would not go away.
        if not is_mounted(merged):
            shutil.rmtree(trial, ignore_errors=True)


def _raise_unwritable(error: OSError, tmp_dir: Path) -> None:
    """Raise ``error`` as the store's, on one line naming ``tmp_dir``, if it is ``_UNWRITABLE``."""
    if error.errno in _UNWRITABLE:
        strerror = f"{error.strerror} while trying overlayfs for the default backend"
        raise OSError(error.errno, strerror, str(tmp_dir)) from None
