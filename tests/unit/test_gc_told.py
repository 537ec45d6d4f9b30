"""GC tells whoever keeps more of a removed layer's blob (the cache daemon's chunks) while it
still holds the store: a start waiting for the store cannot want the blob before it is let go."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from lazyfs.gc.collect import Report, gc_pass, prune, remove
from lazyfs.gc.config import GcConfig
from lazyfs.store.disk import Store
from lazyfs.store.usage_lock import lock_path
from providers.digest import Digest, digest_bytes
from providers.manifest import OCI_LAYER_TAR, ImageManifest, Layer
from tests.support.flocks import held

LAYER = b"a layer"
IMAGE = ImageManifest(
    "docker.io/library/x:latest",
    digest_bytes(b"manifest"),
    (Layer(digest_bytes(LAYER), OCI_LAYER_TAR, len(LAYER)),),
)


def _store_held(store: Store) -> bool:
    """Whether a GC pass holds the store: a start's shared lock cannot be had."""
    return held(lock_path(store.root))


PASSES: dict[str, Callable[..., Report]] = {
    "rm": functools.partial(remove, names=[IMAGE.reference]),
    "prune": functools.partial(prune, config=None),
    "gc": functools.partial(gc_pass, config=GcConfig(headroom=1.0)),
}


@pytest.mark.parametrize("command", PASSES)
def test_the_removed_layers_are_told_while_the_store_is_held(tmp_path: Path, command: str) -> None:
    store = Store(tmp_path / "store")
    store.ingest(IMAGE.layers[0], functools.partial(io.BytesIO, LAYER))
    store.put_image(IMAGE)
    told: list[tuple[list[Digest], bool]] = []
    report = PASSES[command](
        store,
        tmp_path / "work",
        stale_tree=lambda _name: False,
        removed=lambda digests: told.append((digests, _store_held(store))),
    )
    assert [digest for digest, _ in report.layers] == [IMAGE.layers[0].digest]
    assert told == [([IMAGE.layers[0].digest], True)]
    assert not _store_held(store)  # and let go of after


def test_a_pass_that_removes_no_layer_tells_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    told: list[list[Digest]] = []
    prune(store, tmp_path / "work", None, stale_tree=lambda _name: False, removed=told.append)
    assert told == []
