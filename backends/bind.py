"""The bind backend: a one-layer image, extracted once, bind-mounted read-only.

As in Mesos, it copies nothing per container and so cannot union layers: an
image of more than one layer is refused. The extracted layer lives in the
store (``layers/<hex>/rootfs-v2``) and is shared by every container using it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backends.base import LayerFile, Rootfs
from backends.extracted import extracted_layer
from backends.mounts import bind_mount, unmount, unmount_all_under
from providers.errors import BackendError


class BindBackend:
    name = "bind"

    def __init__(self, layers_dir: Path, tmp_dir: Path) -> None:
        self.layers_dir = layers_dir
        # Scratch space on the same filesystem, named by pid, so the store's
        # clean-up finds what a crashed extraction left.
        self.tmp_dir = tmp_dir

    def provision(self, layers: Sequence[LayerFile], rootfs: Path, *, writable: bool) -> Rootfs:
        if len(layers) != 1:
            raise BackendError(
                f"the bind backend needs an image of exactly one layer, this one has {len(layers)}"
            )
        # Read-only whatever was asked, as in Mesos: writes need volumes.
        source = self.extracted(layers[0])
        rootfs.mkdir(mode=0o755)
        bind_mount(source, rootfs, readonly=True)
        return Rootfs(rootfs, self.name, writable=False)

    def destroy(self, rootfs: Path) -> None:
        if not rootfs.exists():
            return
        unmount_all_under(rootfs)
        unmount(rootfs)
        rootfs.rmdir()

    def extracted(self, layer: LayerFile) -> Path:
        """The layer's tree under the store, extracted once, atomically."""
        return extracted_layer(self.layers_dir, self.tmp_dir, layer, "rootfs")
