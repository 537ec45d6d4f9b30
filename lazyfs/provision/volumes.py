"""Image volumes as Mesos has them: an image provisioned beside the rootfs, mounted into it.

A container may name, besides its rootfs image, images to mount at paths
inside it (Mesos' ``Volume`` with an ``image``, its ``volume/image``
isolator).  Each is provisioned by the container's backend and recorded
under the same container, so ``destroy`` and ``recover`` treat it as part
of the container.

Given on the command line as ``--volume CONTAINER_PATH:IMAGE[:ro|rw]``
(``parse_volume``), or in a container spec: Mesos' ``ContainerInfo`` in
protobuf's JSON form, of which lazyfs reads the rootfs image and the image
volumes (``container_from_file``)::

    {"type": "MESOS",
     "mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}},
     "volumes": [{"container_path": "/data", "mode": "RO",
                  "image": {"type": "DOCKER", "docker": {"name": "data:1"}}}]}

Every check here is pure and done before anything is fetched: a bad spec
is one line (BadImage or UsageError) and nothing is provisioned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lazyfs.images.spec import APPC_PREFIX, DOCKER_PREFIXES, check_image, parse_image
from providers import untrusted_json
from providers.errors import BadImage, UsageError
from providers.image_pb2 import Image, Volume
from providers.transports import LOCAL_TRANSPORTS

RO = "ro"
RW = "rw"
_MODES = {Volume.RO: RO, Volume.RW: RW}

# Final ``:WORD`` of a --volume that is surely meant as a mode, not an image
# tag: Docker's and podman's volume options.  Any other word is the tag.
_MODE_LIKE = frozenset(
    {"z", "readonly", "read-only", "readwrite", "nocopy", "shared", "slave", "private"}
    | {"rshared", "rslave", "rprivate", "rbind", "bind", "cached", "delegated", "consistent"}
)

# The image types' prefixes, without their colon: in a --volume, what follows
# ``appc:`` alone (or ``oci:``...) is the image, never a mode.
_PREFIXES = frozenset(
    {prefix.partition(":")[0] for prefix in (APPC_PREFIX, *DOCKER_PREFIXES)} | set(LOCAL_TRANSPORTS)
)

# What lazyfs reads of a ContainerInfo; other fields of Mesos' message are refused
# by name rather than ignored, so a spec never means less than it says.
_CONTAINER_KEYS = frozenset({"type", "mesos", "volumes"})


@dataclass(frozen=True)
class VolumeSpec:
    """An image to mount at ``container_path`` (absolute, normal form), ``ro`` or ``rw``."""

    container_path: str
    image: Image
    mode: str = RO

    @property
    def writable(self) -> bool:
        return self.mode == RW


@dataclass(frozen=True)
class ContainerSpec:
    """A container's rootfs image and its image volumes."""

    image: Image
    volumes: tuple[VolumeSpec, ...] = ()


