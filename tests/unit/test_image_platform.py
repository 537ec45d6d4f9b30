"""The platform an image is recorded under, as docker and containerd take it: a single
image is what its config says, refused when another platform was asked for; one picked
from an index is the platform asked for. And an image of no layers is stored by no pull."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from lazyfs.images.docker import DockerProvider
from lazyfs.images.spec import parse_image
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BadImage, NotFound
from providers.platforms import Platform, config_platform, host_platform, platform_matches
from providers.registry_options import RegistryOptions
from tests.support import hand_images

HOST = str(host_platform())
# A platform this machine is not: what a foreign image is made of, or is asked for.
OTHER = "linux/s390x" if host_platform().architecture != "s390x" else "linux/arm64"
LAYERS = [hand_images.layer("hello", b"hi\n")]


@pytest.mark.parametrize(
    ("doc", "stated"),
    [
        ({"os": "linux", "architecture": "amd64"}, "linux/amd64"),
        ({"os": "linux", "architecture": "arm", "variant": "v7"}, "linux/arm/v7"),
        ({"os": "linux", "architecture": "arm64", "variant": ""}, "linux/arm64"),
        ({"os": "windows", "architecture": "amd64", "os.version": "10.0"}, "windows/amd64"),
        ({}, ""),
        ({"os": "linux"}, ""),
        ({"architecture": "amd64"}, ""),
        ({"os": "linux", "architecture": 64}, ""),
        ({"os": "linux\n", "architecture": "amd64"}, ""),
        ({"os": "linux", "architecture": "amd64/x"}, ""),
        ({"os": "linux", "architecture": "arm", "variant": ["v7"]}, ""),
    ],
)
def test_the_platform_a_config_states(doc: dict[str, object], stated: str) -> None:
    assert config_platform(json.dumps(doc).encode()) == stated


def test_a_config_that_is_no_object_is_a_bad_image() -> None:
    with pytest.raises(BadImage, match="not a JSON object"):
        config_platform(b"[]")


@pytest.mark.parametrize(
    ("wanted", "stated", "matches"),
    [
        (Platform("linux", "amd64"), "linux/amd64", True),
        (Platform("linux", "arm64"), "linux/amd64", False),
        (Platform("windows", "amd64"), "linux/amd64", False),
        (Platform("linux", "arm64"), "linux/arm64/v8", True),
        (Platform("linux", "arm64", "v8"), "linux/arm64", True),
        (Platform("linux", "arm", "v7"), "linux/arm/v7", True),
        (Platform("linux", "arm", "v6"), "linux/arm/v7", False),
    ],
)
def test_platform_matches(wanted: Platform, stated: str, matches: bool) -> None:
    assert platform_matches(wanted, stated) is matches


def _layout(directory: Path, platform: str | None, layers: Sequence[bytes] = LAYERS) -> None:
    hand_images.oci_layout(directory / "img:1", layers, platform, tag="1")


def _archive(directory: Path, platform: str | None, layers: Sequence[bytes] = LAYERS) -> None:
    hand_images.docker_archive(directory / "img:1.tar", layers, platform, "img:1")


FORMS = pytest.mark.parametrize("write", [_layout, _archive], ids=["oci-layout", "docker-save"])
Writer = Callable[..., None]


def _provider(tmp_path: Path, asked: str | None) -> DockerProvider:
    platform = None if asked is None else Platform(*asked.split("/"))
    return DockerProvider(
        Store(tmp_path / "store"), str(tmp_path / "images"), RegistryOptions(platform=platform)
    )


async def _pull(provider: DockerProvider, name: str = "img:1") -> list[str]:
    """Pull ``name`` as ``lazyfs pull`` does; the platforms the store then records."""
    image = parse_image(name)
    image.cached = False
    await provider.fetch(image, Progress(enabled=False))
    return [stored.manifest.platform for stored in provider.store.images()]


@FORMS
async def test_an_image_of_another_platform_than_asked_is_refused_and_not_stored(
    tmp_path: Path, write: Writer
) -> None:
    write(tmp_path / "images", HOST)
    provider = _provider(tmp_path, OTHER)
    with pytest.raises(NotFound) as refused:
        await _pull(provider)
    assert str(refused.value) == f"docker.io/library/img:1 is {HOST}, not the {OTHER} asked for"
    assert provider.store.images() == []
    assert not provider.store.has_blob(Digest(hand_images.digest_of(LAYERS[0])))


@FORMS
async def test_an_image_of_another_platform_not_asked_for_is_recorded_as_looked_up(
    tmp_path: Path, write: Writer
) -> None:
    # Under the host's platform, which the store's lookups name: found again there.
    write(tmp_path / "images", OTHER)
    assert await _pull(_provider(tmp_path, None)) == [HOST]


@FORMS
async def test_an_image_of_the_platform_asked_for_is_recorded_as_asked(
    tmp_path: Path, write: Writer
) -> None:
    # Named as asked (no variant), so that the next start asking the same finds it.
    write(tmp_path / "images", f"{OTHER}/v1")
    assert await _pull(_provider(tmp_path, OTHER)) == [OTHER]


@FORMS
async def test_an_image_whose_config_states_no_platform_is_recorded_as_the_host_s(
    tmp_path: Path, write: Writer
) -> None:
    write(tmp_path / "images", None)
    assert await _pull(_provider(tmp_path, None)) == [HOST]


async def test_a_variant_other_than_asked_is_refused(tmp_path: Path) -> None:
    _layout(tmp_path / "images", "linux/arm/v7")
    with pytest.raises(NotFound, match="is linux/arm/v7, not the linux/arm/v6 asked for"):
        await _pull(_provider(tmp_path, "linux/arm/v6"))


async def test_one_picked_from_an_index_is_the_platform_asked_for(tmp_path: Path) -> None:
    # The index says OTHER; the config the host's (as some builders leave it): the index
    # is what platform was asked of, as docker takes it.
    hand_images.oci_layout(tmp_path / "images" / "img:1", LAYERS, HOST, "1", index_platform=OTHER)
    assert await _pull(_provider(tmp_path, OTHER)) == [OTHER]


@FORMS
async def test_an_image_of_no_layers_is_refused_and_not_stored(
    tmp_path: Path, write: Writer
) -> None:
    write(tmp_path / "images", HOST, [])
    provider = _provider(tmp_path, None)
    with pytest.raises(BadImage) as refused:
        await _pull(provider)
    assert str(refused.value) == (
        "image docker.io/library/img:1 has no layers: no root filesystem to make"
    )
    assert provider.store.images() == []
