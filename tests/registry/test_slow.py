"""A registry that says nothing, stalls, trickles or corrupts once: the pull ends or heals.

Every case runs with small flag values (deadlines of seconds, a speed
window of one second) so that it ends quickly; nothing here asserts how
long anything took, only how the pull ended, what was asked and what was
stored.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
import trio

from lazyfs.images.docker import DockerProvider
from lazyfs.progress import Progress
from providers.errors import DigestMismatch, TemporaryFailure
from providers.manifest import OCI_MANIFEST
from providers.registry import RegistryOptions
from providers.registry_http import HttpOptions
from tests.support.fault_proxy import Faults, run_proxy, trickle_headers
from tests.support.httpserver import serve
from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_pulls import docker, lazyfs, provider, provision_tree_diff, ranges
from tests.support.registry_servers import Registry

pytestmark = pytest.mark.integration

# Long enough for any loaded machine to have answered; short enough to end the test.
GUARD = 60.0


def options(**http: float) -> RegistryOptions:
    """Fast retries unless told otherwise: the faults are injected, waiting proves nothing."""
    settings: dict[str, float] = {"backoff": 0.01, "max_backoff": 0.05, **http}
    return RegistryOptions(http=HttpOptions(**settings))  # type: ignore[arg-type]


def assert_nothing_stored(dp: DockerProvider, digest: str) -> None:
    # A cancelled pull leaves its download threads to end by themselves (see
    # DockerProvider._ingest); each holds its blob's lock until it has
    # removed its partial file, so taking every blob lock waits for them all.
    for lock in sorted(dp.store.locks.glob("blob-*.lock")):
        with dp.store.lock(lock.stem):
            pass
    assert not dp.store.has_blob(digest)  # type: ignore[arg-type]
    assert list(dp.store.tmp.iterdir()) == []
    assert dp.store.get_image("docker.io/library/rich:oci") is None


async def wait_for(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, GUARD)


async def test_a_silent_registry_fails_at_the_deadline_without_asking_again(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    faults.silent = 10
    dp = provider(tmp_path, proxy, options(timeout=2))
    url = f"{proxy}/v2/library/rich/blobs/{big_layer}"
    with pytest.raises(TemporaryFailure, match=f"rich:oci: no answer from {url} within 2 s$"):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert len(ranges(faults)) == 1
    await wait_for(faults.hung_up)
    assert_nothing_stored(dp, big_layer)


async def test_a_registry_that_trickles_its_headers_fails_at_the_deadline(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    # Each byte comes well within the deadline; the headers never end.
    faults.trickle_headers = 10
    dp = provider(tmp_path, proxy, options(timeout=2))
    url = f"{proxy}/v2/library/rich/blobs/{big_layer}"
    with (
        trio.fail_after(GUARD),
        pytest.raises(TemporaryFailure, match=f"rich:oci: no answer from {url} within 2 s$"),
    ):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert len(ranges(faults)) == 1
    await wait_for(faults.hung_up)
    assert_nothing_stored(dp, big_layer)


async def test_a_token_server_that_trickles_its_headers_fails_at_the_deadline(
    tmp_path: Path,
) -> None:
    faults = Faults()

    class Handler(BaseHTTPRequestHandler):
        """A registry that wants a token, and its token server, which trickles."""

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/v2/"):
                self.send_response(401)
                realm = f"http://{self.headers['Host']}/token"
                self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            trickle_headers(self.connection, faults)

    with serve(Handler) as base:
        try:
            dp = provider(tmp_path, base, options(timeout=2))
            token = f"{base}/token"
            with (
                trio.fail_after(GUARD),
                pytest.raises(
                    TemporaryFailure,
                    match=f"rich:oci: no answer from token server {token} within 2 s$",
                ),
            ):
                await dp.fetch(docker("rich:oci"), Progress(enabled=False))
            await wait_for(faults.hung_up)
        finally:
            faults.stopping.set()


async def test_a_trickling_registry_fails_at_the_speed_floor(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    faults.trickle = 10
    dp = provider(tmp_path, proxy, options(min_speed=1024, min_speed_time=1, attempts=2))
    url = f"{proxy}/v2/library/rich/blobs/{big_layer}"
    floor = "registry sent less than 1024 bytes/s for 1 s"
    with pytest.raises(TemporaryFailure, match=f"rich:oci: blob download from {url} .*: {floor}$"):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    # The first cut resumed on a fresh connection from where the trickle got to.
    asked = ranges(faults)
    assert len(asked) == 2 and asked[0] == "" and asked[1].startswith("bytes=")
    assert_nothing_stored(dp, big_layer)


async def test_a_blob_that_keeps_coming_ends_at_its_deadline(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    # The floor is off: only the blob's deadline can end this download.
    faults.trickle = 10
    dp = provider(tmp_path, proxy, options(min_speed=0, blob_timeout=2))
    url = f"{proxy}/v2/library/rich/blobs/{big_layer}"
    late = r"did not finish within 2 s \(at byte [1-9][0-9]*\)$"
    with pytest.raises(TemporaryFailure, match=f"rich:oci: blob download from {url} {late}"):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert len(ranges(faults)) == 1
    await wait_for(faults.hung_up)
    assert_nothing_stored(dp, big_layer)


async def test_a_stalled_transfer_resumes_on_a_fresh_connection(
    proxy: str, faults: Faults, reference_tree: Path, tmp_path: Path
) -> None:
    faults.stalls = 1
    opts = options(min_speed=1024, min_speed_time=1)
    assert await provision_tree_diff(tmp_path, proxy, "rich:oci", reference_tree, opts) == []
    asked = ranges(faults)
    assert len(asked) == 2 and asked[0] == "" and asked[1].startswith("bytes=")
    await wait_for(faults.hung_up)


async def test_a_body_corrupted_once_is_fetched_again_from_its_start(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    faults.corruptions = 1
    dp = provider(tmp_path, proxy, options())
    await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert ranges(faults) == ["", ""]  # two whole bodies, the second from byte 0
    stored = dp.store.blob_path(big_layer).read_bytes()  # type: ignore[arg-type]
    assert "sha256:" + hashlib.sha256(stored).hexdigest() == big_layer
    assert list(dp.store.tmp.iterdir()) == []


async def test_a_body_corrupted_twice_is_refused(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    faults.corruptions = 2
    dp = provider(tmp_path, proxy, options())
    with pytest.raises(DigestMismatch, match=f"rich:oci: blob {big_layer}: expected {big_layer}"):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert ranges(faults) == ["", ""]
    assert_nothing_stored(dp, big_layer)


@pytest.mark.parametrize("what", ["manifest", "config"])
async def test_metadata_corrupted_once_is_asked_for_again(
    what: str, plain_registry: Registry, reference_tree: Path, tmp_path: Path
) -> None:
    manifest = requests.get(
        f"{plain_registry.url}/v2/library/rich/manifests/oci",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    ).json()
    target = "/manifests/oci" if what == "manifest" else manifest["config"]["digest"]
    faults = Faults(target=target, corruptions=1)
    with run_proxy(plain_registry.url, faults) as url:
        assert await provision_tree_diff(tmp_path, url, "rich:oci", reference_tree) == []
    assert ranges(faults) == ["", ""]


async def test_a_manifest_corrupted_twice_is_refused(
    plain_registry: Registry, tmp_path: Path
) -> None:
    faults = Faults(target="/manifests/oci", corruptions=2)
    with run_proxy(plain_registry.url, faults) as url:
        dp = provider(tmp_path, url, options())
        with pytest.raises(DigestMismatch, match=r"rich:oci: manifest at .*: expected sha256:"):
            await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert ranges(faults) == ["", ""]
    assert dp.store.get_image("docker.io/library/rich:oci") is None


# --- cancellation ---------------------------------------------------------------


async def test_a_cancelled_pull_hangs_up_mid_download(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    # The floor is off: only the cancellation can end this download early.
    faults.trickle = 1
    faults.trickle_limit = 200
    dp = provider(tmp_path, proxy, options(min_speed=0))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.fetch, docker("rich:oci"), Progress(enabled=False))
            await wait_for(faults.trickled)
            scope.cancel()
    assert scope.cancelled_caught
    await wait_for(faults.hung_up)  # before the trickle's 200 bytes were all sent
    assert len(ranges(faults)) == 1
    assert_nothing_stored(dp, big_layer)


async def test_a_cancelled_pull_stops_waiting_to_retry(
    proxy: str, faults: Faults, big_layer: str, tmp_path: Path
) -> None:
    # The registry asks for a long pause; only the cancellation can cut it short.
    faults.statuses = [503, 503, 503]
    faults.retry_after = "20"
    dp = provider(tmp_path, proxy, options(max_backoff=20, timeout=600))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.fetch, docker("rich:oci"), Progress(enabled=False))
            await wait_for(faults.asked)
            scope.cancel()
    assert scope.cancelled_caught
    assert len(ranges(faults)) == 1
    assert_nothing_stored(dp, big_layer)


# --- what the user sees ---------------------------------------------------------


def test_cli_silent_registry(plain_registry: Registry, tmp_path: Path) -> None:
    faults = Faults(target="/v2/", silent=10)
    with run_proxy(plain_registry.url, faults) as url:
        result = lazyfs(
            tmp_path, "--docker_registry", url, "--docker-registry-timeout", "1.5", "pull", "rich"
        )
    line = one_line_error(result)
    manifest = f"{url}/v2/library/rich/manifests/latest"
    assert line == f"lazyfs: docker.io/library/rich:latest: no answer from {manifest} within 1.5 s"


def test_cli_registry_trickling_its_headers(plain_registry: Registry, tmp_path: Path) -> None:
    faults = Faults(target="/v2/", trickle_headers=10)
    with run_proxy(plain_registry.url, faults) as url:
        result = lazyfs(
            tmp_path, "--docker_registry", url, "--docker-registry-timeout", "1.5", "pull", "rich",
            timeout=GUARD,
        )  # fmt: skip
    line = one_line_error(result)
    manifest = f"{url}/v2/library/rich/manifests/latest"
    assert line == f"lazyfs: docker.io/library/rich:latest: no answer from {manifest} within 1.5 s"


def test_cli_trickling_registry(plain_registry: Registry, big_layer: str, tmp_path: Path) -> None:
    faults = Faults(target=big_layer, trickle=10)
    with run_proxy(plain_registry.url, faults) as url:
        result = lazyfs(
            tmp_path,
            "--docker_registry", url,
            "--docker_registry_min_speed", "2048",
            "--docker-registry-min-speed-time", "1",
            "pull", "rich:oci",
        )  # fmt: skip
    line = one_line_error(result)
    assert line.startswith(f"lazyfs: docker.io/library/rich:oci: blob download from {url}/v2/")
    assert line.endswith(": registry sent less than 2048 bytes/s for 1 s")


def test_cli_a_body_that_stalls_on_a_closing_connection_is_cut_by_the_speed_floor(
    plain_registry: Registry, big_layer: str, tmp_path: Path
) -> None:
    """The fault proxy answers in HTTP/1.0, so http.client lets go of the connection's socket
    once the headers are in: the floor's window still bounds the body's silence, not the
    request timeout (an hour here: a pull waiting that long fails at the bound instead)."""
    faults = Faults(target=big_layer, stalls=1)
    with run_proxy(plain_registry.url, faults) as url:
        result = lazyfs(
            tmp_path,
            "--docker_registry", url,
            "--docker-registry-timeout", "3600",
            "--docker_registry_min_speed", "1024",
            "--docker-registry-min-speed-time", "1",
            "pull", "rich:oci",
            timeout=GUARD,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    asked = ranges(faults)
    assert len(asked) == 2 and asked[0] == "" and asked[1].startswith("bytes=")  # resumed
