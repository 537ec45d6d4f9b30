"""What provisioned containers are and use, read from their records alone.

``containers(work_dir)`` reads every container's ``info.json`` as it was
written (see ``lazyfs.provision.provisioner`` for where), without the store
and without creating anything: ``lazyfs ps`` lists them from it, and image
GC asks ``used_images`` / ``used_layers`` what it must not remove, rootfs
and image volumes alike (Mesos once let GC take an image a volume used).

Records of every lazyfs version load: one without ``volumes`` has none,
one without ``remote_layers`` left none in its registry.  A container whose
record is missing (its provision is under way, or died) or unreadable is
listed with ``record`` None: it may use any image, so a careful GC keeps
everything while there is one (``Usage.unknown``).  A container being
destroyed (``DESTROYING``: its destroy is under way, or was killed or
failed halfway; see ``lazyfs.provision.teardown``) is listed ``destroying``,
with the record its destroy moved aside: what is left of it may still use
those images.  ``read_record`` refuses it (``BeingDestroyed``): no command
may take it for a provisioned container.

Images a person mounted with ``lazyfs mount`` are in use too, for as long
as their record (``<work_dir>/mounts/<key>/image.json``) is there:
``Usage.mounts``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.digest import Digest

__all__ = [
    "DESTROYING",
    "BeingDestroyed",
    "ContainerRecord",
    "ImageRecord",
    "ImageUse",
    "Listed",
    "Usage",
    "VolumeRecord",
    "containers",
    "containers_dir",
    "mount_image_record",
    "mounted_images",
    "used_images",
    "used_layers",
]


# In a container's directory: its destroy began (``lazyfs.provision.teardown``), and
# holds the record that was ``info.json``, or nothing if there was none.
DESTROYING = "destroying"


class BeingDestroyed(ValueError):
    """The container's destroy began (and may have died): it has no record to use."""


@dataclass(frozen=True)
class ImageRecord:
    """An image as a container's record names it: enough to find it in the store, and the
    manifest it was provisioned from, as ``ImageManifest.to_json`` wrote it (None in a
    record of an earlier lazyfs): the store keeps a reference's newest only."""

    reference: str
    platform: str
    digest: str
    layers: tuple[Digest, ...]
    manifest: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        manifest = data.get("manifest")
        return cls(
            str(data["reference"]),
            str(data.get("platform", "")),
            str(data.get("digest", "")),
            tuple(Digest(str(d)) for d in data.get("layers", ())),
            manifest if isinstance(manifest, dict) else None,
        )


