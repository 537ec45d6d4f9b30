"""Range reads for lazy pulling (``read_range``, ``stream_range``) against real registries.

What a range read shares with pulls: token auth (cached, renewed), TLS, the
headers' deadline, mirrors tried in order. How it takes what a registry
answers: a 206 must be the range asked for; a 200 with the whole blob (a
pull-through cache that has not cached it yet: Debian's docker-registry in
proxy mode, here) is read as a stream, never held whole.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from providers.digest import Digest
from providers.errors import BadImage, TemporaryFailure
from providers.manifest import ImageManifest
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_auth import Credentials
from providers.registry_http import HttpOptions
from providers.registry_range import HOLD_FIRST, MirrorHolds
from tests.support.blob_storage import Front, run_front
from tests.support.fault_proxy import FORWARDED, Faults
from tests.support.httpserver import relay, serve
from tests.support.registry_pulls import FAST, ranges
from tests.support.registry_seed import PASSWORD, USER, TokenSetup
from tests.support.registry_servers import Registry, Tls, free_port

pytestmark = pytest.mark.integration

# Long enough for any loaded machine; the wait ends as soon as the mirror has cached.
GUARD = 60.0


def client(url: str, http: HttpOptions = FAST, mirrors: tuple[str, ...] = ()) -> RegistryClient:
    return RegistryClient(RegistryOptions(registry=url, mirrors=mirrors, http=http))


def joined(pieces: Iterable[tuple[int, bytes]]) -> tuple[list[int], bytes]:
    """The offsets of the pieces and their bytes; fails unless they follow each other."""
    offsets: list[int] = []
    data = bytearray()
    for at, piece in pieces:
        assert piece, "a piece is never empty"
        if offsets:
            assert at == offsets[0] + len(data), "pieces follow each other"
        offsets.append(at)
        data += piece
    return offsets, bytes(data)


def blob(registry: Registry, name: str, digest: str) -> bytes:
    return requests.get(f"{registry.url}/v2/{name}/blobs/{digest}", timeout=30).content


# --- what the registry answers ------------------------------------------------------


def test_a_whole_body_answer_is_read_through_not_held(
    plain_registry: Registry, big_blob: tuple[str, bytes]
) -> None:
    digest, data = big_blob
    front = Front(digest, mode="whole", data=data)
    with run_front(plain_registry.url, front) as url:
        reader = client(url)
        reader.resolve("bigblob:1")
        tracemalloc.start()
        try:
            got = reader.read_range(Digest(digest), len(data) - 1000, 1000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got == data[-1000:]
    assert front.blob_requests() == 1
    # Neither the blob nor the part of it before the range was kept: a few
    # chunks of the body at a time.
    assert peak < len(data) // 4


def test_stream_range_yields_everything_a_whole_body_answer_brings(
    plain_registry: Registry, big_blob: tuple[str, bytes]
) -> None:
    digest, data = big_blob
    front = Front(digest, mode="whole", data=data)
    with run_front(plain_registry.url, front) as url:
        reader = client(url)
        reader.resolve("bigblob:1")
        offsets, got = joined(reader.stream_range(Digest(digest), 1000, 5000))
    assert offsets[0] == 0 and got == data


def test_stream_range_yields_the_range_of_a_partial_answer(
    plain_registry: Registry, big_blob: tuple[str, bytes]
) -> None:
    digest, data = big_blob
    reader = client(plain_registry.url)
    reader.resolve("bigblob:1")
    offsets, got = joined(reader.stream_range(Digest(digest), 1000, 200_000))
    assert offsets[0] == 1000 and got == data[1000:201_000]
    # Clamped at the blob's end, as read_range is.
    offsets, got = joined(reader.stream_range(Digest(digest), len(data) - 10, 100))
    assert offsets == [len(data) - 10] and got == data[-10:]


def test_a_whole_body_answer_that_breaks_resumes_without_repeating_a_byte(
    proxy: str, faults: Faults, big_layer: str, plain_registry: Registry
) -> None:
    reader = client(proxy)
    reader.resolve("rich:oci")
    whole = blob(plain_registry, "library/rich", big_layer)
    faults.ignore_range = True  # every answer is the whole blob
    faults.cuts = 1  # the first one breaks off after half of it
    offsets, got = joined(reader.stream_range(Digest(big_layer), len(whole) - 100, 100))
    # The second answer starts at 0 again: what was yielded is not yielded twice.
    assert offsets[0] == 0 and got == whole
    assert ranges(faults) == [f"bytes={len(whole) - 100}-{len(whole) - 1}"] * 2


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes 0-99/{size}",  # another start
        "bytes 100-149/{size}",  # shorter
        "bytes 100-199/{bigger}",  # another blob's size
        "bytes */{size}",  # not a range
        "",  # none at all
    ],
)
def test_a_partial_answer_for_another_range_is_refused(
    plain_registry: Registry, big_blob: tuple[str, bytes], content_range: str
) -> None:
    digest, data = big_blob
    header = content_range.format(size=len(data), bigger=len(data) + 1)
    front = Front(digest, mode="range", data=data, content_range=header)
    with run_front(plain_registry.url, front) as url:
        reader = client(url)
        reader.resolve("bigblob:1")
        with pytest.raises(BadImage, match=r"bigblob:1: .* to Range: bytes=100-199"):
            reader.read_range(Digest(digest), 100, 100)


# --- the same ways as pulls -------------------------------------------------------------


def test_range_reads_use_cached_tokens_and_renew_refused_ones(
    token_registry: TokenSetup, big_layer: str
) -> None:
    registry, tokens = token_registry.registry, token_registry.tokens
    creds = {registry.host: Credentials(USER, PASSWORD)}
    reader = client(registry.url, HttpOptions(credentials=creds, backoff=0.01))
    reader.resolve("rich:oci")
    whole = reader.read_range(Digest(big_layer), 0, 1 << 30)
    asked = len(tokens.requests)
    assert reader.read_range(Digest(big_layer), 10, 100) == whole[10:110]
    assert len(tokens.requests) == asked  # the token of the resolve served both
    for key in list(reader.http.tokens._tokens):
        reader.http.tokens.put(key, "not-a-valid-token", 300)
    assert reader.read_range(Digest(big_layer), 20, 100) == whole[20:120]
    assert [r["scope"] for r in tokens.requests[asked:]] == ["repository:library/rich:pull"]


def test_range_read_over_tls(tls_registry: Registry, tls: Tls, big_layer: str) -> None:
    reader = client(tls_registry.url, HttpOptions(ca_file=str(tls.ca), backoff=0.01))
    reader.resolve("rich:oci")
    whole = reader.read_range(Digest(big_layer), 0, 1 << 30)
    assert reader.read_range(Digest(big_layer), 5, 50) == whole[5:55]


def test_a_range_read_whose_headers_trickle_fails_at_the_deadline(
    proxy: str, faults: Faults, big_layer: str
) -> None:
    reader = client(proxy, HttpOptions(timeout=2, backoff=0.01, max_backoff=0.05))
    reader.resolve("rich:oci")
    faults.trickle_headers = 10
    url = f"{proxy}/v2/library/rich/blobs/{big_layer}"
    with pytest.raises(TemporaryFailure, match=f"no answer from {url} within 2 s$"):
        reader.read_range(Digest(big_layer), 0, 100)
    assert len(ranges(faults)) == 1


def test_a_range_read_passes_from_a_failing_mirror_to_the_registry(
    plain_registry: Registry, proxy: str, faults: Faults, big_layer: str
) -> None:
    reader = client(plain_registry.url, mirrors=(proxy,))
    reader.resolve("rich:oci")  # through the mirror
    faults.statuses = [404]  # the mirror has lost the blob
    got = reader.read_range(Digest(big_layer), 10, 100)
    assert got == blob(plain_registry, "library/rich", big_layer)[10:110]
    assert ranges(faults) == ["bytes=10-109"]


def _retried_at(caplog: pytest.LogCaptureFixture, base: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()
            and base in r.getMessage()]  # fmt: skip


def _passed_over(caplog: pytest.LogCaptureFixture, base: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"mirror {base}")]


@contextmanager
def _refusing() -> Iterator[str]:
    """A base URL whose port refuses every connection, kept so for the test (bound, never
    listening: no other socket can take the port meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _daemon_reader(registry: str, mirror: str, digest: str, size: int) -> RegistryClient:
    """A client reading ``digest`` as a cache daemon does: every endpoint, mirrors first."""
    reader = client(registry, mirrors=(mirror,))
    reader.add_blob("rich", Digest(digest), size)
    return reader


def _size(manifest: ImageManifest, digest: str) -> int:
    return next(layer.size for layer in manifest.layers if layer.digest == digest)


def test_a_mirror_that_is_not_there_is_passed_over_at_once(
    plain_registry: Registry, big_layer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused: the next endpoint is asked with no retry at the mirror, for the image's
    manifest and for a range of a blob as a cache daemon reads it."""
    with _refusing() as dead, caplog.at_level(logging.INFO, "providers.retry"):
        manifest = client(plain_registry.url, mirrors=(dead,)).resolve("rich:oci")
        reader = _daemon_reader(plain_registry.url, dead, big_layer, _size(manifest, big_layer))
        got = reader.read_range(Digest(big_layer), 10, 100)
    assert got == blob(plain_registry, "library/rich", big_layer)[10:110]
    assert _retried_at(caplog, dead) == []
    passed = _passed_over(caplog, dead)
    assert len(passed) == 2 and all("Connection refused" in message for message in passed)


def test_a_mirror_passed_over_is_asked_again_with_retries_when_the_registry_fails_too(
    plain_registry: Registry, big_layer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both down: the error told is the registry's, after the mirror's retries."""
    size = _size(client(plain_registry.url).resolve("rich:oci"), big_layer)
    with (
        _refusing() as dead,
        _refusing() as nowhere,
        caplog.at_level(logging.INFO, "providers.retry"),
    ):
        with pytest.raises(TemporaryFailure, match=f"cannot reach {nowhere}/v2/"):
            client(nowhere, mirrors=(dead,)).resolve("rich:oci")
        with pytest.raises(TemporaryFailure, match=f"cannot reach {nowhere}/v2/"):
            _daemon_reader(nowhere, dead, big_layer, size).read_range(Digest(big_layer), 0, 10)
    retried = _retried_at(caplog, dead)
    assert any("/manifests/" in line for line in retried)
    assert any("/blobs/" in line for line in retried)


@contextmanager
def _mirror_started_by_the_registry(upstream: str) -> Iterator[tuple[str, str]]:
    """A mirror relaying to ``upstream``, not there (its port refuses connections) until a
    registry that answers 404 to everything is first asked; yields both URLs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: a connection is refused
    port = sock.getsockname()[1]

    class Relay(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            relay(self, requests.get(upstream + self.path, headers=headers, timeout=30), FORWARDED)

    mirror = ThreadingHTTPServer(("127.0.0.1", port), Relay, bind_and_activate=False)
    mirror.socket.close()
    mirror.socket = sock
    started = threading.Event()
    lock = threading.Lock()

    class Nothing(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                if not started.is_set():
                    mirror.server_activate()
                    threading.Thread(target=mirror.serve_forever, daemon=True).start()
                    started.set()
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    try:
        with serve(Nothing) as registry:
            yield f"http://127.0.0.1:{port}", registry
    finally:
        if started.is_set():
            mirror.shutdown()
        mirror.server_close()


def test_a_mirror_back_by_the_time_the_registry_fails_serves_the_pull(
    plain_registry: Registry, big_layer: str
) -> None:
    """Down for a moment (a restart): asked again once the registry has failed too."""
    with _mirror_started_by_the_registry(plain_registry.url) as (mirror, registry):
        manifest = client(registry, mirrors=(mirror,)).resolve("rich:oci")
    assert manifest.digest == client(plain_registry.url).resolve("rich:oci").digest
    size = _size(manifest, big_layer)
    with _mirror_started_by_the_registry(plain_registry.url) as (mirror, registry):
        got = _daemon_reader(registry, mirror, big_layer, size).read_range(Digest(big_layer), 5, 50)
    assert got == blob(plain_registry, "library/rich", big_layer)[5:55]


def test_a_mirror_that_fails_once_is_asked_again_when_the_registry_is_nowhere(
    plain_registry: Registry, proxy: str, faults: Faults, big_layer: str
) -> None:
    """Its answers are the pull's only hope: an error status, or a body that breaks, is
    retried at a mirror too."""
    with _refusing() as nowhere:
        reader = client(nowhere, mirrors=(proxy,))
        faults.target, faults.statuses = "/manifests/", [503]
        manifest = reader.resolve("rich:oci")
        faults.target, faults.statuses, faults.cuts = big_layer, [503], 1
        got = reader.read_range(Digest(big_layer), 0, _size(manifest, big_layer))
    assert got == blob(plain_registry, "library/rich", big_layer)


def test_a_mirror_that_failed_a_blob_is_not_asked_first_for_it_again(
    plain_registry: Registry, proxy: str, faults: Faults, big_layer: str
) -> None:
    """It takes the connection and never answers: the first read waits out the deadline,
    the reads after it go to the registry at once, as a lazy mount's many reads would."""
    patient = HttpOptions(timeout=1, backoff=0.01, max_backoff=0.05)
    reader = client(plain_registry.url, patient, mirrors=(proxy,))
    reader.resolve("rich:oci")  # through the mirror
    whole = blob(plain_registry, "library/rich", big_layer)
    faults.silent = 1000
    assert reader.read_range(Digest(big_layer), 10, 100) == whole[10:110]
    assert ranges(faults) == ["bytes=10-109"]
    assert reader.read_range(Digest(big_layer), 200, 100) == whole[200:300]
    assert reader.read_range(Digest(big_layer), 0, 10) == whole[:10]
    assert ranges(faults) == ["bytes=10-109"]


def test_a_mirror_that_answers_but_serves_no_range_is_held_longer_each_time(
    plain_registry: Registry, proxy: str, faults: Faults, big_layer: str
) -> None:
    """Headers, then half the body and nothing: answering is not serving, and only a range
    served whole lets a mirror off its hold, so the hold doubles as it stalls again."""
    stalling = HttpOptions(
        attempts=1, backoff=0.01, max_backoff=0.05, min_speed=1024, min_speed_time=0.5
    )
    reader = client(plain_registry.url, stalling, mirrors=(proxy,))
    reader.resolve("rich:oci")  # through the mirror
    now = [0.0]
    reader.ranges.holds = MirrorHolds(clock=lambda: now[0])
    whole = blob(plain_registry, "library/rich", big_layer)
    faults.stalls = 1000
    for at in (HOLD_FIRST, 2.5 * HOLD_FIRST):  # the first hold has ended; the second has not
        assert reader.read_range(Digest(big_layer), 1000, 100) == whole[1000:1100]
        now[0] = at
    assert reader.read_range(Digest(big_layer), 1000, 100) == whole[1000:1100]
    assert ranges(faults) == ["bytes=1000-1099"] * 2


def test_a_held_mirror_is_asked_again_when_the_registry_fails_too(
    plain_registry: Registry,
    proxy: str,
    faults: Faults,
    big_layer: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mirror-only machine: the mirror lost the blob for a moment (404), and is held;
    the registry cannot be reached, so the next read asks the held mirror after all."""
    with _refusing() as nowhere:
        reader = client(nowhere, mirrors=(proxy,))
        reader.resolve("rich:oci")  # through the mirror
        faults.statuses = [404]
        with pytest.raises(TemporaryFailure, match=f"cannot reach {nowhere}/v2/"):
            reader.read_range(Digest(big_layer), 10, 100)
        caplog.clear()
        got = reader.read_range(Digest(big_layer), 10, 100)
    assert got == blob(plain_registry, "library/rich", big_layer)[10:110]
    assert ranges(faults) == ["bytes=10-109", "bytes=10-109"]
    # Held: the registry was asked first this time.
    told = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{nowhere}/v2/") and m.endswith("passed over again") for m in told)


# --- through a pull-through cache -------------------------------------------------------


def wait_until_cached(mirror: Registry, repository: str, digest: str) -> None:
    """Wait (up to GUARD) until the mirror has committed the blob to its storage."""
    link = (
        mirror.storage / "docker/registry/v2/repositories" / repository
        / "_layers/sha256" / digest.removeprefix("sha256:") / "link"
    )  # fmt: skip
    end = time.monotonic() + GUARD
    while not link.exists():
        assert time.monotonic() < end, f"the pull-through cache did not cache {digest}"
        time.sleep(0.05)


def test_range_reads_through_a_pull_through_cache(
    pull_through: Registry, big_blob: tuple[str, bytes], tmp_path: Path
) -> None:
    digest, data = big_blob
    # Only the mirror can answer: the registry is nowhere.
    reader = client(f"http://127.0.0.1:{free_port()}", mirrors=(pull_through.url,))
    reader.resolve("bigblob:1")
    # Not cached yet: the mirror answers 200 with the whole blob as it fetches it.
    offsets, got = joined(reader.stream_range(Digest(digest), 3000, 5000))
    assert offsets[0] == 0 and got == data
    assert reader.read_range(Digest(digest), 123_456, 70_000) == data[123_456:193_456]
    wait_until_cached(pull_through, "library/bigblob", digest)
    # Cached: the mirror answers 206 with the range.
    offsets, got = joined(reader.stream_range(Digest(digest), 3000, 5000))
    assert offsets[0] == 3000 and got == data[3000:8000]
    assert reader.read_range(Digest(digest), len(data) - 77, 1000) == data[-77:]
