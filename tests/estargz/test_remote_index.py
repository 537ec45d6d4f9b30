"""eStargz images from ``ctr-remote``, indexed and read without their blobs on this
machine (``ensure_remote_index``, ``open_layers`` with a ``BlobSource``): the merged
tree is the source image's, every file's bytes are the source's, indexing reads the
footer and TOC only, and a chunk that does not verify is never served."""

from __future__ import annotations

import dataclasses
import errno
import gzip
from collections.abc import Mapping
from pathlib import Path

import pytest

from lazyfs.blobs.ranges import TarRangeReader, open_layers
from lazyfs.index.estargz import SUGGESTED_TAIL_SIZE
from lazyfs.index.estargz_store import remote_layers_dir
from lazyfs.index.model import LayerData, LayerIndex
from lazyfs.index.stored import check_data_present, load_chunk_table
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.tree.merge import merge
from providers.digest import Digest, digest_bytes
from providers.errors import DigestMismatch
from providers.manifest import TOC_DIGEST_ANNOTATION, Layer
from providers.oci_layout import DirFiles, resolve_layout
from providers.registry import RegistryClient, RegistryOptions
from providers.source import BlobSource
from tests.support import images
from tests.support.blob_sources import CountingBlobs, MemoryBlobs
from tests.support.estargz_images import BIG_DATA, ESGZ_TAG, SOURCE_TAG, Converted
from tests.support.layer_trees import Tree, fuse_tree, merged_tree_nodes
from tests.support.registry_pulls import FAST
from tests.support.registry_servers import Registry

_NS = 1_000_000_000
STARGZ_OWN = ("stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark")


@pytest.fixture(scope="module", params=["rich", "big"])
def image(request: pytest.FixtureRequest, converted: dict[str, Converted]) -> Converted:
    return converted[request.param]


def esgz_layers(image: Converted) -> tuple[Layer, ...]:
    """The eStargz image's layers as the OCI layout provider describes them."""
    found, _ = resolve_layout(DirFiles(image.layout), image.ref, image.ref, ESGZ_TAG, None)
    return found.layers


def blobs_of(image: Converted, layers: tuple[Layer, ...]) -> dict[Digest, bytes]:
    return {
        layer.digest: (image.layout / "blobs" / "sha256" / layer.digest[7:]).read_bytes()
        for layer in layers
    }


def source_tree(image: Converted, work: Path) -> Tree:
    """The tree of the image ctr-remote converted, from its layers' tars."""
    tars = [
        gzip.decompress(p.read_bytes()) for _, p in images.layer_paths(image.source, SOURCE_TAG)
    ]
    return fuse_tree(tars, work)


