"""Prefetch traces published beside an image by several machines, found by the command's key.

Each machine that publishes pushes the traces its own cache keeps, as an
artifact of its own (``lazyfs.publish.traces``): the newest artifact may
lack the command another machine ran. ``fetch_trace`` takes a key's trace
from the newest artifact that lists it, replaces a cut one the store keeps
when the published one goes further, and asks nothing for a whole one kept.
Against Debian's ``docker-registry``, which has no Referrers API: the
artifacts are listed through the referrers tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.index.trace import Read, Trace, encode, load_trace, store_trace
from lazyfs.publish.listing import MAX_TRIED
from lazyfs.publish.push import repository_push
from lazyfs.publish.traces import fetch_trace, publish_traces
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes
from providers.manifest import ImageManifest
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_push import RegistryPush
from tests.support.registry_pulls import FAST
from tests.support.registry_seed import Seed
from tests.support.registry_servers import (
    Registry,
    copy_storage,
    run_registry,
    tamper_stored_blob,
)


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


_IMAGE = Digest("sha256:" + "ab" * 32)


def _client(registry: Registry) -> RegistryClient:
    return RegistryClient(RegistryOptions(registry=registry.url, http=FAST))


def _publish(push: RegistryPush, manifest: ImageManifest, cache: Path, *traces: Trace) -> None:
    """A machine whose cache keeps ``traces`` publishes them."""
    for trace in traces:
        store_trace(cache, trace)
    assert publish_traces(cache, push, manifest) is not None


def test_each_command_s_trace_is_found_in_the_newest_artifact_listing_it(
    registry: Registry, tmp_path: Path
) -> None:
    client = _client(registry)
    manifest = client.resolve(f"{registry.host}/rich:oci")
    push = repository_push(client, manifest.reference)
    layer = manifest.layers[0].digest
    ran, other = f"{manifest.digest}@{'a' * 32}", f"{manifest.digest}@{'b' * 32}"
    first = Trace(ran, (Read(layer, 0, 4096),))
    # One machine ran `ran`, then another ran `other` and published after it.
    _publish(push, manifest, tmp_path / "one", first)
    _publish(push, manifest, tmp_path / "two", Trace(other, (Read(layer, 0, 100),)))
    store = Store(tmp_path / "store")
    assert fetch_trace(store, client, manifest, ran)
    assert load_trace(store.root, ran) == first
    assert load_trace(store.root, other) is None  # only the command this start runs

    # A third machine ran `ran` further than the first, which was stopped: its trace,
    # published last, replaces the cut one kept here; a whole one kept is not asked for.
    store_trace(store.root, Trace(ran, first.reads, cut=True))
    further = Trace(ran, (Read(layer, 0, 8192),), cut=True)
    _publish(push, manifest, tmp_path / "three", further)
    assert fetch_trace(store, client, manifest, ran)
    assert load_trace(store.root, ran) == further
    whole = Trace(ran, (Read(layer, 0, 100),))
    store_trace(store.root, whole)
    assert fetch_trace(store, None, manifest, ran)  # type: ignore[arg-type]  # asks nothing
    assert load_trace(store.root, ran) == whole


def test_a_whole_trace_the_mount_s_cache_keeps_is_not_asked_for(tmp_path: Path) -> None:
    """The mount replays the trace its own daemon recorded: no registry is asked."""
    manifest = ImageManifest("registry.example:5000/app:1", _IMAGE, ())
    key = f"{_IMAGE}@{'a' * 32}"
    cache = tmp_path / "cache"
    store_trace(cache, Trace(key, (Read(_IMAGE, 0, 100),)))
    store = Store(tmp_path / "store")
    assert fetch_trace(store, None, manifest, key, None, cache)  # type: ignore[arg-type]
    assert load_trace(store.root, key) is None


def test_a_published_trace_that_goes_no_further_leaves_the_cut_one_kept(
    registry: Registry, tmp_path: Path
) -> None:
    client = _client(registry)
    manifest = client.resolve(f"{registry.host}/rich:oci")
    push = repository_push(client, manifest.reference)
    layer = manifest.layers[0].digest
    key = f"{manifest.digest}@{'a' * 32}"
    kept = Trace(key, (Read(layer, 0, 4096),), cut=True)
    store = Store(tmp_path / "store")
    store_trace(store.root, kept)
    _publish(push, manifest, tmp_path / "one", Trace(key, (Read(layer, 0, 4097),), cut=True))
    assert fetch_trace(store, client, manifest, key)
    assert load_trace(store.root, key) == kept
    missing = f"{manifest.digest}@{'c' * 32}"
    assert not fetch_trace(store, client, manifest, missing)  # no machine ran that one
    assert load_trace(store.root, missing) is None


def test_an_unreadable_artifact_is_passed_over_for_an_older_one(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(registry)
    manifest = client.resolve(f"{registry.host}/rich:oci")
    push = repository_push(client, manifest.reference)
    layer = manifest.layers[0].digest
    key = f"{manifest.digest}@{'a' * 32}"
    older, newer = Trace(key, (Read(layer, 0, 100),)), Trace(key, (Read(layer, 0, 200),))
    _publish(push, manifest, tmp_path / "one", older)
    _publish(push, manifest, tmp_path / "two", newer)
    tamper_stored_blob(registry, digest_bytes(encode(newer)))
    store = Store(tmp_path / "store")
    assert fetch_trace(store, client, manifest, key)
    assert load_trace(store.root, key) == older
    assert "ignored" in caplog.text  # the newer one, with one warning


def test_a_published_trace_weighed_once_is_not_fetched_again(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(registry)
    manifest = client.resolve(f"{registry.host}/rich:oci")
    push = repository_push(client, manifest.reference)
    layer = manifest.layers[0].digest
    key = f"{manifest.digest}@{'a' * 32}"
    published = Trace(key, (Read(layer, 0, 4097),), cut=True)  # no further than the one kept
    _publish(push, manifest, tmp_path / "one", published)
    store = Store(tmp_path / "store")
    kept = Trace(key, (Read(layer, 0, 4096),), cut=True)
    store_trace(store.root, kept)
    assert fetch_trace(store, client, manifest, key)
    assert load_trace(store.root, key) == kept
    # Fetched again, it would no longer match its digest: a warning.
    tamper_stored_blob(registry, digest_bytes(encode(published)))
    caplog.clear()
    assert fetch_trace(store, client, manifest, key)
    assert "ignored" not in caplog.text
    assert load_trace(store.root, key) == kept


def test_artifacts_naming_other_commands_are_passed_over_without_a_request(
    registry: Registry, tmp_path: Path
) -> None:
    """More of them than a lookup reads (``MAX_TRIED``): the entry names the commands."""
    client = _client(registry)
    manifest = client.resolve(f"{registry.host}/rich:oci")
    push = repository_push(client, manifest.reference)
    layer = manifest.layers[0].digest
    key = f"{manifest.digest}@{'a' * 32}"
    wanted = Trace(key, (Read(layer, 0, 100),))
    _publish(push, manifest, tmp_path / "first", wanted)
    for n in range(MAX_TRIED + 1):
        other = Trace(f"{manifest.digest}@{n:032x}", (Read(layer, 0, 100),))
        _publish(push, manifest, tmp_path / f"other-{n}", other)
    store = Store(tmp_path / "store")
    assert fetch_trace(store, client, manifest, key)
    assert load_trace(store.root, key) == wanted
