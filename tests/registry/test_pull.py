"""Pull from a plain-HTTP loopback registry: every manifest kind gives umoci's tree."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import requests

from lazyfs.progress import Progress
from providers.errors import NotFound
from providers.platforms import Platform, host_arch
from providers.registry import RegistryOptions
from tests.support.registry_pulls import FAST, docker, lazyfs, provider, provision_tree_diff
from tests.support.registry_seed import OTHER_ARCH, Seed
from tests.support.registry_servers import Registry, free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["rich:v2s2", "rich:oci", "multi:latest", "multidocker:latest"])
async def test_registry_image_equals_umoci_unpack(
    name: str, plain_registry: Registry, reference_tree: Path, tmp_path: Path
) -> None:
    # The reference names its registry: loopback, so plain HTTP after HTTPS fails.
    diff = await provision_tree_diff(
        tmp_path / "work", "https://unused.invalid", f"{plain_registry.host}/{name}", reference_tree
    )
    assert diff == []


async def test_docker_io_reference_goes_to_docker_registry_url(
    plain_registry: Registry, reference_tree: Path, tmp_path: Path
) -> None:
    diff = await provision_tree_diff(tmp_path, plain_registry.url, "rich:oci", reference_tree)
    assert diff == []


async def test_pinned_digest_resolves_and_is_checked(
    plain_registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    dp = provider(tmp_path, plain_registry.url)
    manifest = await dp.fetch(docker(f"rich@{seed.rich_v2s2}"), _progress())
    assert manifest.digest == seed.rich_v2s2
    assert all(dp.store.has_blob(layer.digest) for layer in manifest.layers)


async def test_platform_flag_picks_the_other_image(
    plain_registry: Registry, seed: Seed, other_tree: Path, tmp_path: Path
) -> None:
    options = RegistryOptions(platform=Platform("linux", OTHER_ARCH), http=FAST)
    diff = await provision_tree_diff(
        tmp_path, plain_registry.url, f"{plain_registry.host}/multi:latest", other_tree, options
    )
    assert diff == []


async def test_platform_missing_from_index_is_not_found(
    plain_registry: Registry, tmp_path: Path
) -> None:
    options = RegistryOptions(platform=Platform("linux", "mips64le"), http=FAST)
    dp = provider(tmp_path, plain_registry.url, options)
    with pytest.raises(NotFound, match="no linux/mips64le image"):
        await dp.fetch(docker(f"{plain_registry.host}/multi:latest"), _progress())


@pytest.mark.parametrize(("which", "name"), [("plain", "rich:oci"), ("schema1", "rich:s1")])
async def test_a_single_image_of_another_platform_than_asked_is_refused(
    request: pytest.FixtureRequest, which: str, name: str, tmp_path: Path
) -> None:
    # One image, no index: its config (a schema 1 manifest's history) says the host's.
    registry: Registry = request.getfixturevalue(f"{which}_registry")
    options = RegistryOptions(platform=Platform("linux", OTHER_ARCH), http=FAST)
    dp = provider(tmp_path, registry.url, options)
    with pytest.raises(NotFound) as refused:
        await dp.fetch(docker(name), _progress())
    assert str(refused.value) == (
        f"docker.io/library/{name} is linux/{host_arch()}, not the linux/{OTHER_ARCH} asked for"
    )
    assert dp.store.images() == []
    # Asked for none, it is recorded as what it is.
    await provider(tmp_path, registry.url).fetch(docker(name), _progress())
    assert [image.manifest.platform for image in dp.store.images()] == [f"linux/{host_arch()}"]


async def test_a_lazy_trusting_pull_of_a_missing_image_is_not_found_as_such(
    plain_registry: Registry, tmp_path: Path
) -> None:
    # The lookup's code loads beside the resolve: its error is still the resolve's own.
    dp = provider(tmp_path, plain_registry.url)
    dp.trust_published = True
    with pytest.raises(NotFound):
        await dp.fetch_lazy(docker(f"{plain_registry.host}/no-such-image:1"), _progress())


async def test_a_lazy_pull_runs_its_ahead_work_only_when_it_asks_the_registry(
    plain_registry: Registry, tmp_path: Path
) -> None:
    dp = provider(tmp_path, plain_registry.url)
    calls: list[str] = []
    image = docker(f"{plain_registry.host}/rich:oci")

    def joined() -> list[str]:
        for thread in threading.enumerate():
            if thread.name == "lazyfs-imports":
                thread.join(10)
        return calls

    await dp.fetch_lazy(image, _progress(), lambda: calls.append("ahead"))
    assert joined() == ["ahead"]
    # The store holds it now: a start from it asks no registry, and loads nothing ahead.
    await dp.fetch_lazy(image, _progress(), lambda: calls.append("again"))
    assert joined() == ["ahead"]


def test_cli_pull_prints_manifest_and_stores_blobs(
    plain_registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    result = lazyfs(tmp_path, "--docker_registry", plain_registry.url, "pull", "rich:v2s2")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["reference"] == "docker.io/library/rich:v2s2"
    assert manifest["digest"] == seed.rich_v2s2
    blobs = tmp_path / "store" / "docker" / "blobs" / "sha256"
    for layer in manifest["layers"]:
        assert (blobs / layer["digest"].split(":")[1]).is_file()
    # Pulled again: resolved again, blobs reused, same answer.
    again = lazyfs(tmp_path, "--docker-registry", plain_registry.url, "pull", "docker:rich:v2s2")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == manifest


def test_mirror_is_tried_first_and_falls_through(plain_registry: Registry, tmp_path: Path) -> None:
    dead_mirror = f"http://127.0.0.1:{free_port()}"
    result = lazyfs(
        tmp_path,
        "--docker_registry",
        "http://127.0.0.1:1",
        "--docker_registry_mirrors",
        f"{dead_mirror},{plain_registry.url}",
        "pull",
        "rich:oci",
    )
    # The first mirror is down, the second has it; the upstream is never asked.
    assert result.returncode == 0, result.stderr


def _progress() -> Progress:
    return Progress(enabled=False)


async def test_schema1_image_equals_umoci_unpack(
    schema1_registry: Registry, reference_tree: Path, tmp_path: Path
) -> None:
    diff = await provision_tree_diff(tmp_path, schema1_registry.url, "rich:s1", reference_tree)
    assert diff == []


async def test_schema1_pinned_by_its_registry_digest(
    schema1_registry: Registry, tmp_path: Path
) -> None:
    response = requests.get(f"{schema1_registry.url}/v2/library/rich/manifests/s1", timeout=10)
    digest = response.headers["Docker-Content-Digest"]
    assert "signatures" in response.json()
    dp = provider(tmp_path, schema1_registry.url)
    manifest = await dp.fetch(docker(f"rich@{digest}"), _progress())
    assert manifest.digest == digest
    assert [layer.diff_id for layer in manifest.layers] == [None, None, None]


def test_the_store_keeps_one_image_per_platform(
    plain_registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    """A pull for another platform does not become what this platform provisions."""
    url = ("--docker_registry", plain_registry.url)
    name = f"{plain_registry.host}/multi:latest"
    other = lazyfs(tmp_path, *url, "--platform", f"linux/{OTHER_ARCH}", "pull", name)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["digest"] == seed.other_oci

    for platform in ((), ("--platform", f"linux/{host_arch()}")):
        result = lazyfs(tmp_path, *url, *platform, "provision", "c", name, "--backend", "copy")
        assert result.returncode == 0, result.stderr
        provisioned = json.loads(result.stdout)["image"]
        assert provisioned["digest"] == seed.rich_oci
        assert lazyfs(tmp_path, "destroy", "c").returncode == 0