@dataclass(frozen=True)
class VolumeRecord:
    """An image volume of a container: mounted at ``container_path``, ``ro`` or ``rw``."""

    container_path: str
    mode: str
    rootfs: Path
    writable: bool
    image: ImageRecord
    remote_layers: tuple[Digest, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VolumeRecord:
        return cls(
            str(data["container_path"]),
            str(data.get("mode", "ro")),
            Path(data["rootfs"]),
            bool(data.get("writable", False)),
            ImageRecord.from_json(data["image"]),
            tuple(Digest(str(d)) for d in data.get("remote_layers", ())),
        )


@dataclass(frozen=True)
class ContainerRecord:
    """A complete container's ``info.json``, as recorded."""

    container_id: str
    backend: str
    rootfs: Path
    writable: bool
    image: ImageRecord
    remote_layers: tuple[Digest, ...] = ()
    volumes: tuple[VolumeRecord, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        return cls(
            str(data["container_id"]),
            str(data["backend"]),
            Path(data["rootfs"]),
            bool(data["writable"]),
            ImageRecord.from_json(data["image"]),
            tuple(Digest(str(d)) for d in data.get("remote_layers", ())),
            tuple(VolumeRecord.from_json(v) for v in data.get("volumes", ())),
        )


@dataclass(frozen=True)
class Listed:
    """A container directory: its record, or None with why there is none (one line).

    ``destroying``: its destroy began; ``record`` is the one it moved aside, if any.
    """

    container_id: str
    record: ContainerRecord | None
    problem: str = ""
    destroying: bool = False


@dataclass(frozen=True)
class ImageUse:
    """One image one container uses: for its rootfs (``container_path`` None) or a volume."""

    container_id: str
    container_path: str | None
    image: ImageRecord


@dataclass(frozen=True)
class Usage:
    """What the provisioned containers, and ``lazyfs mount``'s mounts, use.

    ``unknown``: containers whose record is missing or unreadable (a
    provision under way, or one that died), and mount records without an
    image (a ``lazyfs mount`` starting, or one of an older lazyfs), as
    ``mount:<record dir>``: they may use any image.  ``mounts``: each
    ``lazyfs mount`` record dir with its image.  ``layers`` and
    ``references`` cover containers and mounts alike.
    """

    images: tuple[ImageUse, ...]
    unknown: tuple[str, ...]
    mounts: tuple[tuple[Path, ImageRecord], ...] = ()

    def _all(self) -> list[ImageRecord]:
        return [use.image for use in self.images] + [image for _, image in self.mounts]

    @property
    def layers(self) -> frozenset[Digest]:
        return frozenset(d for image in self._all() for d in image.layers)

    @property
    def references(self) -> frozenset[tuple[str, str]]:
        """(reference, platform) of every image used, as the store keys them."""
        return frozenset((image.reference, image.platform) for image in self._all())


def containers_dir(work_dir: Path) -> Path:
    return work_dir.absolute() / "provisioner" / "containers"


def read_record(home: Path) -> ContainerRecord | None:
    """The record of the container at ``home``; None if it is incomplete.

    Raises ValueError (with the reason) for a record that cannot be read,
    BeingDestroyed for a container whose destroy began.
    """
    if (home / DESTROYING).exists():
        raise BeingDestroyed(
            "it is being destroyed, or its destroy died: destroy it or run recover"
        )
    if (home / "provisioning").exists():
        return None
    return _parse(home / "info.json")


def _parse(path: Path) -> ContainerRecord | None:
    """The record in the file ``path``; None if there is none. ValueError if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(error.strerror or str(error)) from error
    try:
        return ContainerRecord.from_json(json.loads(text))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"damaged record: {type(error).__name__}: {error}") from error


def _being_destroyed(home: Path) -> Listed:
    """The container at ``home``, whose destroy began, with the record it moved aside."""
    marker = home / DESTROYING
    try:
        # Empty: it had no record (its provision died before the destroy); gone: its
        # destroy has just finished.
        record = _parse(marker) if os.path.getsize(marker) else None
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as error:
        # What it uses is unknown, as for any unreadable record (image GC refuses).
        why = error.strerror if isinstance(error, OSError) else error
        return Listed(home.name, None, f"unreadable record: {why}", destroying=True)
    problem = "being destroyed: its destroy is under way, or died (recover finishes it)"
    return Listed(home.name, record, problem, destroying=True)


def containers(work_dir: Path) -> list[Listed]:
    """Every container directory under ``work_dir``, by id. Creates nothing. Blocking."""
    try:
        homes = sorted(containers_dir(work_dir).iterdir())
    except FileNotFoundError:
        return []
    listed = []
    for home in homes:
        try:
            record = read_record(home)
        except BeingDestroyed:
            listed.append(_being_destroyed(home))
            continue
        except ValueError as error:
            listed.append(Listed(home.name, None, f"unreadable record: {error}"))
            continue
        problem = "" if record is not None else "incomplete: its provision did not finish"
        listed.append(Listed(home.name, record, problem))
    return listed


def mounted_images(work_dir: Path) -> tuple[list[tuple[Path, ImageRecord]], list[str]]:
    """The images of ``lazyfs mount``'s records under ``work_dir``, and the records
    without one (``mount:<dir>``). Creates nothing. Blocking."""
    try:
        records = sorted((work_dir.absolute() / "mounts").iterdir())
    except FileNotFoundError:
        return [], []
    found: list[tuple[Path, ImageRecord]] = []
    unknown: list[str] = []
    for record in records:
        try:
            found.append((record, mount_image_record(record)))
        except ValueError:
            unknown.append(f"mount:{record}")
    return found, unknown


def mount_image_record(record: Path) -> ImageRecord:
    """The image of the ``lazyfs mount`` record ``record``; ValueError if it cannot be read
    (a mount starting, a damaged record, one of an older lazyfs)."""
    try:
        return ImageRecord.from_json(json.loads((record / "image.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"no readable image.json: {error}") from error


def used_images(work_dir: Path) -> Usage:
    """What every provisioned container under ``work_dir`` uses, rootfs and volumes,
    and what every ``lazyfs mount`` recorded there uses.

    Read-only and safe to call while other processes provision (a
    container appears once its record is written; until then it is in
    ``unknown``). Blocking.
    """
    images: list[ImageUse] = []
    unknown: list[str] = []
    for listed in containers(work_dir):
        record = listed.record
        if record is None:
            unknown.append(listed.container_id)
            continue
        images.append(ImageUse(record.container_id, None, record.image))
        images.extend(
            ImageUse(record.container_id, v.container_path, v.image) for v in record.volumes
        )
    mounts, unmounted = mounted_images(work_dir)
    return Usage(tuple(images), tuple(unknown + unmounted), tuple(mounts))


def used_layers(work_dir: Path) -> frozenset[Digest]:
    """The layer digests of every image a provisioned container uses (``used_images``)."""
    return used_images(work_dir).layers
