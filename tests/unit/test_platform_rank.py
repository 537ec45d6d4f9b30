"""Which image of a multi-platform index a platform takes, as containerd's platforms
package takes it: every spelling normalised (x86_64 is amd64, arm is arm/v7, arm64/v8
is arm64), the exact platform first, else the best the host also runs (arm/v7 takes
v6 before v5, never v8); a single image is taken by the same rule; an arm host's
variant read from its cpuinfo; and what a refusal says the index offers."""

from __future__ import annotations

from typing import Any

import pytest

from providers.errors import NotFound, UsageError
from providers.manifest import Descriptor, parse_descriptor
from providers.platforms import (
    Platform,
    host_platform,
    normalise,
    parse_platform,
    platform_matches,
    platform_problem,
    select_platform,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/AMD64", "linux/amd64"),
        ("Linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/V3", "linux/amd64/v3"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/ARM64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64/8", "linux/arm64"),
        ("linux/arm64/v8.0", "linux/arm64"),
        ("linux/arm64/9", "linux/arm64/v9"),
        ("linux/arm64/v8.2", "linux/arm64/v8.2"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/arm/v5", "linux/arm/v5"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
        ("linux/i686", "linux/386"),
        ("linux/s390x", "linux/s390x"),
        ("windows/amd64", "windows/amd64"),
    ],
)
def test_a_platform_asked_for_is_normalised(text: str, normal: str) -> None:
    assert str(parse_platform(text)) == normal
    assert parse_platform(text) == parse_platform(normal)


@pytest.mark.parametrize("text", ["linux", "linux//v7", "a/b/c/d", "/amd64", "", " ", "l: a"])
def test_a_refused_platform_says_why_apart_from_where(text: str) -> None:
    # The flag parser words the place itself (--platform, LAZYFS_PLATFORM): the why alone.
    why = platform_problem(text)
    assert why == "expected os/arch or os/arch/variant"
    with pytest.raises(UsageError) as refused:
        parse_platform(text, "LAZYFS_PLATFORM")
    assert str(refused.value) == f"LAZYFS_PLATFORM {text!r}: {why}"


@pytest.mark.parametrize("text", ["linux/amd64", " linux/arm/v7 ", "Linux/ARM64/v8"])
def test_a_platform_taken_has_no_problem(text: str) -> None:
    assert platform_problem(text) is None
    assert parse_platform(text) == parse_platform(text.strip().lower())


PI_ONE = (
    "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\nCPU architecture: 7\n"
)
PI_TWO = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nCPU architecture: 7\n"


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "host"),
    [
        ("x86_64", "", "linux/amd64"),
        ("aarch64", "CPU architecture: 8\n", "linux/arm64"),
        ("i686", "", "linux/386"),
        ("s390x", "", "linux/s390x"),
        ("armv7l", PI_TWO, "linux/arm/v7"),
        # The first Raspberry Pi's kernel says 7; its model name says ARMv6.
        ("armv6l", PI_ONE, "linux/arm/v6"),
        ("armv6l", "processor\t: 0\nCPU architecture: 6TEJ\n", "linux/arm/v6"),
        ("armv5tel", "CPU architecture: 5TEJ\n", "linux/arm/v5"),
        # A 32-bit userland on a 64-bit ARM core.
        ("armv8l", "CPU architecture: 8\nCPU architecture: 8\n", "linux/arm/v8"),
        # No such field (qemu user mode): uname's machine says it.
        ("armv6l", "processor\t: 0\n", "linux/arm/v6"),
        ("armv7l", "", "linux/arm/v7"),
    ],
)
def test_the_host_platform_has_an_arm_host_s_variant(machine: str, cpuinfo: str, host: str) -> None:
    assert str(host_platform(machine, cpuinfo)) == host


def _entry(platform: str | None, n: int = 0, **platform_fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + f"{n:x}".rjust(64, "0"),
        "size": 100 + n,
    }
    if platform is not None:
        parts = platform.split("/")
        item["platform"] = {"os": parts[0], "architecture": parts[1], **platform_fields}
        if len(parts) > 2:
            item["platform"]["variant"] = parts[2]
    return item


