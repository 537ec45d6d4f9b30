"""The bind backend: a one-layer image, extracted once, bind-mounted read-only.

As in Mesos, it copies nothing per container and so cannot union layers: an
image of more than one layer is refused.  ``remount`` binds the layer again
where the mount went away (a reboot). The extracted layer lives in the
store (``layers/<hex>/rootfs-v2``) and is shared by every container using it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from backends.apply import LayerFile, local_files
from backends.base import Rootfs
from backends.extracted import extracted_layer
from backends.mounts import bind_mount, unmount, unmount_all_under
from providers.errors import BackendError
from providers.manifest import Layer
from providers.source import LocalBlobSource
from providers.tar_stream import LayerLimits


class BindBackend:
    name = "bind"

    def __init__(self, layers_dir: Path, tmp_dir: Path, limits: LayerLimits | None = None) -> None:
        self.layers_dir = layers_dir
        # Scratch space on the same filesystem, named by pid, so the store's
        # clean-up finds what a crashed extraction left.
        self.tmp_dir = tmp_dir
        self.limits = limits

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        if writable:
            # Read-only, as in Mesos (writes need volumes): refused, never given silently.
            # Said with what works, for each way one asks for a writable rootfs.
            raise BackendError(
                "the bind backend makes read-only rootfses only: use run --read-only, "
                "provision without --writable and volumes without :rw, "
                "or another backend (copy, overlay or fuse) for a writable one"
            )
        if os.geteuid() != 0:
            # Said before the layer is extracted: only root may bind-mount it.
            raise BackendError(
                f"the bind backend needs root to bind-mount a layer, and this is uid "
                f"{os.geteuid()}: use --backend copy"
            )
        if len(layers) != 1:
            raise BackendError(
                f"the bind backend needs an image of exactly one layer, this one has {len(layers)}"
            )
        source = self.extracted(*local_files(layers, blobs))
        rootfs.mkdir(mode=0o755)
        bind_mount(source, rootfs, readonly=True)
        return Rootfs(rootfs, self.name, writable=False)

    def remount(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> None:
        """Bind the extracted layer (extracted again if it went) on ``rootfs`` again."""
        if writable or len(layers) != 1:
            raise BackendError("the bind backend never made this rootfs")
        source = self.extracted(*local_files(layers, blobs))
        unmount(rootfs)  # whatever is left there
        bind_mount(source, rootfs, readonly=True)

    def destroy(self, rootfs: Path) -> None:
        if not rootfs.exists():
            return
        unmount_all_under(rootfs)
        unmount(rootfs)
        rootfs.rmdir()

    def extracted(self, layer: LayerFile) -> Path:
        """The layer's tree under the store, extracted once, atomically."""
        return extracted_layer(self.layers_dir, self.tmp_dir, layer, "rootfs", self.limits)
