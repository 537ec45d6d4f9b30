"""The backend interface: build a rootfs from an image's layers, and take it down.

A backend is given the layers as descriptors (``providers.manifest.Layer``:
digest, media type, size, diff_id) and a ``LocalBlobSource`` to read them
from, never paths.  Copy, bind and overlay ask the source for each layer as
a verified local file (``local_blob``) before they start building; fuse
need not have the bytes local at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from providers.manifest import Layer
from providers.source import LocalBlobSource


@dataclass(frozen=True)
class Rootfs:
    path: Path
    backend: str
    writable: bool


def scratch_dir(rootfs: Path) -> Path:
    """A rootfs's own working space beside it (upper and work directories, logs), as Mesos keeps.

    ``.../rootfses/<id>`` has ``.../scratch/<id>``; destroy removes it with the rootfs.
    """
    return rootfs.parent.parent / "scratch" / rootfs.name


class Backend(Protocol):
    name: str

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        """Build the union of ``layers`` (bottom first), read from ``blobs``, at ``rootfs``.

        ``rootfs`` does not exist yet; its parent does. On failure nothing is
        left mounted and the caller removes ``rootfs``; a layer ``blobs``
        cannot give (NotFound, DigestMismatch) fails before anything is
        made. Blocking.
        """
        ...

    def destroy(self, rootfs: Path) -> None:
        """Unmount and remove ``rootfs``. Idempotent: a missing rootfs is fine."""
        ...


@runtime_checkable
class Remountable(Protocol):
    """A backend that can mount a rootfs again once its mount is gone (a reboot) or dead."""

    def remount(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> None:
        """Mount ``rootfs``, provisioned earlier from ``layers`` in ``blobs``, again in place.

        Clears what is left of the old mount first. Raises BackendError when
        this backend cannot (then ``rootfs`` is left as it was). Blocking.
        """
        ...
