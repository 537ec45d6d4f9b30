"""The copy backend: every layer applied in order into a fresh directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backends.apply import apply_layers
from backends.base import LayerFile, Rootfs
from backends.mounts import unmount_all_under
from providers.fstree import remove_tree
from providers.tar_stream import LayerLimits


class CopyBackend:
    """Writable, needs no kernel support, costs a full copy per container."""

    name = "copy"

    def __init__(self, limits: LayerLimits | None = None) -> None:
        self.limits = limits

    def provision(self, layers: Sequence[LayerFile], rootfs: Path, *, writable: bool) -> Rootfs:
        rootfs.mkdir(mode=0o755)
        apply_layers(rootfs, layers, limits=self.limits)
        # The tree is the container's own, so it is writable whatever was asked.
        return Rootfs(rootfs, self.name, writable=True)

    def destroy(self, rootfs: Path) -> None:
        if not rootfs.exists():
            return
        # A runtime may have left mounts inside (proc, dev); never delete through them.
        unmount_all_under(rootfs)
        remove_tree(rootfs)
