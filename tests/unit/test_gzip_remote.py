"""Reading remote gzip and tar layers through their published index: right bytes, or EIO."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import random
import zlib
from pathlib import Path
from typing import Any

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.fs.mount_layers import remote_layer
from lazyfs.index.artifact import MAX_SPAN, WINDOW, LayerArtifact, Span, first_byte
from lazyfs.index.published import PublishedData, load_published
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BadImage, TemporaryFailure
from providers.tar_stream import LayerLimits
from tests.support.blob_sources import CountingBlobs, MemoryBlobs
from tests.support.published_artifacts import Built


@pytest.fixture(scope="module", params=[True, False], ids=["gzip", "tar"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("layer"), request.param)


class Evicting(MemoryBlobs):
    """A cache-like source, every origin's: wrong bytes in ``bad`` until evicted ``heals``
    times (-1: never, as another origin's fetches land them again); read again through the
    reader's own origin (``read_again``), the right bytes unless ``own_bad``."""

    def __init__(
        self, blobs: dict[Digest, bytes], bad: bytes, heals: int, *, own_bad: bool = False
    ) -> None:
        super().__init__(blobs)
        self.bad = bad
        self.heals = heals
        self.own_bad = own_bad
        self.evicted: list[tuple[int, int, str]] = []
        self.again: list[tuple[int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        wrong = len(self.evicted) < self.heals or self.heals < 0
        return self._as(digest, wrong)[offset : offset + length]

    def read_again(self, digest: Digest, offset: int, length: int) -> bytes:
        self.again.append((offset, length))
        return self._as(digest, self.own_bad)[offset : offset + length]

    def evict(self, digest: Digest, offset: int, length: int, reason: str) -> int:
        self.evicted.append((offset, length, reason))
        return 1

    def _as(self, digest: Digest, wrong: bool) -> bytes:
        # The layer's bytes only: a windows blob is a shorter, other blob.
        return (
            self.bad if wrong and len(self.bad) == len(self.blobs[digest]) else self.blobs[digest]
        )


def test_every_byte_of_the_stream_reads_right(built: Built) -> None:
    reader = PublishedLayers({built.digest: built.data}, MemoryBlobs(built.blobs))
    rng = random.Random(3)
    for _ in range(60):
        offset = rng.randrange(len(built.tar))
        length = rng.choice([1, 100, 4096, 131072, 300_000])
        assert reader.read_range(built.digest, offset, length) == built.tar[offset:][:length]
    whole = b"".join(
        reader.read_range(built.digest, at, 1 << 17) for at in range(0, len(built.tar), 1 << 17)
    )
    assert whole == built.tar
    assert reader.read_range(built.digest, len(built.tar), 10) == b""
    reader.close()


def _tampered_span(built: Built, number: int) -> PublishedData:
    spans = list(built.data.spans)
    spans[number] = dataclasses.replace(spans[number], sha256="0" * 64)
    return dataclasses.replace(built.data, spans=tuple(spans))


def test_a_tampered_span_digest_makes_the_layer_eio_for_this_reader(
    built: Built, caplog: pytest.LogCaptureFixture
) -> None:
    number = len(built.data.spans) // 2
    span = built.data.spans[number]
    reader = PublishedLayers(
        {built.digest: _tampered_span(built, number)}, MemoryBlobs(built.blobs)
    )
    # A stream offset whose bytes come from that span: for a tar layer the same
    # offset; for gzip, the uncompressed offset of the checkpoint at its start.
    offset = span.offset if not built.artifact.points else _uncompressed_at(built, span)
    with pytest.raises(OSError) as raised:
        reader.read_range(built.digest, offset, 4096)
    assert raised.value.errno == errno.EIO
    assert "does not match its published index" in str(raised.value)
    fetched = reader.fetches
    # The index lied once: no byte of the layer is served through it any more,
    # none fetched for it, and the reason was logged once.
    for at in (0, offset):
        with pytest.raises(OSError) as raised:
            reader.read_range(built.digest, at, 512)
        assert raised.value.errno == errno.EIO
        assert "does not match its published index" in str(raised.value)
    assert reader.fetches == fetched
    assert caplog.text.count("does not match its published index") == 1


def _uncompressed_at(built: Built, span: Span) -> int:
    return next(p.position for p in built.artifact.points if first_byte(p) == span.offset)


def test_wrong_bytes_from_the_source_are_read_again_then_refused_for_good(built: Built) -> None:
    damaged = bytearray(built.blob)
    damaged[len(damaged) // 2] ^= 0xFF
    once = Evicting(built.blobs, bytes(damaged), heals=1)
    reader = PublishedLayers({built.digest: built.data}, once)
    whole = reader.read_range(built.digest, 0, len(built.tar))
    assert whole == built.tar  # the second read after the eviction was right
    assert len(once.evicted) == 1

    always = Evicting(built.blobs, bytes(damaged), heals=-1, own_bad=True)
    reader = PublishedLayers({built.digest: built.data}, always)
    with pytest.raises(OSError) as raised:
        reader.read_range(built.digest, 0, len(built.tar))
    assert raised.value.errno == errno.EIO
    assert len(always.evicted) == 1
    # Confirmed: later reads are EIO without evicting or fetching the shared chunks again.
    fetched = reader.fetches
    for _ in range(3):
        with pytest.raises(OSError) as raised:
            reader.read_range(built.digest, 0, len(built.tar))
        assert raised.value.errno == errno.EIO
    assert len(always.evicted) == 1 and reader.fetches == fetched


def test_bytes_another_origin_keeps_landing_are_read_again_through_ours(built: Built) -> None:
    # A hostile repository names this layer's digest and answers bytes of its own: the
    # cache's chunks are every origin's, and its fetches land them again after each evict.
    damaged = bytearray(built.blob)
    damaged[len(damaged) // 2] ^= 0xFF
    poisoned = Evicting(built.blobs, bytes(damaged), heals=-1)
    reader = PublishedLayers({built.digest: built.data}, poisoned)
    for _ in range(2):
        assert reader.read_range(built.digest, 0, len(built.tar)) == built.tar
    bad = next(s for s in built.data.spans if s.offset <= len(damaged) // 2 < s.offset + s.length)
    assert poisoned.again == [(bad.offset, bad.length)]  # then kept, verified
    assert [e[:2] for e in poisoned.evicted] == [(bad.offset, bad.length)]


def test_no_wrong_byte_from_any_flipped_blob_byte(built: Built) -> None:
    """Whatever one byte of the blob is changed to, a read gives the right bytes or EIO."""
    rng = random.Random(11)
    for _ in range(20):
        damaged = bytearray(built.blob)
        at = rng.randrange(len(damaged))
        damaged[at] ^= rng.randrange(1, 256)
        reader = PublishedLayers(
            {built.digest: built.data}, MemoryBlobs({**built.blobs, built.digest: bytes(damaged)})
        )
        for offset in range(0, len(built.tar), 1 << 17):
            try:
                got = reader.read_range(built.digest, offset, 1 << 17)
            except OSError as error:
                assert error.errno == errno.EIO
                continue
            assert got == built.tar[offset : offset + (1 << 17)]


def test_an_index_of_another_layer_is_not_loaded(built: Built) -> None:
    other = dataclasses.replace(built.layer, digest=Digest("sha256:" + "1" * 64))
    assert load_published(built.layers_dir, other) is None
    plain = dataclasses.replace(built.layer, annotations=())
    assert load_published(built.layers_dir, plain) is None


def test_spans_hash_the_blob(built: Built) -> None:
    for span in built.data.spans:
        piece = built.blob[span.offset : span.offset + span.length]
        assert hashlib.sha256(piece).hexdigest() == span.sha256
    assert isinstance(built.artifact, LayerArtifact)


class Mountable(MemoryBlobs):
    """A blob source that records which layers a mount asked to fetch in the background."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        super().__init__(blobs)
        self.mounted: list[Digest] = []

    def layer_mounted(self, digest: Digest, prefetch: object) -> None:
        self.mounted.append(digest)


def test_a_published_layer_is_held_to_the_layer_limits(built: Built) -> None:
    store = Store(built.layers_dir.parent)
    blobs = Mountable(built.blobs)
    small = LayerLimits(max_size=len(built.tar) - 1)
    with pytest.raises(BadImage, match="unpacks to more than"):
        remote_layer(store, built.layer, blobs, entries=True, limits=small)  # type: ignore[arg-type]
    assert blobs.mounted == []
    enough = LayerLimits(max_size=len(built.tar))
    index, reader, _ = remote_layer(store, built.layer, blobs, entries=True, limits=enough)  # type: ignore[arg-type]
    assert index.tar_size == len(built.tar) and blobs.mounted == [built.digest]
    assert reader.read_range(built.digest, 0, 512) == built.tar[:512]


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("gz"), True)


def _middle_point(built: Built) -> int:
    return len(built.artifact.points) // 2


def _with_window(built: Built, number: int, **changes: Any) -> PublishedData:
    points = list(built.data.points or ())
    window = points[number].window
    assert window is not None
    points[number] = dataclasses.replace(
        points[number], window=dataclasses.replace(window, **changes)
    )
    return dataclasses.replace(built.data, points=tuple(points))


def test_a_tampered_window_digest_is_eio_for_the_layer(
    gz: Built, caplog: pytest.LogCaptureFixture
) -> None:
    number = _middle_point(gz)
    at = gz.artifact.points[number].position
    data = _with_window(gz, number, sha256="0" * 64)
    reader = PublishedLayers({gz.digest: data}, MemoryBlobs(gz.blobs))
    assert reader.read_range(gz.digest, 0, 4096) == gz.tar[:4096]  # no window needed
    with pytest.raises(OSError) as raised:
        reader.read_range(gz.digest, at + 10, 100)
    assert raised.value.errno == errno.EIO
    assert "checkpoint window" in str(raised.value)
    with pytest.raises(OSError) as raised:
        reader.read_range(gz.digest, 0, 4096)  # not served any more, though kept
    assert raised.value.errno == errno.EIO
    assert caplog.text.count("does not match its published index") == 1


def test_a_window_that_is_not_a_zlib_window_is_eio(gz: Built) -> None:
    """A windows blob whose bytes match their digests but are no 32 KiB window: refused."""
    number = _middle_point(gz)
    point = gz.artifact.points[number]
    assert point.window is not None and gz.artifact.windows is not None
    for forged in (b"not zlib at all", zlib.compress(bytes(100)), zlib.compress(bytes(40000))):
        windows = gz.windows + forged
        blobs = {**gz.blobs, gz.artifact.windows: windows}
        data = _with_window(
            gz,
            number,
            offset=len(gz.windows),
            length=len(forged),
            sha256=hashlib.sha256(forged).hexdigest(),
        )
        data = dataclasses.replace(data, windows_size=len(windows))
        reader = PublishedLayers({gz.digest: data}, MemoryBlobs(blobs))
        with pytest.raises(OSError) as raised:
            reader.read_range(gz.digest, point.position, 100)
        assert raised.value.errno == errno.EIO
        assert "bytes of zlib" in str(raised.value)


def test_a_read_fetches_its_own_window_and_spans_only(gz: Built) -> None:
    number = _middle_point(gz)
    point, after = gz.artifact.points[number], gz.artifact.points[number + 1]
    counting = CountingBlobs(MemoryBlobs(gz.blobs))
    reader = PublishedLayers({gz.digest: gz.data}, counting)
    at = point.position + 100
    assert reader.read_range(gz.digest, at, 200) == gz.tar[at : at + 200]
    windows = [r for r in counting.reads if r[0] == gz.artifact.windows]
    assert point.window is not None
    assert windows == [(gz.artifact.windows, point.window.offset, point.window.length)]
    layer = [r for r in counting.reads if r[0] == gz.digest]
    # The compressed bytes of its interval, cut in spans, and no span before or after it.
    assert min(offset for _, offset, _ in layer) == first_byte(point)
    assert max(offset + length for _, offset, length in layer) <= first_byte(after) + MAX_SPAN


class Gone(MemoryBlobs):
    """A source that stops answering for the windows blob (the daemon restarting, the
    registry gone): only what a reader kept can serve it after."""

    def __init__(self, blobs: dict[Digest, bytes], windows: Digest) -> None:
        super().__init__(blobs)
        self.windows = windows
        self.gone = False

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        if self.gone and digest == self.windows:
            raise TemporaryFailure("the cache daemon at /cache did not answer within 60s")
        return super().read_range(digest, offset, length)


def test_a_window_fetched_once_serves_later_inflations_when_its_source_is_gone(
    gz: Built,
) -> None:
    point = gz.artifact.points[_middle_point(gz)]
    assert gz.artifact.windows is not None
    source = Gone(gz.blobs, gz.artifact.windows)
    reader = PublishedLayers({gz.digest: gz.data}, source)
    at = point.position + 100
    assert reader.read_range(gz.digest, at, 200) == gz.tar[at : at + 200]
    reader.close()  # the inflated intervals dropped: the next read inflates again
    source.gone = True
    assert reader.read_range(gz.digest, at, 200) == gz.tar[at : at + 200]


def test_a_kept_window_is_held_to_the_digest_of_each_checkpoint_that_names_it(
    gz: Built,
) -> None:
    """A forged index naming one window's bytes for two checkpoints, the second with another
    digest: the bytes kept for the first are not the second's."""
    number = _middle_point(gz)
    first, second = gz.artifact.points[number], gz.artifact.points[number + 2]
    assert first.window is not None
    data = _with_window(gz, number + 2, offset=first.window.offset,
                        length=first.window.length, sha256="0" * 64)  # fmt: skip
    reader = PublishedLayers({gz.digest: data}, MemoryBlobs(gz.blobs))
    at = first.position + 100
    assert reader.read_range(gz.digest, at, 200) == gz.tar[at : at + 200]
    with pytest.raises(OSError) as raised:
        reader.read_range(gz.digest, second.position + 100, 200)
    assert raised.value.errno == errno.EIO
    assert "checkpoint window" in str(raised.value)


def test_no_wrong_byte_from_any_flipped_windows_byte(gz: Built) -> None:
    assert gz.artifact.windows is not None
    rng = random.Random(12)
    for _ in range(20):
        damaged = bytearray(gz.windows)
        damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
        blobs = {**gz.blobs, gz.artifact.windows: bytes(damaged)}
        reader = PublishedLayers({gz.digest: gz.data}, MemoryBlobs(blobs))
        for offset in range(0, len(gz.tar), 1 << 16):
            try:
                got = reader.read_range(gz.digest, offset, 1 << 16)
            except OSError as error:
                assert error.errno == errno.EIO
                continue
            assert got == gz.tar[offset : offset + (1 << 16)]


def test_the_daemons_client_reads_the_layer_and_its_windows_by_exact_ranges(
    gz: Built, tmp_path: Path
) -> None:
    from lazyfs.cache.client import CacheClient, remote_blob

    client = CacheClient(tmp_path / "cache", {gz.digest: remote_blob("r.invalid", "app", gz.layer)})
    found = open_published(gz.layers_dir, gz.layer, client)
    assert found is not None and gz.artifact.windows is not None
    layer, windows = client.blobs[gz.digest], client.blobs[gz.artifact.windows]
    assert layer.exact and windows.exact
    assert windows.origin == layer.origin and windows.size == len(gz.windows)
    assert windows.diff_id is None


@pytest.mark.parametrize("change", ["bits", "offset"])
def test_a_tampered_checkpoint_is_eio_never_a_wrong_byte(gz: Built, change: str) -> None:
    """A point moved off its deflate block: zran does not inflate from there, or the
    stream ends early; either is EIO for the layer."""
    points = list(gz.artifact.points)
    refused = 0
    for number in range(1, len(points)):
        point = points[number]
        moved = (
            dataclasses.replace(point, bits=(point.bits + 3) % 8 or 1, offset=point.offset or 1)
            if change == "bits"
            else dataclasses.replace(point, offset=point.offset + 1)
        )
        data = dataclasses.replace(gz.data, points=(*points[:number], moved, *points[number + 1 :]))
        reader = PublishedLayers({gz.digest: data}, MemoryBlobs(gz.blobs))
        at = point.position
        try:
            got = reader.read_range(gz.digest, at, 4096)
        except OSError as error:
            assert error.errno == errno.EIO
            refused += 1
            continue
        assert got == gz.tar[at : at + 4096], number
    assert refused == len(points) - 1


def test_a_forged_window_with_its_own_digest_is_eio_never_a_wrong_byte(gz: Built) -> None:
    """A window the head names by digest but that is not the stream's: the interval's
    digest catches what it inflates to."""
    assert gz.artifact.windows is not None
    forged = zlib.compress(bytes(WINDOW))
    windows = gz.windows + forged
    refused = 0
    for number in range(1, len(gz.artifact.points)):
        point = gz.artifact.points[number]
        data = _with_window(
            gz, number, offset=len(gz.windows), length=len(forged),
            sha256=hashlib.sha256(forged).hexdigest(),
        )  # fmt: skip
        data = dataclasses.replace(data, windows_size=len(windows))
        blobs = {**gz.blobs, gz.artifact.windows: windows}
        reader = PublishedLayers({gz.digest: data}, MemoryBlobs(blobs))
        try:
            got = reader.read_range(gz.digest, point.position, 1 << 16)
        except OSError as error:
            assert error.errno == errno.EIO
            refused += 1
            continue
        assert got == gz.tar[point.position : point.position + (1 << 16)]
    assert refused > 0