def _index(*platforms: str | None) -> list[Descriptor]:
    return [parse_descriptor(_entry(p, n), f"entry {n}") for n, p in enumerate(platforms)]


def _picked(offered: list[str], wanted: str | Platform) -> str:
    """The platform (as the index writes it) picked from an index offering ``offered``."""
    want = parse_platform(wanted) if isinstance(wanted, str) else wanted
    entries = _index(*offered)
    return offered[entries.index(select_platform(entries, "img", want))]


ARMS = ["linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8", "linux/amd64"]


@pytest.mark.parametrize(
    ("offered", "wanted", "picked"),
    [
        (ARMS, "linux/arm", "linux/arm/v7"),
        (ARMS, "linux/arm/v7", "linux/arm/v7"),
        (ARMS, "linux/arm/v6", "linux/arm/v6"),
        (ARMS, "linux/armel", "linux/arm/v6"),
        (ARMS, "linux/arm/v5", "linux/arm/v5"),
        (ARMS, "linux/arm64", "linux/arm64/v8"),
        (ARMS, "linux/aarch64", "linux/arm64/v8"),
        (ARMS, "linux/x86_64", "linux/amd64"),
        (list(reversed(ARMS)), "linux/arm", "linux/arm/v7"),
        # Lower variants a host also runs, the best first, wherever listed.
        (["linux/arm/v5", "linux/amd64", "linux/arm/v6"], "linux/arm", "linux/arm/v6"),
        (["linux/arm/v5", "linux/arm/v6"], "linux/arm/v8", "linux/arm/v6"),
        (["linux/arm/v5", "linux/arm/v7"], "linux/arm64", "linux/arm/v7"),
        (["linux/arm/v7", "linux/arm64"], "linux/arm64/v8", "linux/arm64"),
        (["linux/arm64", "linux/arm64/v8.2"], "linux/arm64/v8.4", "linux/arm64/v8.2"),
        (["linux/arm64/v8.6", "linux/arm64/v8.2"], "linux/arm64/v9", "linux/arm64/v8.2"),
        (["linux/arm64", "linux/arm/v7"], "linux/arm64/v9", "linux/arm64"),
        (["linux/arm64", "linux/amd64"], "linux/amd64/v2", "linux/amd64"),
        (["linux/amd64", "linux/amd64/v3", "linux/amd64/v2"], "linux/amd64/v4", "linux/amd64/v3"),
        (["linux/amd64", "linux/amd64/v3", "linux/amd64/v2"], "linux/amd64/v2", "linux/amd64/v2"),
        (["linux/amd64/v3", "linux/amd64"], "linux/amd64", "linux/amd64"),
        (["linux/386", "linux/arm64"], "linux/amd64", "linux/386"),
        (["linux/386", "linux/amd64/v2"], "linux/amd64/v2", "linux/amd64/v2"),
        # An index's own odd spellings are normalised as well.
        (["linux/arm64", "linux/x86_64"], "linux/amd64", "linux/x86_64"),
        (["linux/arm", "linux/amd64"], "linux/arm/v7", "linux/arm"),
        (["LINUX/ARM64/8"], "linux/arm64", "LINUX/ARM64/8"),
        # Other architectures: a variant named on one side only, as lazyfs took it.
        (["linux/s390x/v1"], "linux/s390x", "linux/s390x/v1"),
        (["linux/riscv64/rva20", "linux/riscv64"], "linux/riscv64", "linux/riscv64"),
    ],
)
def test_the_best_platform_a_host_runs_is_picked(
    offered: list[str], wanted: str, picked: str
) -> None:
    assert _picked(offered, wanted) == picked


def test_an_arm_host_s_default_is_its_own_variant() -> None:
    # The index lists v7 first: an armv6 host must not take it (illegal instruction).
    offered = ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert _picked(offered, host_platform("armv6l", PI_ONE)) == "linux/arm/v6"
    assert _picked(offered[::-1], host_platform("armv7l", PI_TWO)) == "linux/arm/v7"


