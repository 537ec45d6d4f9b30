"""The store's image records when they are damaged, and what lies in it that is not its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.gc.collect import prune
from lazyfs.store.disk import Store
from providers.digest import digest_bytes
from providers.errors import BadImage
from providers.manifest import OCI_LAYER_TAR, ImageManifest, Layer

LAYER = b"a layer"
IMAGE = ImageManifest(
    "docker.io/library/x:latest",
    digest_bytes(b"manifest"),
    (Layer(digest_bytes(LAYER), OCI_LAYER_TAR, len(LAYER)),),
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    store.put_image(IMAGE)
    return store


@pytest.mark.parametrize(
    "damage",
    [
        {"config": "oops"},  # AttributeError, a traceback in images, gc and provision
        {"layers": [{"digest": "nocolon", "media_type": OCI_LAYER_TAR, "size": 7}]},
        {"layers": "x"},
    ],
    ids=["config", "digest", "layers"],
)
def test_a_damaged_record_is_named_damaged_and_gc_sets_it_aside(
    store: Store, tmp_path: Path, damage: dict[str, object]
) -> None:
    path = store.image_record(IMAGE.reference)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, **damage}))
    with pytest.raises(BadImage, match=r"^store record of docker.io/library/x:latest is damaged"):
        store.get_image(IMAGE.reference)
    assert store.records() == [(path, None)] and store.images() == []
    report = prune(store, tmp_path / "work", None, stale_tree=lambda _name: False)
    assert report.stale == [str(path.relative_to(store.root))]
    assert not path.exists()


def test_files_not_the_stores_in_its_blobs_stop_no_gc_and_are_left(
    store: Store, tmp_path: Path
) -> None:
    (store.blobs / "README").write_text("a note\n")
    (store.blobs / "sha256").mkdir(parents=True, exist_ok=True)
    (store.blobs / "sha256" / "notes.txt").write_text("another\n")
    prune(store, tmp_path / "work", None, stale_tree=lambda _name: False)
    assert (store.blobs / "README").exists() and (store.blobs / "sha256" / "notes.txt").exists()
