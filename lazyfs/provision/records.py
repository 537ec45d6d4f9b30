"""What the provisioner records and reports, and the checks on what it is given.

``ProvisionInfo`` is a provisioned container as ``info.json`` records it (see
``lazyfs.provision.provisioner`` for where), with its image volumes
(``VolumeInfo``); ``load_info`` reads it back with each image from the store
(``lazyfs.provision.usage`` reads the record alone). ``RecoverReport`` is what
``recover`` did.  ``check_container_id`` and ``require_layers`` refuse what
no backend should be handed; ``one_line`` words an error for a report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyfs.provision.usage import DESTROYING, ContainerRecord, ImageRecord
from lazyfs.store.atomic import write_atomic
from lazyfs.store.disk import DAMAGE, Store, manifest_of
from providers.digest import Digest
from providers.errors import BadImage, LazyfsError, NotFound, UsageError
from providers.manifest import ImageManifest, RuntimeConfig

# Taken with fullmatch: `$` matches before a final newline, so "abc\n" passed.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class VolumeInfo:
    """An image volume of a container: its own rootfs, mounted at ``container_path``.

    ``mode`` is what was asked (``ro`` unless ``rw``); ``writable`` is what
    the backend made (the copy backend's is writable whatever was asked).
    """

    container_path: str
    mode: str
    rootfs: Path
    writable: bool
    image: ImageManifest
    remote_layers: tuple[Digest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "container_path": self.container_path,
            "mode": self.mode,
            "rootfs": str(self.rootfs),
            "writable": self.writable,
            "image": _image_json(self.image),
            "remote_layers": list(self.remote_layers),
        }


@dataclass(frozen=True)
class ProvisionInfo:
    container_id: str
    rootfs: Path
    backend: str
    writable: bool
    image: ImageManifest
    # Layers left in their registry when it was provisioned, read through the cache daemon.
    remote_layers: tuple[Digest, ...] = ()
    volumes: tuple[VolumeInfo, ...] = ()

    @property
    def config(self) -> RuntimeConfig:
        return self.image.config

    def to_json(self) -> dict[str, Any]:
        return {
            "container_id": self.container_id,
            "rootfs": str(self.rootfs),
            "backend": self.backend,
            "writable": self.writable,
            "image": _image_json(self.image),
            "remote_layers": list(self.remote_layers),
            "config": self.image.config.to_json(),
            "volumes": [volume.to_json() for volume in self.volumes],
        }


def _image_json(image: ImageManifest) -> dict[str, Any]:
    return {
        "reference": image.reference,
        "platform": image.platform,
        "digest": image.digest,
        "layers": [layer.digest for layer in image.layers],
        "manifest": image.to_json(),
    }


def _recorded(image: ImageRecord) -> ImageManifest | None:
    """The manifest ``image``'s record holds, if it reads as the image it names."""
    if image.manifest is None:
        return None
    try:
        found = manifest_of(image.manifest)
    except DAMAGE:
        return None  # damaged: the store's, if it is still that image
    same = (
        found.digest == image.digest
        and tuple(layer.digest for layer in found.layers) == image.layers
    )
    return found if same else None


def load_info(store: Store, record: ContainerRecord) -> ProvisionInfo:
    """``record`` with the manifests of the images it was provisioned from: as recorded, or
    from ``store`` for a record of an earlier lazyfs; NotFound if one is gone.

    Never the image its reference names now, if that is another: its tag may have
    moved since (a pull), and a rootfs or volume mounted again from it would show
    another image, under the container's own writes.
    """
    cid = record.container_id

    def manifest(image: ImageRecord, what: str) -> ImageManifest:
        return load_image(store, image, f"image {image.reference} of container {cid}{what}")

    volumes = tuple(
        VolumeInfo(
            v.container_path,
            v.mode,
            v.rootfs,
            v.writable,
            manifest(v.image, f"'s volume {v.container_path}"),
            v.remote_layers,
        )
        for v in record.volumes
    )
    return ProvisionInfo(
        cid,
        record.rootfs,
        record.backend,
        record.writable,
        manifest(record.image, ""),
        record.remote_layers,
        volumes,
    )


def load_image(store: Store, image: ImageRecord, named: str) -> ImageManifest:
    """The manifest of ``image`` as a container's record names it (``load_info``); NotFound,
    saying ``named`` is gone, when neither the record nor ``store`` has that image."""
    own = _recorded(image)
    if own is not None:
        return own
    found = store.get_image(image.reference, image.platform)
    if found is None:
        raise NotFound(f"{named} is gone from the store")
    if image.digest and found.digest != image.digest:
        raise NotFound(f"{named} is gone from the store: {found.digest} has its name now")
    return found


@dataclass(frozen=True)
class RecoverReport:
    """What ``recover`` did with each container.

    ``remounted`` are kept containers whose rootfs mount was gone or dead
    and is back; ``broken`` pairs a kept container whose rootfs does not
    work (and could not be mounted again) with why, left as it was.
    ``failed`` pairs a container that could not be destroyed with why (one
    line); it is left as it was, and the others were still handled.
    """

    kept: tuple[str, ...]
    destroyed: tuple[str, ...]
    busy: tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = ()
    remounted: tuple[str, ...] = ()
    broken: tuple[tuple[str, str], ...] = ()


def require_layers(manifest: ImageManifest) -> None:
    """Refuse an image of no layer (BadImage): every backend would, each its own way."""
    if not manifest.layers:
        raise BadImage(f"image {manifest.reference} has no layers: no root filesystem to make")


def check_container_id(container_id: str) -> None:
    if not _CONTAINER_ID.fullmatch(container_id) or ".." in container_id:
        raise UsageError(
            f"invalid container id {container_id!r}: use letters, digits, '_', '.', '-' "
            "(at most 128, not starting with a punctuation mark)"
        )


def incomplete(container_id: str, home: Path) -> str:
    """Why the container at ``home``, which has no record to use, cannot be used or made."""
    if (home / DESTROYING).exists():
        return (f"container {container_id} is being destroyed, or its destroy died; "
                "destroy it or run recover")  # fmt: skip
    return (
        f"container {container_id} is incomplete: its provision did not finish; "
        "destroy it or run recover"
    )


def one_line(error: BaseException) -> str:
    """``error`` as one line for a report: its message, and for OSError the file."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    if isinstance(error, LazyfsError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def write_info(home: Path, info: ProvisionInfo) -> None:
    """Write ``info`` as the container's ``info.json`` under ``home``, atomically and durably."""
    write_atomic(home / "info.json", json.dumps(info.to_json(), indent=1).encode(), mode=0o600)
