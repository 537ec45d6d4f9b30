"""The backend interface: build a rootfs from layer blobs, and take it down."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from providers.digest import Digest


@dataclass(frozen=True)
class LayerFile:
    """A verified layer blob in the store, as stored (compressed or not)."""

    digest: Digest
    path: Path
    media_type: str


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

    def provision(self, layers: Sequence[LayerFile], rootfs: Path, *, writable: bool) -> Rootfs:
        """Build the union of ``layers`` (bottom first) at ``rootfs``.

        ``rootfs`` does not exist yet; its parent does. On failure nothing is
        left mounted and the caller removes ``rootfs``. Blocking.
        """
        ...

    def destroy(self, rootfs: Path) -> None:
        """Unmount and remove ``rootfs``. Idempotent: a missing rootfs is fine."""
        ...


@runtime_checkable
class Remountable(Protocol):
    """A backend that can mount a rootfs again once its mount is gone (a reboot) or dead."""

    def remount(self, layers: Sequence[LayerFile], rootfs: Path, *, writable: bool) -> None:
        """Mount ``rootfs``, provisioned earlier from ``layers``, again in place.

        Clears what is left of the old mount first. Raises BackendError when
        this backend cannot (then ``rootfs`` is left as it was). Blocking.
        """
        ...
