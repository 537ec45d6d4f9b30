"""Platforms: which image of a multi-platform index is this machine's, or the one asked for.

``Platform`` is an OCI platform (``linux/amd64``, ``linux/arm/v7``);
``parse_platform`` reads it as ``--platform`` takes it. ``select_platform``
picks an index entry for a platform, passing over attestation manifests;
``index_entries`` reads an index's entries. ``config_platform`` reads the
platform a single image's config states, and ``platform_matches`` whether it
is the one wanted. Pure, apart from asking the host's machine name.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from typing import Any

from providers.errors import BadImage, NotFound, UsageError
from providers.manifest import Descriptor, load_json, parse_descriptor

ATTESTATION_KEY = "vnd.docker.reference.type"

# platform.machine() spellings to GOARCH, which OCI platforms use.
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``linux/amd64``, ``linux/arm/v7``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    """The platform picked from an index when none is asked for."""
    return Platform("linux", host_arch())


def parse_platform(text: str, where: str = "--platform") -> Platform:
    """``os/arch[/variant]`` as ``--platform`` takes it; ``where``: what gave it, for errors."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"{where} {text!r}: expected os/arch or os/arch/variant")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


# One part of a platform as images write it (linux, amd64, v8). Anything else is
# taken as no platform stated: it is neither shown to the user nor recorded.
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def config_platform(data: bytes) -> str:
    """The ``os/architecture[/variant]`` an image config (or a schema 1 history entry)
    states, or "" where it states none. BadImage for what is no JSON object."""
    doc = load_json(data, "image config")
    if not isinstance(doc, dict):
        raise BadImage("image config is not a JSON object")
    parts = [doc.get(key) for key in ("os", "architecture", "variant")]
    named = [part if isinstance(part, str) and _PART.fullmatch(part) else "" for part in parts]
    if not named[0] or not named[1] or (parts[2] not in (None, "") and not named[2]):
        return ""
    return "/".join(part for part in named if part)


def platform_matches(wanted: Platform, stated: str) -> bool:
    """Whether an image whose config states ``stated`` (``os/arch[/variant]``) is of the
    ``wanted`` platform; a variant only one of them names matches any (arm64, arm64/v8)."""
    parts = stated.split("/")
    variant = parts[2] if len(parts) > 2 else None
    return parts[:2] == [wanted.os, wanted.architecture] and (
        wanted.variant is None or variant is None or variant == wanted.variant
    )


def index_entries(doc: Any, what: str) -> list[Descriptor]:
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise BadImage(f"{what} has no manifests list")
    return [parse_descriptor(item, f"{what} entry {i}") for i, item in enumerate(doc["manifests"])]


def annotation(desc: Descriptor, key: str) -> str | None:
    if isinstance(desc.annotations, dict):
        value = desc.annotations.get(key)
        if isinstance(value, str):
            return value
    return None


def _is_attestation(desc: Descriptor) -> bool:
    plat = desc.platform if isinstance(desc.platform, dict) else {}
    return plat.get("os") == "unknown" or annotation(desc, ATTESTATION_KEY) is not None


def select_platform(
    entries: list[Descriptor], label: str, wanted: Platform | None = None
) -> Descriptor:
    """The ``wanted`` (default linux/<host arch>) manifest of a multi-platform index.

    Attestation manifests (``unknown/unknown``, buildkit's reference-type
    annotation) are never chosen, so an index holding one image plus its
    attestation resolves to the image. An entry without a platform is taken
    only when it is the one image there is. ``variant``, when given, must
    match too (``arm/v7``).
    """
    wanted = wanted or host_platform()
    os_name, arch, variant = wanted.os, wanted.architecture, wanted.variant
    images = [e for e in entries if not _is_attestation(e)]
    for entry in images:
        plat = entry.platform if isinstance(entry.platform, dict) else {}
        # Among variants (arm v6/v7) the first listed wins, as containerd's default does.
        if (
            plat.get("os") == os_name
            and plat.get("architecture") == arch
            and (variant is None or plat.get("variant") == variant)
        ):
            return entry
    if len(images) == 1 and not isinstance(images[0].platform, dict):
        return images[0]
    offered = sorted(
        "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))
        for p in (e.platform if isinstance(e.platform, dict) else {} for e in images)
    )
    raise NotFound(f"{label}: no {wanted} image (index offers {', '.join(offered) or 'nothing'})")
