"""The copy backend: every layer applied in order into a fresh directory.

As root the files get the image's owners; as another user they are that
user's, with the image's owners in ``user.rootlesscontainers`` xattrs, as
``umoci unpack --rootless`` writes them (``backends.rootless_owners``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from backends.apply import apply_layers, local_files
from backends.base import Rootfs
from backends.mounts import unmount_all_under
from providers.durable import written_back
from providers.errors import BackendError
from providers.fstree import remove_tree
from providers.manifest import Layer
from providers.source import LocalBlobSource
from providers.tar_stream import LayerLimits


class CopyBackend:
    """Writable, needs no kernel support, costs a full copy per container."""

    name = "copy"

    def __init__(self, limits: LayerLimits | None = None) -> None:
        self.limits = limits

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        refuse_noexec(rootfs.parent, self.name)
        files = local_files(layers, blobs)
        # On disk before the provision records it made: a power cut after must not leave
        # a container recover keeps with empty files. Its parent: the image sets the
        # rootfs' own mode, which may keep even its owner out.
        with written_back(rootfs.parent):
            rootfs.mkdir(mode=0o755)
            # As a user other than root the files are the user's; the image's owners
            # go where rootless tools (umoci repack, rootless runc, PRoot) look.
            apply_layers(rootfs, files, limits=self.limits, rootless_owners=True)
        # The tree is the container's own, so it is writable whatever was asked.
        return Rootfs(rootfs, self.name, writable=True)

    def destroy(self, rootfs: Path) -> None:
        if not rootfs.exists():
            return
        # A runtime may have left mounts inside (proc, dev); never delete through them.
        unmount_all_under(rootfs)
        remove_tree(rootfs)


def refuse_noexec(directory: Path, backend: str) -> None:
    """Raise BackendError, naming ``directory``, if its filesystem is mounted noexec.

    A rootfs copied there provisions fine and then runs nothing: runc
    answers "permission denied" only when the container starts.  An overlay
    or fuse rootfs is a mount of its own, without noexec; so is bind's (its
    read-only remount does not carry the source's noexec).
    """
    if os.statvfs(directory).f_flag & os.ST_NOEXEC:
        raise BackendError(
            f"the {backend} backend cannot make a runnable rootfs from {directory}: its"
            " filesystem is mounted noexec: use --backend overlay or fuse"
        )
