"""``--image_gc_config``: Mesos' ``ImageGcConfig``, as JSON inline, in a file or a file:// URL.

::

    {"image_disk_headroom": 0.1,
     "image_disk_watch_interval": {"nanoseconds": 300000000000},
     "excluded_images": [{"type": "DOCKER", "docker": {"name": "busybox"}}]}

The fields and defaults are Mesos': a GC pass removes images until at least
``image_disk_headroom`` (0 to 1) of the store's filesystem is free; the
cache daemon, once it runs GC, looks every ``image_disk_watch_interval``
(5 minutes); ``excluded_images`` are never removed.  An excluded image is an
``Image`` message in protobuf's JSON form, as Mesos takes it, or, shorter,
a string as the command line names an image (``"busybox:1.36"``).  An Appc
image (``{"type": "APPC", "appc": {"name": "example.com/app"}}``, or
``"appc:example.com/app"``) excludes the stored appc images the store's
lookup would take for it: the same name, each label it gives (``os``,
``arch`` and ``version`` with the spec's defaults when it gives none) the
one the stored image was asked by, and its id, if it gives one, the stored
image's.  Anything else is one line naming the flag and the field.  Pure,
but for reading a file.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from providers import untrusted_json
from providers.appc_manifest import AciManifest, check_image_id
from providers.appc_source import AppcRef, parse_appc_ref
from providers.appc_store import label_mismatch, with_defaults
from providers.errors import BadImage, UsageError
from providers.image_pb2 import Image
from providers.manifest import RuntimeConfig
from providers.reference import parse_reference
from providers.transports import parse_transport

DEFAULT_HEADROOM = 0.1
DEFAULT_INTERVAL_NS = 300 * 1_000_000_000
_FIELDS = ("image_disk_headroom", "image_disk_watch_interval", "excluded_images")
APPC_PREFIX = "appc:"


@dataclass(frozen=True)
class GcConfig:
    headroom: float = DEFAULT_HEADROOM
    interval_ns: int = DEFAULT_INTERVAL_NS
    # Each excluded image as the store may record it (``reference_forms``).
    excluded: tuple[frozenset[str], ...] = ()
    # Each excluded Appc image: what it asks for (``appc_excludes``).
    excluded_appc: tuple[AppcRef, ...] = ()

    def excludes(self, reference: str, digest: str = "") -> bool:
        """Whether the image stored as ``reference`` (its manifest's ``digest``; an appc
        image's is its id) is excluded."""
        if any(reference in forms for forms in self.excluded):
            return True
        return any(appc_excludes(wanted, reference, digest) for wanted in self.excluded_appc)


def appc_excludes(wanted: AppcRef, reference: str, digest: str = "") -> bool:
    """Whether the excluded Appc image ``wanted`` names the image stored as ``reference``.

    The store records an appc image as the command line asked for it
    (``appc:NAME[,LABEL=VALUE...][@sha512-HEX]``, ``lazyfs.images.appc``),
    and the image it holds has those labels, or none where a default was
    taken. So it is the one ``wanted`` names when the store's lookup, asked
    for ``wanted``, would take an image labelled as it was asked: an Image
    message names ``example.com/app`` without labels, and the store records
    ``appc:example.com/app``, or ``...,os=linux``, for the same image.
    """
    if not reference.startswith(APPC_PREFIX):
        return False
    # An id names one image, however it was asked for: the stored image's own id (its
    # record's digest), or the one its reference was pinned to.
    if wanted.image_id and digest == "sha512:" + wanted.image_id.removeprefix("sha512-"):
        return True
    try:
        stored = parse_appc_ref(reference[len(APPC_PREFIX) :])
    except BadImage:
        return False  # no appc reference this lazyfs writes
    if stored.name != wanted.name:
        return False
    if wanted.image_id and stored.image_id != wanted.image_id:
        return False
    # The image as it was asked for: each default the request left out taken.
    labels = tuple(with_defaults(dict(stored.labels)).items())
    asked = AciManifest(stored.name, labels, RuntimeConfig(), (), ())
    return label_mismatch(asked, dict(wanted.labels)) is None


def parse_gc_config(text: str, where: str = "--image_gc_config") -> GcConfig:
    """The config ``text`` gives: JSON, or the path (or ``file://`` URL) of a JSON file."""
    stripped = text.strip()
    body: str | bytes = stripped
    if not stripped:
        raise UsageError(f"{where} is empty: give JSON or a file holding it")
    if not stripped.startswith(("{", "[")):
        path = stripped.removeprefix("file://")
        try:
            with open(path, "rb") as stream:
                body = stream.read()  # bytes: not UTF-8 is JSON's ValueError below
        except OSError as error:
            raise UsageError(f"{where} {path}: {error.strerror or error}") from None
        where = f"{where} {path}"
    try:
        data = untrusted_json.loads(body)
    except ValueError as error:
        raise UsageError(f"{where}: not JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: want a JSON object with {', '.join(_FIELDS)}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    excluded = [_excluded(item, where) for item in _list(data.get("excluded_images", []), where)]
    return GcConfig(
        _headroom(data.get("image_disk_headroom", DEFAULT_HEADROOM), where),
        _interval(data.get("image_disk_watch_interval"), where),
        tuple(item for item in excluded if isinstance(item, frozenset)),
        tuple(item for item in excluded if isinstance(item, AppcRef)),
    )


def _headroom(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: image_disk_headroom {value!r}: want a number from 0 to 1")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise UsageError(f"{where}: image_disk_headroom {value!r}: want a number from 0 to 1")
    return float(value)


def _interval(value: Any, where: str) -> int:
    if value is None:
        return DEFAULT_INTERVAL_NS
    # protobuf's JSON form writes an int64 as a string; Mesos' docs as a number.
    nanoseconds = value.get("nanoseconds") if isinstance(value, dict) else None
    if isinstance(nanoseconds, str) and re.fullmatch(r"[0-9]{1,19}", nanoseconds):
        nanoseconds = int(nanoseconds)
    if (
        isinstance(nanoseconds, bool)
        or not isinstance(nanoseconds, int)
        or not 0 < nanoseconds < 1 << 63  # protobuf's int64
    ):
        raise UsageError(
            f"{where}: image_disk_watch_interval {value!r}: "
            'want {"nanoseconds": N} with N more than 0'
        )
    return nanoseconds


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise UsageError(f"{where}: excluded_images: want a list of images")
    return value


def _excluded(item: Any, where: str) -> frozenset[str] | AppcRef:
    if isinstance(item, str):
        if item.startswith(APPC_PREFIX):
            try:
                return parse_appc_ref(item[len(APPC_PREFIX) :])
            except BadImage as error:
                raise UsageError(f"{where}: excluded image {item!r}: {error}") from None
        name = item
    elif isinstance(item, dict):
        try:
            image = json_format.ParseDict(item, Image())
        except json_format.ParseError as error:
            raise UsageError(f"{where}: excluded image {item!r}: {error}") from None
        if image.type == Image.DOCKER and image.HasField("docker") and image.docker.name:
            name = image.docker.name
        elif image.type == Image.APPC and image.HasField("appc") and image.appc.name:
            # Matched as the store's lookup matches, not as a string: the store
            # records ``appc:NAME...`` as it was asked for.
            labels = tuple((label.key, label.value) for label in image.appc.labels.labels)
            try:
                image_id = check_image_id(image.appc.id, "Image.Appc.id") if image.appc.id else ""
            except BadImage as error:  # else it would match nothing, and protect nothing
                raise UsageError(f"{where}: excluded image {item!r}: {error}") from None
            return AppcRef(image.appc.name, labels, image_id)
        else:
            raise UsageError(f"{where}: excluded image {item!r}: names no image")
    else:
        raise UsageError(f"{where}: excluded image {item!r}: want an Image or a name")
    return reference_forms(name)


def reference_forms(name: str) -> frozenset[str]:
    """The references under which the store may keep the image a user calls ``name``.

    As written; for a Docker reference, its canonical form (``busybox`` is
    ``docker.io/library/busybox:latest``); for a skopeo transport, the
    absolute path the store records.  Pure but for resolving a relative path.
    """
    forms = {name}
    for prefix in ("docker://", "docker:"):
        if name.startswith(prefix) and parse_transport_safe(name) is None:
            name = name[len(prefix) :]
            forms.add(name)
            break
    local = parse_transport_safe(name)
    if local is not None:
        forms.add(str(local.absolute()))
        return frozenset(forms)
    # An Appc name, or no Docker reference: matched as written.
    with contextlib.suppress(BadImage):
        forms.add(str(parse_reference(name)))
    return frozenset(forms)


def parse_transport_safe(name: str) -> Any:
    """``parse_transport``, None for a name it refuses (matched as written then)."""
    try:
        return parse_transport(name)
    except BadImage:
        return None
