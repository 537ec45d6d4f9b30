"""A lazy mount's bars follow what the daemon's status says is cached; the summary
counts the store's layers and the cached bytes of the remote ones."""

from __future__ import annotations

import io

from lazyfs.cache.values import BlobInfo, BlobKind, StatusOk
from lazyfs.progress import Progress
from lazyfs.provision.lazy_progress import LazyView
from providers.digest import Digest
from providers.manifest import ImageManifest, Layer

LOCAL, REMOTE = Digest("sha256:" + "a" * 64), Digest("sha256:" + "b" * 64)
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = ImageManifest(
    "registry.test/app:1",
    Digest("sha256:" + "c" * 64),
    (Layer(LOCAL, GZIP, 1024), Layer(REMOTE, GZIP, 3072)),
)


def status(cached: int, *, background: bool = True) -> StatusOk:
    blobs = (
        BlobInfo(REMOTE, BlobKind.PARTIAL, 3072, cached),
        # Another image's layer in the same cache: no bar of this mount moves for it.
        BlobInfo(Digest("sha256:" + "d" * 64), BlobKind.PARTIAL, 4096, 4096),
    )
    return StatusOk(1, 0, 0, 0, 0, 0, 0, blobs=blobs, background_fetch=background)


def view_of(out: io.StringIO) -> tuple[LazyView, Progress]:
    progress = Progress(out, enabled=True)
    view = LazyView(MANIFEST, {REMOTE: 3072}, progress)
    view.start()
    return view, progress


def test_the_bar_of_a_remote_layer_shows_its_cached_bytes() -> None:
    out = io.StringIO()
    view, progress = view_of(out)
    view.seen(status(512))
    view.seen(status(1536))
    progress.finish()
    (line,) = out.getvalue().splitlines()
    assert line.startswith("sha256:bbbbbbbbbbbb")
    assert "1.5/3.0 KiB  50%" in line
    assert progress.fetched == 1536


def test_evicted_chunks_take_the_bar_back_and_it_never_passes_the_layer() -> None:
    view, progress = view_of(io.StringIO())
    view.seen(status(3072))
    view.seen(status(1024))
    assert progress.fetched == 1024
    view.seen(status(9999))
    assert progress.fetched == 3072
    progress.finish()


def test_the_summary_counts_stored_layers_and_cached_bytes() -> None:
    view, progress = view_of(io.StringIO())
    view.seen(status(1024))
    progress.finish()
    assert view.summary() == (
        "lazyfs: 2.0 KiB local (50%), 2.0 KiB remote, fetching in the background"
    )
    view.seen(status(1024, background=False))
    assert view.summary().endswith("2.0 KiB remote, read on demand")


def test_without_an_answer_from_the_daemon_the_summary_says_only_the_sizes() -> None:
    view, progress = view_of(io.StringIO())
    progress.finish()
    assert view.summary() == "lazyfs: 1.0 KiB local (25%), 3.0 KiB remote"


def test_once_everything_is_cached_the_summary_promises_no_fetch() -> None:
    view, progress = view_of(io.StringIO())
    view.seen(status(3072))
    progress.finish()
    assert view.summary() == "lazyfs: 4.0 KiB local (100%), nothing remote"
