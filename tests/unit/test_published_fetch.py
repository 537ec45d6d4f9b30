"""Finding and keeping published indexes (``lazyfs.publish.fetch``) against a registry stand-in.

The registry is a dict of manifests and blobs behind the two calls the
module makes of a repository (``get_manifest``, ``get_blob``) and a list of
referrers; the index blobs are real artifacts of a real tar layer, so
decoding and keeping them in the store is the module's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from lazyfs.index import artifact as artifact_module
from lazyfs.index.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MAX_BLOB,
    LayerArtifact,
    Span,
    decode_text,
    encode,
)
from lazyfs.index.artifact_build import build_artifact
from lazyfs.index.artifact_manifest import (
    CONFIG_BYTES,
    HEADS_ANNOTATION,
    MAX_HEADS_NOTE,
    artifact_layers,
    artifact_manifest,
    listed_heads,
)
from lazyfs.index.formats import build_index
from lazyfs.index.published import load_published, set_aside, store_published
from lazyfs.publish import fetch
from lazyfs.publish import listing as listing_module
from lazyfs.publish.traces import fetch_trace
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes, hex_part
from providers.errors import BadImage
from providers.layer_limits import LayerLimits
from providers.manifest import (
    INDEX_BLOB_ANNOTATION,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    Layer,
)
from providers.referrers import Referrer
from tests.support.images import Entry, write_layer

SUBJECT = Digest("sha256:" + "a" * 64)


@dataclass
class Repository:
    """What the module reads of a repository: manifests, blobs, and the subject's referrers."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[Digest, bytes] = field(default_factory=dict)
    referrers: list[Referrer] = field(default_factory=list)
    listings: int = 0
    manifest_gets: int = 0
    base = "http://registry.invalid"
    repository = "app"
    image = "registry.invalid/app:1"

    def get_manifest(self, reference: str, accept: str) -> tuple[bytes, str] | None:
        self.manifest_gets += 1
        found = self.manifests.get(reference)
        return None if found is None else (found, OCI_MANIFEST)

    def get_blob(self, digest: Digest, limit: int) -> bytes:
        return self.blobs[digest]

    def publish(
        self, layer: Digest, index: bytes, created: str | None = None, *, noted: bool = False
    ) -> Digest:
        """List an artifact of ``index`` (the index blob of ``layer``) as a referrer; its blob.

        ``noted``: its entry carries the manifest's annotations, as the Referrers API's do.
        """
        blob = digest_bytes(index)
        self.blobs[blob] = index
        config = Descriptor(CONFIG_MEDIA_TYPE, digest_bytes(CONFIG_BYTES), len(CONFIG_BYTES))
        subject = Descriptor(OCI_MANIFEST, SUBJECT, 1)
        data = artifact_manifest(
            subject, config, {layer: Descriptor(INDEX_MEDIA_TYPE, blob, len(index))}
        )
        digest = digest_bytes(data)
        self.manifests[digest] = data
        notes = {fetch.CREATED: created} if created else {}
        if noted:
            notes.update(json.loads(data)["annotations"])
        self.referrers.append(Referrer(digest, len(data), OCI_MANIFEST, ARTIFACT_TYPE, notes))
        return blob


@dataclass
class Built:
    layer: Layer
    index: bytes
    other_index: bytes  # the same layer's index with its spans cut otherwise: another blob


