"""A misbehaving proxy between lazyfs and the registry: resume, retry or refuse.

Also the errors a user sees through the CLI, each one line naming the image
and the cause.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests
import trio

from backends.mounts import mounts_under, unmount_all_under
from lazyfs.progress import Progress
from providers.digest import Digest
from providers.errors import DigestMismatch, TemporaryFailure
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_auth import Credentials
from providers.registry_http import HttpOptions
from tests.support.fault_proxy import Faults, run_proxy
from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_pulls import FAST, docker, lazyfs, provider, provision_tree_diff, ranges
from tests.support.registry_seed import PASSWORD, USER
from tests.support.registry_servers import Registry, free_port

pytestmark = pytest.mark.integration


async def test_cut_transfer_resumes_with_range(
    proxy: str, faults: Faults, reference_tree: Path, tmp_path: Path
) -> None:
    faults.cuts = 2
    assert await provision_tree_diff(tmp_path, proxy, "rich:oci", reference_tree) == []
    asked = ranges(faults)
    assert asked[0] == "" and all(r.startswith("bytes=") for r in asked[1:]) and len(asked) == 3


async def test_cut_transfer_resumes_when_registry_ignores_range(
    proxy: str, faults: Faults, reference_tree: Path, tmp_path: Path
) -> None:
    faults.cuts = 1
    faults.ignore_range = True
    assert await provision_tree_diff(tmp_path, proxy, "rich:v2s2", reference_tree) == []
    assert len(ranges(faults)) == 2


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_temporary_statuses_are_retried(
    status: int, proxy: str, faults: Faults, reference_tree: Path, tmp_path: Path
) -> None:
    faults.statuses = [status, status]
    assert await provision_tree_diff(tmp_path, proxy, "rich:oci", reference_tree) == []
    assert len(ranges(faults)) == 3


async def test_retries_are_bounded_and_nothing_is_stored(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    faults.statuses = [500] * 20
    dp = provider(tmp_path, proxy)
    with pytest.raises(TemporaryFailure, match=r"rich:oci: registry failed: HTTP 500"):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert len(ranges(faults)) == 5
    assert not dp.store.has_blob(big_layer)  # type: ignore[arg-type]
    assert list(dp.store.tmp.iterdir()) == []


async def test_corrupt_byte_is_refused_and_never_stored(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    faults.corrupt = True
    dp = provider(tmp_path, proxy)
    with pytest.raises(DigestMismatch, match=big_layer):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert ranges(faults) == ["", ""]  # asked again from its start, then refused
    assert not dp.store.has_blob(big_layer)  # type: ignore[arg-type]
    assert list(dp.store.tmp.iterdir()) == []
    assert dp.store.get_image("docker.io/library/rich:oci") is None


async def test_redirect_to_another_host_drops_authorization(
    basic_registry: Registry, big_layer: str, tmp_path: Path
) -> None:
    faults = Faults(target=big_layer)
    with run_proxy(basic_registry.url, faults) as url:
        # The "blob storage" is the proxy under another name; it brings its own auth.
        port = url.rsplit(":", 1)[1]
        faults.redirect_to = f"http://localhost:{port}"
        faults.upstream_auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        creds = {f"127.0.0.1:{port}": Credentials(USER, PASSWORD)}
        opts = RegistryOptions(http=HttpOptions(credentials=creds, backoff=0.01))
        dp = provider(tmp_path, url, opts)
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    to_blob = [(h.get("Host", ""), h) for path, h in faults.seen if big_layer in path]
    assert [host.split(":")[0] for host, _ in to_blob] == ["127.0.0.1", "localhost"]
    assert "Authorization" in to_blob[0][1]
    assert "Authorization" not in to_blob[1][1]


# --- what the user sees ---------------------------------------------------------


def test_cli_unknown_image(plain_registry: Registry, tmp_path: Path) -> None:
    result = lazyfs(tmp_path, "--docker_registry", plain_registry.url, "pull", "nosuch/image:1")
    line = one_line_error(result)
    assert "docker.io/nosuch/image:1: not found" in line and "/v2/nosuch/image/" in line


def test_cli_unknown_tag(plain_registry: Registry, tmp_path: Path) -> None:
    result = lazyfs(tmp_path, "--docker_registry", plain_registry.url, "pull", "rich:nosuchtag")
    line = one_line_error(result)
    assert "docker.io/library/rich:nosuchtag: not found" in line and "manifest unknown" in line


def test_cli_unreachable_registry(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = lazyfs(tmp_path, "--docker_registry", url, "pull", "rich:oci")
    line = one_line_error(result)
    assert f"docker.io/library/rich:oci: cannot reach {url}/v2/" in line


def test_cli_manifest_not_json(plain_registry: Registry, tmp_path: Path) -> None:
    faults = Faults(garbage_manifest=True)
    with run_proxy(plain_registry.url, faults) as url:
        result = lazyfs(tmp_path, "--docker_registry", url, "provision", "c1", "rich:oci")
    line = one_line_error(result)
    assert "docker.io/library/rich:oci: manifest is not valid JSON" in line


def test_cli_provision_from_registry_prints_config(
    plain_registry: Registry, tmp_path: Path
) -> None:
    url = plain_registry.url
    destroy_tried = False
    try:
        result = lazyfs(tmp_path, "--docker_registry", url, "provision", "c1", "rich:oci")
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["config"]["entrypoint"] == ["/bin/tool"]
        destroy_tried = True
        assert lazyfs(tmp_path, "destroy", "c1").returncode == 0
    finally:
        try:
            if not destroy_tried:
                lazyfs(tmp_path, "destroy", "c1")
        finally:
            if mounts_under(tmp_path):
                unmount_all_under(tmp_path)


async def test_concurrent_pulls_download_each_blob_once(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    # Two providers on one store, as two agents' provisions would be; the two
    # tags share their layer blobs.
    first, second = provider(tmp_path, proxy), provider(tmp_path, proxy)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.fetch, docker("rich:oci"), Progress(enabled=False))
        nursery.start_soon(second.fetch, docker("rich:v2s2"), Progress(enabled=False))
    assert len(ranges(faults)) == 1
    assert first.store.has_blob(big_layer)  # type: ignore[arg-type]


async def test_a_range_read_that_breaks_is_asked_for_again(
    proxy: str, faults: Faults, big_layer: str, plain_registry: Registry
) -> None:
    client = RegistryClient(RegistryOptions(registry=proxy, http=FAST))
    await trio.to_thread.run_sync(client.resolve, "rich:oci")
    whole = requests.get(f"{plain_registry.url}/v2/library/rich/blobs/{big_layer}", timeout=10)
    length = len(whole.content) - 200
    faults.cuts = 1
    got = await trio.to_thread.run_sync(client.read_range, Digest(big_layer), 100, length)
    assert got == whole.content[100 : 100 + length]
    # Asked again for the rest only: the proxy cut the first answer after half its body.
    end = 100 + length - 1
    assert ranges(faults) == [f"bytes=100-{end}", f"bytes={100 + length // 2}-{end}"]
