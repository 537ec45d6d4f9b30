"""What ``lazyfs index push`` publishes of a stored layer: nothing a reader would refuse.

A reader inflates a published index to at most ``MAX_INDEX`` and refuses a
longer one (``lazyfs.index.artifact``); the pusher does not publish such an
index at all, so that no reader fetches a head of up to 512 MiB for nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.index import artifact
from lazyfs.index.model import dumps
from lazyfs.index.stored import load_index
from lazyfs.publish import push
from lazyfs.store.disk import Store
from tests.support.blob_sources import store_files
from tests.support.images import Entry, write_layer


def test_an_index_longer_than_a_reader_inflates_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    entries = [Entry(f"f{n}", data=b"x" * n) for n in range(50)]
    (layer,) = store_files(store, [write_layer(entries, tmp_path / "layer.tar")])
    published = push.layer_artifact_blob(store, layer.digest)
    assert published is not None
    head = artifact.decode(published[0], layer=layer.digest, size=layer.size)
    index = load_index(store.layers, layer.digest)
    assert index is not None and head.index.entries == index.entries
    monkeypatch.setattr(push, "MAX_INDEX", len(dumps(index)) - 1)
    assert push.layer_artifact_blob(store, layer.digest) is None