@pytest.fixture
def built(tmp_path: Path) -> Built:
    tar = write_layer([Entry("a", data=b"x" * 5000)], tmp_path / "layer.tar")
    digest = digest_bytes(tar.read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    built = build_artifact(build_index(digest, tar, scratch), tar)
    assert built is not None
    artifact = built[0]
    data = tar.read_bytes()
    cut = [Span(0, 512, _sha(data[:512])), Span(512, len(data) - 512, _sha(data[512:]))]
    other = replace(artifact, spans=tuple(cut))
    layer = Layer(digest, "application/vnd.oci.image.layer.v1.tar", len(data))
    return Built(layer, encode(artifact), encode(other))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def repository(monkeypatch: pytest.MonkeyPatch) -> Iterator[Repository]:
    found = Repository()

    def listing(
        push: object, subject: Digest, artifact_type: str | None = None, wanted: object = ()
    ) -> tuple[Referrer, ...]:
        # Unfiltered: one answer serves the index and the trace lookups.
        assert subject == SUBJECT and artifact_type is None
        found.listings += 1
        return tuple(found.referrers)

    monkeypatch.setattr(listing_module, "list_referrers", listing)
    monkeypatch.setattr(listing_module, "repository_push", lambda client, reference: found)
    yield found


def _image(built: Built) -> ImageManifest:
    return ImageManifest("registry.invalid/app:1", SUBJECT, (built.layer,))


def _look(store: Store, built: Built) -> dict[Digest, Digest]:
    return fetch.published_layers(store, None, _image(built), [built.layer])  # type: ignore[arg-type]


def test_a_store_that_cannot_keep_an_index_means_a_whole_pull(
    repository: Repository, built: Built, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "store")
    blob = repository.publish(built.layer.digest, built.index)
    # Where the index would be kept is a file: mkdir fails as on a full or read-only disk.
    (store.layers / hex_part(built.layer.digest)).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert _look(store, built) == {}
    assert f"{built.layer.digest} is pulled whole: its published index {blob}" in caplog.text


def test_an_index_published_since_the_last_lookup_is_found_by_the_next(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    assert _look(store, built) == {}
    blob = repository.publish(built.layer.digest, built.index)
    # No answer is kept between lookups: "none" must not hide a later push.
    assert _look(store, built) == {built.layer.digest: blob}
    assert repository.listings == 2


def test_one_listing_serves_the_trace_and_the_index_lookups(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    blob = repository.publish(built.layer.digest, built.index)
    # Another tool's referrer, of a type of its own, listed beside ours.
    other = Referrer(Digest("sha256:" + "e" * 64), 9, OCI_MANIFEST, "application/x-sig", {})
    repository.referrers.insert(0, other)
    image = _image(built)
    listed = listing_module.list_image(None, image.reference, image.digest)  # type: ignore[arg-type]
    assert listed is not None
    key = f"{image.digest}@{'c' * 32}"
    sizes = {built.layer.digest: built.layer.size}
    assert not fetch_trace(store, None, image, key, tmp_path / "cache", sizes, listed)  # type: ignore[arg-type]
    found = fetch.published_layers(store, None, image, [built.layer], listed)  # type: ignore[arg-type]
    assert found == {built.layer.digest: blob}
    assert repository.listings == 1


def test_an_entry_naming_its_index_blobs_spares_the_manifest_round_trip(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    blob = repository.publish(built.layer.digest, built.index, noted=True)
    store = Store(tmp_path / "store")
    assert _look(store, built) == {built.layer.digest: blob}
    assert repository.manifest_gets == 0
    assert load_published(store.layers, _named(built.layer, blob)) is not None


def _named(layer: Layer, blob: Digest) -> Layer:
    return replace(layer, annotations=((INDEX_BLOB_ANNOTATION, blob),))


HEX = "b" * 64
LAYER, HEAD = f"sha256:{HEX}", f"sha256:{HEX}"


def _note(*blob: object) -> str:
    return json.dumps({LAYER: list(blob)})


@pytest.mark.parametrize(
    "note",
    [
        "not json",
        "{}",
        "[]",
        "[" * 100_000,
        _note(HEAD, True),
        _note(HEAD, 0),
        _note(HEAD, 1.0),
        _note(HEAD, MAX_BLOB + 1),
        _note(f"md5:{HEX}", 10),
        _note(HEAD, 10, 1),
        json.dumps({LAYER: {"a": 1, "b": 2}}),
        f'{{"{LAYER}": ["{HEAD}", 10], "{LAYER}": ["{HEAD}", 10]}}',
        _note(HEAD, 10) + " " * MAX_HEADS_NOTE,
        "[1]",
        '["abc"]',
        "[[[1], 2]]",
        json.dumps([[LAYER, [HEAD, 10]]]),
        json.dumps({"sha256:short": [HEAD, 10]}),
        _note(HEX, 10),
        _note([HEAD], 10),
        _note(HEAD, "10"),
    ],
    ids=["not-json", "empty", "array", "deep", "bool-size", "zero-size", "float-size",
         "too-large", "bad-digest", "three-items", "object", "layer-twice", "too-long",
         "array-of-int", "array-of-str", "nested-arrays", "array-of-pairs", "bad-layer",
         "bare-hex", "digest-in-array", "size-as-string"],
)  # fmt: skip
def test_an_entry_whose_note_does_not_read_means_reading_the_manifest(
    note: str, repository: Repository, built: Built, tmp_path: Path
) -> None:
    assert listed_heads({HEADS_ANNOTATION: note}) is None
    blob = repository.publish(built.layer.digest, built.index)
    entry = repository.referrers[-1]
    repository.referrers[-1] = replace(entry, annotations={HEADS_ANNOTATION: note})
    assert _look(Store(tmp_path / "store"), built) == {built.layer.digest: blob}
    assert repository.manifest_gets == 1


def test_a_newer_entry_without_a_note_is_read_through_its_manifest(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    repository.publish(built.layer.digest, built.index, noted=True)
    newer = repository.publish(built.layer.digest, built.other_index)  # pushed by an older lazyfs
    assert _look(Store(tmp_path / "store"), built) == {built.layer.digest: newer}
    assert repository.manifest_gets == 1


def test_the_note_names_what_the_manifest_lists() -> None:
    config = Descriptor(CONFIG_MEDIA_TYPE, digest_bytes(CONFIG_BYTES), len(CONFIG_BYTES))
    indexes = {
        Digest(f"sha256:{c * 64}"): Descriptor(INDEX_MEDIA_TYPE, Digest(f"sha256:{d * 64}"), n)
        for c, d, n in [("1", "2", 300), ("3", "4", MAX_BLOB), ("5", "6", 1)]
    }
    data = artifact_manifest(Descriptor(OCI_MANIFEST, SUBJECT, 1), config, indexes)
    notes = json.loads(data)["annotations"]
    assert listed_heads(notes) == artifact_layers(data, SUBJECT) == indexes


def test_only_the_newest_few_artifacts_are_tried(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    # A hostile list names thousands of artifacts whose manifests do not read: each tried
    # was a round trip while the start waited. The oldest here is good, and not reached.
    repository.publish(built.layer.digest, built.index)
    for number in range(50):
        gone = Digest(f"sha256:{number:064x}")
        repository.referrers.append(Referrer(gone, 100, OCI_MANIFEST, ARTIFACT_TYPE, {}))
    assert _look(Store(tmp_path / "store"), built) == {}
    assert repository.manifest_gets == listing_module.MAX_TRIED


def test_an_index_claiming_more_than_the_stores_limits_is_not_kept(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    # Held to the limits the layer itself would be, before its index inflates.
    repository.publish(built.layer.digest, built.index)
    tight = Store(tmp_path / "tight", LayerLimits(max_size=built.layer.size - 1))
    assert _look(tight, built) == {}
    roomy = Store(tmp_path / "roomy", LayerLimits(max_size=built.layer.size))
    assert _look(roomy, built) == {built.layer.digest: digest_bytes(built.index)}


def test_an_index_a_mount_set_aside_is_not_kept_again(
    repository: Repository, built: Built, tmp_path: Path
) -> None:
    blob = repository.publish(built.layer.digest, built.index)
    store = Store(tmp_path / "store")
    assert _look(store, built) == {built.layer.digest: blob}
    named = _named(built.layer, blob)
    assert set_aside(store.layers, [named]) == [built.layer.digest]
    assert load_published(store.layers, named) is None
    assert _look(store, built) == {}  # listed still, and refused: the layer is pulled whole


def test_the_newest_index_is_used(repository: Repository, built: Built, tmp_path: Path) -> None:
    repository.publish(built.layer.digest, built.index)
    newer = repository.publish(built.layer.digest, built.other_index)
    assert _look(Store(tmp_path / "store"), built) == {built.layer.digest: newer}


def test_newest_first_by_creation_time_then_last_listed() -> None:
    def made(name: str, created: str | None) -> Referrer:
        notes = {fetch.CREATED: created} if created else {}
        return Referrer(Digest("sha256:" + name * 64), 1, OCI_MANIFEST, ARTIFACT_TYPE, notes)

    listed = [made("1", None), made("2", "2026-01-02T00:00:00Z"), made("3", None),
              made("4", "2026-01-01T00:00:00Z")]  # fmt: skip
    order = [r.digest[-1] for r in fetch.newest_first(listed)]
    assert order == ["2", "4", "3", "1"]


class Meeting(Repository):
    """A repository whose blobs are answered only once ``parties`` fetches wait at once."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        # A deadline, not a pace: a lookup fetching one blob after another never gets
        # them all waiting together, and the barrier breaks instead of hanging the test.
        self.meeting = threading.Barrier(parties, timeout=30)

    def get_blob(self, digest: Digest, limit: int) -> bytes:
        self.meeting.wait()
        return super().get_blob(digest, limit)


def _publish(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, repository: Repository, count: int
) -> tuple[list[Layer], dict[Digest, Descriptor]]:
    """``count`` tar layers, an index blob of each published in ``repository``."""
    layers, indexes = [], {}
    for number in range(count):
        tar = write_layer([Entry(f"f{number}", data=b"y" * (number + 1))], tmp_path / f"{number}")
        digest = digest_bytes(tar.read_bytes())
        scratch = tmp_path / f"scratch{number}"
        scratch.mkdir()
        built = build_artifact(build_index(digest, tar, scratch), tar)
        assert built is not None
        layers.append(Layer(digest, "application/vnd.oci.image.layer.v1.tar", tar.stat().st_size))
        indexes[digest] = encode(built[0])
    descriptors = {}
    for layer, index in indexes.items():
        blob = digest_bytes(index)
        repository.blobs[blob] = index
        descriptors[layer] = Descriptor(INDEX_MEDIA_TYPE, blob, len(index))
    config = Descriptor(CONFIG_MEDIA_TYPE, digest_bytes(CONFIG_BYTES), len(CONFIG_BYTES))
    data = artifact_manifest(Descriptor(OCI_MANIFEST, SUBJECT, 1), config, descriptors)
    repository.manifests[digest_bytes(data)] = data
    referrer = Referrer(digest_bytes(data), len(data), OCI_MANIFEST, ARTIFACT_TYPE, {})
    monkeypatch.setattr(listing_module, "list_referrers", lambda *args: (referrer,))
    monkeypatch.setattr(listing_module, "repository_push", lambda client, reference: repository)
    return layers, descriptors


def test_the_layers_index_blobs_are_fetched_side_by_side(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repository = Meeting(3)
    layers, descriptors = _publish(monkeypatch, tmp_path, repository, 3)
    image = ImageManifest("registry.invalid/app:1", SUBJECT, tuple(layers))
    found = fetch.published_layers(Store(tmp_path / "store"), None, image, layers)  # type: ignore[arg-type]
    assert found == {layer: descriptor.digest for layer, descriptor in descriptors.items()}


@pytest.mark.parametrize(
    ("sizes", "budget", "at_once", "rounds"),
    [
        ([10, 10, 10], 100, 4, [[0, 1, 2]]),
        ([10, 10, 10, 10, 10], 100, 4, [[0, 1, 2, 3], [4]]),  # at most at_once a round
        ([60, 30, 20, 90], 100, 4, [[0, 1], [2], [3]]),  # at most the budget a round
        ([200, 10, 300], 100, 4, [[0], [1], [2]]),  # one past the budget goes alone
        ([], 100, 4, []),
    ],
)
def test_index_blobs_are_fetched_in_rounds_bounded_in_bytes(
    sizes: list[int], budget: int, at_once: int, rounds: list[list[int]]
) -> None:
    assert fetch.rounds(sizes, budget, at_once) == rounds


class Holding(Repository):
    """A repository that notes the index blobs' bytes fetched and not yet kept, at most,
    and of those the bytes being decoded (from ``decode_text`` until kept), at most."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Condition()
        self.held = self.most = self.fetched = 0
        self.decoding = self.most_decoding = 0
        self.first = True

    def get_blob(self, digest: Digest, limit: int) -> bytes:
        with self.lock:
            self.held += limit
            self.most = max(self.most, self.held)
        try:
            return super().get_blob(digest, limit)
        finally:
            with self.lock:
                self.fetched += 1
                self.lock.notify_all()

    def decode_text(
        self, data: bytes, *, layer: Digest, **checks: Any
    ) -> tuple[LayerArtifact, bytes]:
        with self.lock:
            self.decoding += len(data)
            self.most_decoding = max(self.most_decoding, self.decoding)
            self.lock.notify_all()
            if self.first:
                # The first decode waits for its round's other blob to be fetched, then for
                # it to decode alongside: it does, at once, unless decodes take turns. (A
                # deadline, not a pace: with turns, the other never comes.)
                self.first = False
                self.lock.wait_for(lambda: self.fetched >= 2, timeout=30)
                self.lock.wait_for(lambda: self.decoding > len(data), timeout=2)
        return decode_text(data, layer=layer, **checks)

    def kept(self, blob: Digest) -> None:
        with self.lock:
            self.held -= len(self.blobs[blob])
            self.decoding -= len(self.blobs[blob])


def test_the_index_blobs_fetched_at_once_are_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A hostile registry names index blobs of up to 512 MiB: fetched four at once, and
    # held while they decode, that was 2 GiB. Here the bound lets two in at a time.
    # Each inflates as it decodes (to up to 512 MiB, a small blob too): one at a time.
    repository = Holding()
    layers, descriptors = _publish(monkeypatch, tmp_path, repository, 4)
    sizes = [d.size for d in descriptors.values()]
    monkeypatch.setattr(fetch, "_BYTES_AT_ONCE", 2 * max(sizes))
    assert 3 * min(sizes) > 2 * max(sizes)

    def keep(layers_dir: Path, blob: Digest, artifact: LayerArtifact, *, text: bytes) -> None:
        store_published(layers_dir, blob, artifact, text=text)
        repository.kept(blob)

    monkeypatch.setattr(fetch, "store_published", keep)
    monkeypatch.setattr(fetch, "decode_text", repository.decode_text)
    image = ImageManifest("registry.invalid/app:1", SUBJECT, tuple(layers))
    found = fetch.published_layers(Store(tmp_path / "store"), None, image, layers)  # type: ignore[arg-type]
    assert found == {layer: descriptor.digest for layer, descriptor in descriptors.items()}
    assert repository.held == 0 and 0 < repository.most <= 2 * max(sizes)
    # Fetched side by side, but each decodes alone: an index inflates to up to 512 MiB as
    # it decodes, however small its blob.
    assert repository.most > max(sizes)
    assert repository.decoding == 0 and 0 < repository.most_decoding <= max(sizes)


def test_a_refused_index_blob_holds_nothing_it_inflated(tmp_path: Path) -> None:
    # Hostile heads of a few KiB that inflate to the bound (scaled down here) and are then
    # no index: what each failed with is kept until every blob is fetched, and held the
    # decoding's frames, each with its inflated bytes.
    scale = 8 << 20
    repository = Repository()
    jobs = []
    for number in range(2):
        layer = Digest("sha256:" + f"{number:x}" * 64)
        body = zlib.compress(b" " * scale, 9)
        header = {"lazyfs_index": 2, "layer": layer, "layer_size": 1, "compression": "gzip",
                  "tar_size": 1, "index_bytes": len(body)}  # fmt: skip
        data = json.dumps(header).encode() + b"\n" + body
        repository.blobs[digest_bytes(data)] = data
        descriptor = Descriptor(INDEX_MEDIA_TYPE, digest_bytes(data), len(data))
        jobs.append((Layer(layer, "application/vnd.oci.image.layer.v1.tar+gzip", 1), descriptor))
    store = Store(tmp_path / "store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(artifact_module, "MAX_INDEX", scale)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            got = fetch._keep_each(store, repository, jobs)  # type: ignore[arg-type]
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert all(isinstance(error, BadImage) for error in got)
    assert held < scale
