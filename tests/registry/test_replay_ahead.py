"""A lazy pull hands a trace's replay its start as soon as the trace is kept (``traced``).

The image's index is pushed (``lazyfs index push``) and a trace published
beside it; a second store's ``fetch_lazy`` trusting published indexes calls
``traced`` once, in a thread of its own, when that trace is in the store
already and before the indexes are kept, with the layers read by range
(those with an index listed). A pull that does not trust published indexes
looks for none and calls nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lazyfs.index.trace import Read, Trace, load_trace, store_trace
from lazyfs.progress import Progress
from lazyfs.publish import fetch
from lazyfs.publish.fetch import published_layers
from lazyfs.publish.push import repository_push
from lazyfs.publish.traces import publish_traces
from providers.digest import Digest
from providers.manifest import INDEX_BLOB_ANNOTATION, ImageManifest, Layer
from providers.registry import RegistryClient, RegistryOptions
from tests.support.registry_pulls import FAST, docker, lazyfs, provider
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


async def _published(registry: Registry, tmp_path: Path) -> tuple[str, ImageManifest, str]:
    """An image with its indexes pushed and a trace published beside it: its name, its
    manifest and the trace's key."""
    image = f"{registry.host}/rich:oci"
    pushed = lazyfs(tmp_path / "first", "--docker_registry", registry.url, "index", "push", image)
    assert pushed.returncode == 0, pushed.stderr
    whole = await provider(tmp_path / "first", registry.url).fetch(docker(image), Progress())
    key = f"{whole.digest}@{'a' * 32}"
    cache = tmp_path / "cache"
    store_trace(cache, Trace(key, (Read(whole.layers[0].digest, 0, 4096),)))
    client = RegistryClient(RegistryOptions(registry=registry.url, http=FAST))
    assert publish_traces(cache, repository_push(client, whole.reference), whole) is not None
    return image, whole, key


def _joined() -> None:
    for thread in threading.enumerate():
        if thread.name == "lazyfs-replay-ahead":
            thread.join(30)


@pytest.mark.parametrize("trusting", [True, False])
async def test_a_lazy_pull_begins_the_replay_once_the_trace_is_kept(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusting: bool
) -> None:
    image, whole, key = await _published(registry, tmp_path)

    second = provider(tmp_path / "second", registry.url)
    second.trust_published = trusting
    calls: list[tuple[ImageManifest, list[Layer], bool]] = []
    began = threading.Event()
    order: list[str] = []

    class Hook:
        cache_dir = tmp_path / "second-cache"  # the mount's daemon keeps no trace there

        def key(self, manifest: ImageManifest) -> str:
            return f"{manifest.digest}@{'a' * 32}"

        def __call__(self, manifest: ImageManifest, layers: Sequence[Layer]) -> None:
            kept = load_trace(second.store.root, key) is not None
            calls.append((manifest, list(layers), kept))
            order.append("traced")
            began.set()

    def keeping(*args: Any) -> dict[Digest, Digest]:
        # The indexes are kept only once the replay has begun: it does not wait for them.
        began.wait(30)  # a bound, not a delay: set at once when it works
        order.append("kept")
        return published_layers(*args)

    monkeypatch.setattr(fetch, "published_layers", keeping)
    got = await second.fetch_lazy(docker(image), Progress(), None, Hook())
    _joined()
    if not trusting:
        assert calls == [] and order == []
        return
    [(manifest, layers, kept)] = calls
    assert order == ["traced", "kept"]
    assert kept and manifest.digest == whole.digest == got.digest
    # Each read through its index.
    assert all(INDEX_BLOB_ANNOTATION in dict(layer.annotations) for layer in got.layers)
    # Every gzip layer of the image has an index listed: all of them are read by range.
    assert [layer.digest for layer in layers] == [layer.digest for layer in whole.layers]


async def test_a_lazy_pull_that_runs_no_command_fetches_no_trace(
    registry: Registry, tmp_path: Path
) -> None:
    """``lazyfs mount`` and image volumes: no trace is replayed, so none is fetched."""
    image, _, key = await _published(registry, tmp_path)

    second = provider(tmp_path / "second", registry.url)
    second.trust_published = True
    got = await second.fetch_lazy(docker(image), Progress(), None, None)
    assert all(INDEX_BLOB_ANNOTATION in dict(layer.annotations) for layer in got.layers)
    assert load_trace(second.store.root, key) is None