def to_seconds(tree: Tree) -> Tree:
    return {
        path: node._replace(mtime_ns=None if node.mtime_ns is None else node.mtime_ns // _NS * _NS)
        for path, node in tree.items()
    }


@dataclasses.dataclass
class Indexed:
    indexes: list[LayerIndex]
    data: dict[Digest, LayerData]
    homes: dict[Digest, Path]  # the layers dir of each index (by layer and TOC)


def index_all(layers: tuple[Layer, ...], blobs: BlobSource, work: Path) -> Indexed:
    store, tmp = work / "layers", work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    indexes, homes = [], {}
    for layer in layers:
        index = ensure_remote_index(store, tmp, layer, blobs)
        home = remote_layers_dir(store, layer)
        assert index is not None and home is not None, layer
        indexes.append(index)
        homes[layer.digest] = home
    data = {i.digest: check_data_present(homes[i.digest], Path(), i) for i in indexes}
    return Indexed(indexes, data, homes)


def remote_tree(indexed: Indexed, reader: TarRangeReader) -> Tree:
    return merged_tree_nodes(
        merge(indexed.indexes), lambda ref: reader.read_range(ref.digest, ref.offset, ref.size)
    )


def assert_source_tree(ours: Tree, image: Converted, work: Path) -> None:
    assert not set(STARGZ_OWN) & set(ours)  # hidden, as stargz-snapshotter hides them
    # ctr-remote 0.12 writes each TOC modtime to the second; the nanoseconds
    # of the source stay in the blob's tar headers, which a lazy reader never
    # fetches.  So the trees agree to the second, and ours has no more.
    assert all(node.mtime_ns is None or node.mtime_ns % _NS == 0 for node in ours.values())
    assert ours == to_seconds(source_tree(image, work))


def test_the_tree_and_bytes_of_remote_indexes_are_the_source_images(
    image: Converted, tmp_path: Path
) -> None:
    layers = esgz_layers(image)
    assert all(dict(layer.annotations).get(TOC_DIGEST_ANNOTATION) for layer in layers)
    blobs = CountingBlobs(MemoryBlobs(blobs_of(image, layers)))
    indexed = index_all(layers, blobs, tmp_path)
    # Indexing read the tail of each blob once (all of a blob smaller than it).
    tail = SUGGESTED_TAIL_SIZE
    assert blobs.reads == [
        (layer.digest, max(0, layer.size - tail), min(layer.size, tail)) for layer in layers
    ]
    blobs.reads.clear()
    reader = open_layers(indexed.data, blobs)
    assert_source_tree(remote_tree(indexed, reader), image, tmp_path / "source")
    # Reading every file of the tree fetched chunks only, each once.
    chunks = {
        (index.digest, row.offset, row.end - row.offset)
        for index in indexed.indexes
        for row in load_chunk_table(indexed.homes[index.digest], index).rows
    }
    assert set(blobs.reads) <= chunks and len(set(blobs.reads)) == len(blobs.reads)


def test_a_second_mount_reads_the_stored_indexes(image: Converted, tmp_path: Path) -> None:
    layers = esgz_layers(image)
    first = index_all(layers, MemoryBlobs(blobs_of(image, layers)), tmp_path)
    nothing = CountingBlobs(MemoryBlobs({}))
    assert index_all(layers, nothing, tmp_path) == first and nothing.reads == []


def test_the_index_of_a_large_layer_costs_its_tail_only(
    converted: dict[str, Converted], tmp_path: Path
) -> None:
    layers = esgz_layers(converted["big"])
    blobs = CountingBlobs(MemoryBlobs(blobs_of(converted["big"], layers)))
    index_all(layers[:1], blobs, tmp_path)
    assert layers[0].size > 9 * SUGGESTED_TAIL_SIZE  # 9 MiB of incompressible data
    assert blobs.bytes_read == SUGGESTED_TAIL_SIZE


def test_a_corrupted_chunk_is_an_error_and_the_rest_reads(
    converted: dict[str, Converted], tmp_path: Path
) -> None:
    layers = esgz_layers(converted["big"])
    blobs = blobs_of(converted["big"], layers)
    indexed = index_all(layers, MemoryBlobs(blobs), tmp_path)
    bottom = indexed.indexes[0]
    table = load_chunk_table(indexed.homes[bottom.digest], bottom)
    second = next(r for r in table.rows if r.name.endswith("opt/big") and r.chunk_offset)
    damaged = bytearray(blobs[bottom.digest])
    damaged[(second.offset + second.end) // 2] ^= 0x01
    reader = open_layers(indexed.data, MemoryBlobs({**blobs, bottom.digest: bytes(damaged)}))
    big = next(e for e in bottom.entries if e.path == ("opt", "big"))
    four = 4 << 20
    with pytest.raises(OSError) as caught:
        reader.read_range(bottom.digest, big.offset + four + 12345, 10)
    assert caught.value.errno == errno.EIO and "opt/big" in str(caught.value)
    with pytest.raises(OSError):  # a read that touches the chunk at all
        reader.read_range(bottom.digest, big.offset + four - 1, 2)
    assert reader.read_range(bottom.digest, big.offset, four) == BIG_DATA[:four]
    rest = reader.read_range(bottom.digest, big.offset + 2 * four, big.size - 2 * four)
    assert rest == BIG_DATA[2 * four :]
    deep = next(e for e in bottom.entries if e.path == ("deep", "er", "file"))
    assert reader.read_range(bottom.digest, deep.offset, deep.size) == b"no parent entries\n"
    top = indexed.indexes[1]
    (small,) = (e for e in top.entries if e.path == ("opt", "small"))
    assert reader.read_range(top.digest, small.offset, small.size) == b"small\n" * 100


def test_a_toc_not_the_annotations_is_refused(image: Converted, tmp_path: Path) -> None:
    layer = esgz_layers(image)[0]
    annotations: Mapping[str, str] = {
        **dict(layer.annotations),
        TOC_DIGEST_ANNOTATION: digest_bytes(b"some other TOC"),
    }
    liar = dataclasses.replace(layer, annotations=tuple(sorted(annotations.items())))
    blobs = MemoryBlobs(blobs_of(image, (layer,)))
    with pytest.raises(DigestMismatch, match=f"TOC of layer {layer.digest}"):
        ensure_remote_index(tmp_path / "layers", tmp_path, liar, blobs)
    assert not list((tmp_path / "layers").rglob("index.json"))


def test_another_images_toc_for_the_layer_digest_changes_nothing_here(
    converted: dict[str, Converted], tmp_path: Path
) -> None:
    # A hostile image names each layer digest of the rich image with the TOC of
    # one of the big image's layers, and its registry serves that layer's bytes
    # for the digest.  Indexed first, it neither fails the rich image's indexes
    # nor shows in them.
    rich = esgz_layers(converted["rich"])
    other = esgz_layers(converted["big"])[0]
    forged = blobs_of(converted["big"], (other,))[other.digest]
    lies = tuple(
        dataclasses.replace(layer, size=other.size, annotations=other.annotations) for layer in rich
    )
    hostile = index_all(lies, MemoryBlobs(dict.fromkeys(blobs_of(converted["rich"], rich), forged)),
                        tmp_path)  # fmt: skip
    assert all(("opt", "big") in {e.path for e in i.entries} for i in hostile.indexes)
    indexed = index_all(rich, MemoryBlobs(blobs_of(converted["rich"], rich)), tmp_path)
    reader = open_layers(indexed.data, MemoryBlobs(blobs_of(converted["rich"], rich)))
    assert_source_tree(remote_tree(indexed, reader), converted["rich"], tmp_path / "source")
    # And the hostile image's own indexes are still its own.
    nothing = CountingBlobs(MemoryBlobs({}))
    assert index_all(lies, nothing, tmp_path).indexes == hostile.indexes and nothing.reads == []


def test_a_registry_serves_the_index_and_the_bytes_by_range(
    estargz_registry: Registry, converted: dict[str, Converted], tmp_path: Path
) -> None:
    client = RegistryClient(RegistryOptions(registry=estargz_registry.url, http=FAST))
    for image in converted.values():
        manifest = client.resolve(f"{estargz_registry.host}/{image.name}:{ESGZ_TAG}")
        assert manifest.layers == esgz_layers(image)  # annotations included
        blobs = CountingBlobs(client)
        indexed = index_all(manifest.layers, blobs, tmp_path / image.name)
        assert len(blobs.reads) == len(manifest.layers)
        reader = open_layers(indexed.data, client)
        assert_source_tree(remote_tree(indexed, reader), image, tmp_path / f"{image.name}-source")
