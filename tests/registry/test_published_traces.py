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

from lazyfs.index.trace import Read, Trace, load_trace, store_trace
from lazyfs.publish.push import repository_push
from lazyfs.publish.traces import fetch_trace, publish_traces
from lazyfs.store.disk import Store
from providers.manifest import ImageManifest
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_push import RegistryPush
from tests.support.registry_pulls import FAST
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


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
