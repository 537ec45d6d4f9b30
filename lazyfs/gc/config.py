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
a string as the command line names an image (``"busybox:1.36"``).  Anything
else is one line naming the flag and the field.  Pure, but for reading a file.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from providers import untrusted_json
from providers.errors import BadImage, UsageError
from providers.image_pb2 import Image
from providers.reference import parse_reference
from providers.transports import parse_transport

DEFAULT_HEADROOM = 0.1
DEFAULT_INTERVAL_NS = 300 * 1_000_000_000
_FIELDS = ("image_disk_headroom", "image_disk_watch_interval", "excluded_images")


@dataclass(frozen=True)
class GcConfig:
    headroom: float = DEFAULT_HEADROOM
    interval_ns: int = DEFAULT_INTERVAL_NS
    # Each excluded image as the store may record it (``reference_forms``).
    excluded: tuple[frozenset[str], ...] = ()

    def excludes(self, reference: str) -> bool:
        return any(reference in forms for forms in self.excluded)


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
    return GcConfig(
        _headroom(data.get("image_disk_headroom", DEFAULT_HEADROOM), where),
        _interval(data.get("image_disk_watch_interval"), where),
        tuple(_excluded(item, where) for item in _list(data.get("excluded_images", []), where)),
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


def _excluded(item: Any, where: str) -> frozenset[str]:
    if isinstance(item, str):
        name = item
    elif isinstance(item, dict):
        try:
            image = json_format.ParseDict(item, Image())
        except json_format.ParseError as error:
            raise UsageError(f"{where}: excluded image {item!r}: {error}") from None
        if image.type == Image.DOCKER and image.HasField("docker") and image.docker.name:
            name = image.docker.name
        elif image.type == Image.APPC and image.HasField("appc") and image.appc.name:
            name = image.appc.name
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
