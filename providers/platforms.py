"""Platforms: which image of a multi-platform index is this machine's, or the one asked for.

``Platform`` is an OCI platform (``linux/amd64``, ``linux/arm/v7``);
``normalise`` gives it its one spelling (x86_64 is amd64, arm is arm/v7), as
containerd does; ``parse_platform`` reads it as ``--platform`` takes it
(``platform_problem`` says why it would not), and
``host_platform`` is this machine's. ``select_platform`` picks an index entry
for a platform, the exact one else the best the host also runs, passing over
attestation manifests; ``index_entries`` reads an index's entries.
``config_platform`` reads the platform a single image's config states, and
``platform_matches`` whether it runs where one is wanted, by the same rule.
Pure, apart from asking the host's machine name (and an arm host's cpuinfo).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.errors import BadImage, NotFound, UsageError
from providers.manifest import Descriptor, load_json, parse_descriptor

ATTESTATION_KEY = "vnd.docker.reference.type"


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``linux/amd64``, ``linux/arm/v7``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# How machines, distributions and people spell architectures, to GOARCH, which OCI
# platforms use; a spelling that also fixes the variant gives it (Debian's armhf is
# ARMv7, armel ARMv6). As containerd's platforms.Normalize, plus i686 (uname on x86).
_ARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}
# Variant spellings of one variant: amd64/v1 is amd64, arm64/v8 arm64, arm arm/v7.
_VARIANT: dict[tuple[str, str | None], str | None] = {
    ("amd64", "v1"): None,
    ("arm64", "8"): None,
    ("arm64", "v8"): None,
    ("arm64", "v8.0"): None,
    ("arm64", "9"): "v9",
    ("arm64", "9.0"): "v9",
    ("arm64", "v9.0"): "v9",
    ("arm", None): "v7",
    ("arm", "5"): "v5",
    ("arm", "6"): "v6",
    ("arm", "7"): "v7",
    ("arm", "8"): "v8",
}


def normalise(os_name: str, arch: str, variant: str | None = None) -> Platform:
    """The one spelling of a platform, as containerd's platforms.Normalize gives it, so
    that what is asked for and what an index offers compare equal: lowercase;
    x86_64 is amd64 (its v1 is no variant); aarch64 is arm64 (whose v8 is no variant,
    and 9 is v9); arm is arm/v7 and its bare numbers vN; armhf arm/v7, armel arm/v6."""
    os_name, arch, variant = os_name.lower(), arch.lower(), (variant or "").lower() or None
    if arch.startswith("armv"):  # uname's armv7l, armv6l: the variant is found elsewhere
        arch = "arm"
    if arch in _ARCH:
        arch, fixed = _ARCH[arch]
        variant = fixed or variant
    if arch == "386":
        variant = None
    variant = _VARIANT.get((arch, variant), variant)
    return Platform(os_name, arch, variant)


def arm_variant(machine: str, cpuinfo: str) -> str | None:
    """The ARM variant (v5 to v8) of a 32-bit arm host, as containerd finds it: the
    first "CPU architecture" of ``cpuinfo`` (/proc/cpuinfo's text), else ``machine``
    (uname's armv6l, armv7l); None where neither says. A Raspberry Pi ARMv6 (the
    first Pi, Zero) says 7 there, a kernel quirk: its "model name" says ARMv6."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip().lower(), value.strip().lower())
    said = fields.get("cpu architecture", "")
    if said == "7" and fields.get("model name", "").startswith("armv6-compatible"):
        said = "6"
    if said == "aarch64":
        said = "8"
    elif said.startswith("?("):  # ?(12) and on: 32-bit cores newer than the kernel's names
        said = "7"
    found = re.match(r"(\d+)", said) or re.match(r"armv(\d+)", machine.lower())
    return f"v{found.group(1)}" if found else None


def host_arch() -> str:
    return normalise("linux", platform.machine()).architecture


def host_platform(machine: str | None = None, cpuinfo: str | None = None) -> Platform:
    """The platform picked from an index when none is asked for: linux and this
    machine's architecture, with its variant on 32-bit arm (an armv6l host takes
    an arm/v6 image, never the v7 it cannot run). ``machine`` and ``cpuinfo``
    (uname's machine, /proc/cpuinfo's text) default to this machine's."""
    machine = platform.machine() if machine is None else machine
    arch = normalise("linux", machine).architecture
    if arch != "arm":
        return normalise("linux", arch)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    return normalise("linux", arch, arm_variant(machine, cpuinfo))


def platform_problem(text: str) -> str | None:
    """Why ``parse_platform`` refuses ``text``, in words without its place (the flag
    parser puts its own before them); None for a platform it takes."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return "expected os/arch or os/arch/variant"
    return None


def parse_platform(text: str, where: str = "--platform") -> Platform:
    """``os/arch[/variant]`` as ``--platform`` takes it, normalised (``linux/x86_64`` is
    linux/amd64, ``linux/arm`` linux/arm/v7); ``where``: what gave it, for errors."""
    problem = platform_problem(text)
    if problem is not None:
        raise UsageError(f"{where} {text!r}: {problem}")
    parts = text.strip().split("/")
    return normalise(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


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


def _level(variant: str | None, default: int) -> int | None:
    """The N of a variant vN (``default`` for none); None for any other spelling."""
    found = re.fullmatch(r"v(\d+)", variant or f"v{default}")
    return int(found.group(1)) if found else None


def _runs(wanted: Platform) -> list[Platform]:
    """The platforms whose images a host of ``wanted`` runs, best first, as containerd's
    default matcher (platforms.Only) ranks them: itself; under amd64/vN the lower levels
    down to plain amd64, then 386; under arm/vN the lower variants down to arm/v5 (an
    armv7 host takes v7, else v6, else v5; an armv6 one never v7); under arm64/v8.N the
    lower v8.x, under arm64/v9.N the lower v9.x then v8.(N+5) down to v8, and then for
    both (and plain arm64) the 32-bit arm/v8 down to arm/v5. Nothing below for any other
    architecture, nor for a variant spelt otherwise (arm64/v10, amd64/x)."""
    os_name, arch, variant = wanted.os, wanted.architecture, wanted.variant
    runs = [wanted]
    if arch == "amd64" and (level := _level(variant, 1)) is not None:
        runs += [normalise(os_name, arch, f"v{n}") for n in range(level - 1, 0, -1)]
        runs.append(Platform(os_name, "386"))
    elif arch == "arm" and (level := _level(variant, 7)) is not None:
        runs += [Platform(os_name, arch, f"v{n}") for n in range(level - 1, 4, -1)]
    elif arch == "arm64":
        found = re.fullmatch(r"v([89])(?:\.(\d))?", variant or "v8")
        if found:
            major, minor = int(found.group(1)), int(found.group(2) or 0)
            levels = [(major, n) for n in range(minor - 1, -1, -1)]
            if major == 9:  # v9.0 forked from v8.5: v9.N has what v8.(N+5) has
                levels += [(8, n) for n in range(min(minor + 5, 9), -1, -1)]
            runs += [normalise(os_name, arch, f"v{a}.{b}" if b else f"v{a}") for a, b in levels]
            runs += [Platform(os_name, "arm", f"v{n}") for n in range(8, 4, -1)]
    return runs


# Architectures whose variants _runs ranks. For any other, a variant named on one side
# only is taken (s390x and s390x/v1), after the exact one: their variants have no order
# known here, and lazyfs took them so before; containerd would want them equal.
_RANKED = ("amd64", "arm", "arm64", "386")


def _rank(wanted: Platform, offered: Platform) -> int | None:
    """Where ``offered`` stands among the images a host of ``wanted`` runs (0: the very
    one), or None where it runs none of them. Both normalised."""
    runs = _runs(wanted)
    if offered in runs:
        return runs.index(offered)
    if (
        wanted.architecture not in _RANKED
        and (offered.os, offered.architecture) == (wanted.os, wanted.architecture)
        and (wanted.variant is None or offered.variant is None)
    ):
        return len(runs)
    return None


def platform_matches(wanted: Platform, stated: str) -> bool:
    """Whether an image whose config states ``stated`` (``os/arch[/variant]``) runs where
    ``wanted`` is asked for, by the rule an index entry is picked by (``select_platform``):
    arm64 is arm64/v8, an arm/v6 image runs on arm/v7, an arm/v7 one not on arm/v6."""
    parts = stated.split("/")
    if len(parts) < 2:
        return False
    offered = normalise(parts[0], parts[1], parts[2] if len(parts) > 2 else None)
    return _rank(_normalised(wanted), offered) is not None


def _normalised(plat: Platform) -> Platform:
    return normalise(plat.os, plat.architecture, plat.variant)


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


def _fields(plat: dict[str, Any]) -> list[Any]:
    return [plat.get(key) for key in ("os", "architecture", "variant")]


def _offered(desc: Descriptor) -> Platform | None:
    """The platform an index entry names, normalised; None where it names none."""
    plat = desc.platform if isinstance(desc.platform, dict) else {}
    os_name, arch, variant = _fields(plat)
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    return normalise(os_name, arch, variant if isinstance(variant, str) else None)


def _shown(desc: Descriptor) -> str:
    """An index entry's platform as the index writes it, for messages."""
    plat = desc.platform if isinstance(desc.platform, dict) else {}
    # Only parts as images write them: the message stays one line whatever the index holds.
    named = [p if isinstance(p, str) and _PART.fullmatch(p) else "" for p in _fields(plat)]
    if not named[0] or not named[1]:
        return "(no platform)"
    return "/".join(p for p in named if p)


def select_platform(
    entries: list[Descriptor], label: str, wanted: Platform | None = None
) -> Descriptor:
    """The ``wanted`` (default the host's) manifest of a multi-platform index.

    Both sides are normalised (x86_64 is amd64, arm is arm/v7, arm64/v8 is
    arm64). The exact platform is taken first, else the best the host also
    runs, as containerd's default matcher ranks them (``_runs``: arm/v7 takes
    v6 before v5, never v8), the first listed among equals. Attestation
    manifests (``unknown/unknown``, buildkit's reference-type annotation) are
    never chosen, so an index holding one image plus its attestation resolves
    to the image. An entry without a platform is taken only when it is the one
    image there is. NotFound names what the index offers.
    """
    wanted = _normalised(wanted or host_platform())
    images = [e for e in entries if not _is_attestation(e)]
    best: tuple[int, Descriptor] | None = None
    for entry in images:
        offered = _offered(entry)
        rank = None if offered is None else _rank(wanted, offered)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is not None:
        return best[1]
    if len(images) == 1 and not isinstance(images[0].platform, dict):
        return images[0]
    if entries and not images:
        offers = "the index holds only attestation manifests"
    else:
        offers = "index offers " + (", ".join(sorted(_shown(e) for e in images)) or "nothing")
    raise NotFound(f"{label}: no {wanted} image ({offers})")