def check_container_path(path: str, where: str = "volume") -> str:
    """``path`` in its normal form if a volume may be mounted there, else UsageError.

    Absolute, no ``..`` (it would climb out of where it is written to be),
    not ``/`` itself (that is the rootfs), no NUL.
    """
    if not path:
        raise UsageError(f"{where}: no container path: want CONTAINER_PATH:IMAGE[:ro|rw]")
    if not path.startswith("/"):
        raise UsageError(f"{where}: container path {path!r} is not absolute")
    if "\0" in path:
        raise UsageError(f"{where}: container path {path!r} holds a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"{where}: container path {path!r} has a '..' component")
    if not parts:
        raise UsageError(f"{where}: container path {path!r} is the root: the rootfs is there")
    return "/" + "/".join(parts)


def parse_volume(text: str) -> VolumeSpec:
    """``CONTAINER_PATH:IMAGE[:ro|rw]`` as a VolumeSpec; read-only unless ``:rw``.

    IMAGE is what ``parse_image`` takes, colons and all; a final ``:ro`` or
    ``:rw`` is the mode (write ``IMAGE:TAG:ro`` for an image tagged ``ro``).
    Another final word that can only be a mode is refused (``_meant_as_mode``).
    """
    where = f"--volume {text!r}"
    path, colon, rest = text.partition(":")
    if not colon:
        raise UsageError(f"{where}: no image: want CONTAINER_PATH:IMAGE[:ro|rw]")
    path = check_container_path(path, where)
    mode = RO
    head, colon, last = rest.rpartition(":")
    if colon and last.lower() in (RO, RW):
        rest, mode = head, last.lower()
    elif colon and _meant_as_mode(head, last):
        raise UsageError(f"{where}: unknown mode {last!r}: use ro or rw")
    if not rest:
        raise UsageError(f"{where}: no image: want CONTAINER_PATH:IMAGE[:ro|rw]")
    if rest.startswith("/"):
        # docker's -v HOST_PATH:CONTAINER_PATH: lazyfs mounts images only, path first.
        raise UsageError(
            f"{where}: {rest} is a path, not an image: lazyfs mounts image volumes only,"
            " as CONTAINER_PATH:IMAGE[:ro|rw] (no host path volumes)"
        )
    try:
        image = parse_image(rest)
    except BadImage as error:
        raise UsageError(f"{where}: {error}") from None
    return VolumeSpec(path, image, mode)


def _meant_as_mode(head: str, last: str) -> bool:
    """Whether ``last``, the word after a --volume's final colon (not ro or rw), is
    surely meant as its mode, and so refused rather than read as part of the image.

    Not when ``head`` is an image type's prefix: ``appc:NAME,LABEL=VALUE`` and
    ``oci:/a,b=c`` are the image whole, commas and all.  A Docker or podman
    option word is a mode.  So is any word after an appc image: its name holds
    no colon (a label value that does is written with the mode after it,
    ``appc:NAME,key=a:b:ro``).  Else a word with "," or "=" is (``ro,z``,
    ``mode=ro``): no Docker tag or digest, OCI ref name or docker-archive
    NAME:TAG holds either; any other word is a tag or REF.
    """
    if head in _PREFIXES:
        return False
    if last.lower() in _MODE_LIKE:
        return True
    if head.startswith(APPC_PREFIX):
        return True
    return "," in last or "=" in last


def volume_from_message(volume: Volume, where: str) -> VolumeSpec:
    """A Mesos ``Volume`` message as a VolumeSpec: an image volume, or UsageError."""
    missing: list[str] = volume.FindInitializationErrors()  # type: ignore[attr-defined]
    if missing:
        raise UsageError(f"{where}: missing required field(s): {', '.join(missing)}")
    path = check_container_path(volume.container_path, where)
    if volume.HasField("host_path"):
        raise UsageError(f"{where}: host_path volumes are not provisioned by lazyfs; give an image")
    if not volume.HasField("image"):
        raise UsageError(f"{where}: missing image")
    image = check_image(volume.image, where)
    return VolumeSpec(path, image, _MODES[volume.mode])


def check_volumes(volumes: Iterable[VolumeSpec]) -> tuple[VolumeSpec, ...]:
    """``volumes`` if no two share a container path, else UsageError."""
    seen: set[str] = set()
    for volume in volumes:
        if volume.container_path in seen:
            raise UsageError(f"two volumes at {volume.container_path}")
        seen.add(volume.container_path)
    return tuple(volumes)


def container_from_file(path: str | os.PathLike[str]) -> ContainerSpec:
    """Read a ContainerInfo in protobuf's JSON form from ``path`` (see the module doc)."""
    where = f"container spec {os.fspath(path)}"
    try:
        with open(path, encoding="utf-8") as file:
            data = untrusted_json.loads(file.read())
    except UnicodeDecodeError as error:
        raise UsageError(f"{where}: not UTF-8 text ({error.reason})") from error
    except ValueError as error:
        raise UsageError(f"{where}: not JSON ({error})") from error
    except OSError as error:
        raise UsageError(f"cannot read {where}: {error.strerror}") from error
    return container_from_json(data, where)


def container_from_json(data: Any, where: str) -> ContainerSpec:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: not a JSON object")
    unknown = sorted(set(data) - _CONTAINER_KEYS)
    if unknown:
        raise UsageError(f"{where}: lazyfs does not take field(s) {', '.join(unknown)}")
    if data.get("type", "MESOS") not in ("MESOS", 2):
        raise UsageError(f"{where}: type {data.get('type')!r}: lazyfs provisions MESOS containers")
    mesos = data.get("mesos")
    if not isinstance(mesos, dict) or set(mesos) != {"image"}:
        raise UsageError(f"{where}: want 'mesos': {{'image': IMAGE}}, the rootfs image")
    image = _message(Image(), mesos["image"], f"{where}: mesos.image")
    image = check_image(image, f"{where}: mesos.image")
    raw = data.get("volumes", [])
    if not isinstance(raw, list):
        raise UsageError(f"{where}: 'volumes' is not a list")
    volumes = []
    for i, item in enumerate(raw):
        at = f"{where}: volumes[{i}]"
        if isinstance(item, dict) and "source" in item:  # Mesos' Volume.Source: no image
            why = "source volumes (Docker volumes, host and sandbox paths, secrets, CSI)"
            raise UsageError(f"{at}: {why} are not provisioned by lazyfs; give an image")
        volumes.append(volume_from_message(_message(Volume(), item, at), at))
    return ContainerSpec(image, check_volumes(volumes))


def _message(message: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: not a JSON object")
    # Loaded here: only --container-info brings protobuf's JSON form.
    from google.protobuf import json_format

    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as error:
        # Its messages run on with the list of known fields; the first line says it.
        reason = str(error).splitlines()[0] if str(error) else "cannot parse"
        raise UsageError(f"{where}: {reason}") from error
    return message


def with_volumes(spec: ContainerSpec, extra: Sequence[VolumeSpec]) -> ContainerSpec:
    """``spec`` with ``extra`` volumes added after its own; paths must stay distinct."""
    return ContainerSpec(spec.image, check_volumes((*spec.volumes, *extra)))