@pytest.mark.parametrize(
    ("offered", "wanted"),
    [
        (["linux/arm/v7", "linux/amd64"], "linux/arm/v6"),
        (["linux/arm/v8", "linux/arm/v7"], "linux/arm/v6"),
        (["linux/arm64/v9", "linux/arm64"], "linux/arm/v7"),
        (["linux/arm64/v9"], "linux/arm64"),
        (["linux/arm64/v8.2"], "linux/arm64/v8.1"),
        (["linux/amd64/v3", "linux/amd64/v2"], "linux/amd64"),
        (["linux/amd64"], "linux/386"),
        (["linux/arm64"], "linux/amd64"),
        (["linux/amd64"], "windows/amd64"),
        (["linux/s390x/v1"], "linux/s390x/v2"),
    ],
)
def test_a_platform_a_host_cannot_run_is_not_picked(offered: list[str], wanted: str) -> None:
    with pytest.raises(NotFound, match=r"^img: no \S+ image \(index offers "):
        _picked(offered, wanted)


PAIRS = [
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/amd64/v2", "linux/amd64"),
    ("linux/amd64", "linux/amd64/v2"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/amd64", "linux/x86_64"),
    ("linux/arm", "linux/arm/v6"),
    ("linux/arm/v6", "linux/arm/v7"),
    ("linux/arm", "linux/arm"),
    ("linux/arm64", "linux/arm/v7"),
    ("linux/amd64", "linux/386"),
    ("linux/s390x", "linux/s390x/v1"),
    ("linux/arm64", "linux/amd64"),
]


@pytest.mark.parametrize(("wanted", "stated"), PAIRS)
def test_a_single_image_is_taken_as_an_index_entry_of_its_platform_is(
    wanted: str, stated: str
) -> None:
    try:
        _picked([stated], wanted)
        from_index = True
    except NotFound:
        from_index = False
    assert platform_matches(parse_platform(wanted), stated) is from_index


@pytest.mark.parametrize(
    ("wanted", "stated", "matches"),
    [
        (Platform("linux", "arm64", "v8"), "linux/arm64", True),
        (Platform("linux", "amd64", "v2"), "linux/amd64", True),
        (Platform("linux", "amd64"), "linux/amd64/v2", False),
        (Platform("linux", "x86_64"), "linux/amd64", True),
        (Platform("linux", "arm"), "linux/arm/v7", True),
        (Platform("linux", "arm"), "linux/arm/v6", True),
        (Platform("linux", "arm", "v6"), "linux/arm", False),
    ],
)
def test_a_single_image_of_a_platform_a_host_runs_matches(
    wanted: Platform, stated: str, matches: bool
) -> None:
    assert platform_matches(wanted, stated) is matches


def _refusal(entries: list[dict[str, Any]], wanted: str = "linux/amd64") -> str:
    descs = [parse_descriptor(item, "entry") for item in entries]
    with pytest.raises(NotFound) as refused:
        select_platform(descs, "img", parse_platform(wanted))
    return str(refused.value)


def test_a_refusal_lists_what_the_index_offers() -> None:
    entries = [_entry("linux/arm/v7", 1), _entry("linux/s390x", 2)]
    assert _refusal(entries, "linux/arm/v6") == (
        "img: no linux/arm/v6 image (index offers linux/arm/v7, linux/s390x)"
    )


def test_a_refusal_names_entries_of_no_platform() -> None:
    assert _refusal([_entry(None, 1), _entry(None, 2)]) == (
        "img: no linux/amd64 image (index offers (no platform), (no platform))"
    )


def test_a_refusal_says_an_index_holds_only_attestations() -> None:
    attestation = {
        **_entry("unknown/unknown", 1),
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
    }
    assert _refusal([attestation]) == (
        "img: no linux/amd64 image (the index holds only attestation manifests)"
    )


def test_a_platform_is_normalised_the_same_wherever_it_is_written() -> None:
    assert normalise("linux", "AArch64", "V8") == Platform("linux", "arm64")
    assert normalise("linux", "armv7l") == Platform("linux", "arm", "v7")


def test_a_refusal_stays_one_line_whatever_the_index_names() -> None:
    entries = [_entry("linux/arm", 1, variant="v7\nrm -rf /"), _entry("linux\n/s390x", 2)]
    assert _refusal(entries, "linux/arm/v6") == (
        "img: no linux/arm/v6 image (index offers (no platform), linux/arm)"
    )
