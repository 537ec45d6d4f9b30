"""``lazyfs cache`` from the disk when no daemon answers; the LOCAL column of ``lazyfs images``."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from lazyfs.cache.blobstate import COMPLETE, QUARANTINED, Verdict, write_verdict
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.daemon import serve
from lazyfs.cache.layout import CHUNK_SIZE, ChunkKey
from lazyfs.cache.messages import Background, BackgroundOk, HandleOrigin, Origin
from lazyfs.cli_cache import cache_report, local_share, render
from providers.digest import Digest
from providers.manifest import ImageManifest, Layer
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource
from tests.support.cache_socket import connect

ROOT = Path(__file__).resolve().parents[2]
PARTIAL = Digest("sha256:" + "aa" * 32)
DONE = Digest("sha256:" + "bb" * 32)
BAD = Digest("sha256:" + "cc" * 32)
READ = Digest("sha256:" + "dd" * 32)


def _cache(root: Path) -> None:
    with DiskCache.open(root, 64 * CHUNK_SIZE) as cache:
        cache.put(ChunkKey(PARTIAL, 0), b"x" * CHUNK_SIZE)
        cache.put(ChunkKey(DONE, 0), b"y" * 100)
        cache.put(ChunkKey(READ, 0), b"z" * 200)  # read whole by mounts, never checked whole
    write_verdict(root, Verdict(DONE, COMPLETE, 100))
    write_verdict(root, Verdict(BAD, QUARANTINED, 5000, reason="layer diff_id: wanted a, got b"))


def test_without_a_daemon_the_cache_is_read_from_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _cache(root)
    report = cache_report(root, 1 << 30, {PARTIAL: 4 * CHUNK_SIZE, READ: 200})
    assert not report.daemon_running and report.background_fetch is None
    used = (report.used_bytes, report.limit_bytes, report.chunks)
    assert used == (CHUNK_SIZE + 300, 1 << 30, 3)
    rows = {row.digest: row for row in report.layers}
    assert (rows[PARTIAL].state, rows[PARTIAL].complete) == ("partial", 0.25)
    assert (rows[READ].state, rows[READ].complete) == ("unchecked", 1.0)
    assert (rows[DONE].state, rows[DONE].complete, rows[DONE].size) == ("complete", 1.0, 100)
    assert rows[BAD].state == "quarantined" and "diff_id" in rows[BAD].reason
    table = render(report)
    assert "25%" in table and "100%" in table and "quarantined: layer diff_id" in table


def test_a_layer_of_unknown_size_shows_a_question_mark(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _cache(root)
    report = cache_report(root, 1 << 30, {})
    (row,) = [r for r in report.layers if r.digest == PARTIAL]
    assert row.size is None and row.complete is None
    assert "?" in render(report)


def test_the_local_share_counts_stored_layers_and_cached_bytes(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _cache(root)
    manifest = ImageManifest(
        reference="r.example/app:v1",
        digest=Digest("sha256:" + "dd" * 32),
        layers=(Layer(PARTIAL, "", 4 * CHUNK_SIZE), Layer(DONE, "", 100),
                Layer(BAD, "", 4 * CHUNK_SIZE - 100)),
    )  # fmt: skip
    # PARTIAL: a quarter cached; DONE: in the store; BAD: nothing.
    assert (
        local_share(manifest, lambda d: d == DONE, root)
        == f"{(CHUNK_SIZE + 100) / (8 * CHUNK_SIZE):.0%}"
    )


def test_lazyfs_cache_on_a_missing_cache_creates_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "cache", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"layers": []' in done.stdout
    assert not work.exists()


def test_a_bad_cache_size_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lazyfs", "--work_dir", str(tmp_path), "--cache_size", "lots",
         "cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "cache_size" in done.stderr


async def test_with_a_daemon_a_layer_read_in_whole_but_never_checked_is_unchecked(
    tmp_path: Path,
) -> None:
    # As without background fetch: mounts read every byte, nothing hashed the whole.
    root = tmp_path / "cache"
    root.mkdir()

    def resolve(origin: Origin) -> BlobSource:
        return FakeSource()

    with DiskCache.open(root, 64 * CHUNK_SIZE, chunk_size=SIZE) as cache:
        for index in range(len(DATA) // SIZE):
            cache.put(ChunkKey(BLOB, index), DATA[index * SIZE : (index + 1) * SIZE])
        async with trio.open_nursery() as nursery:
            path = await nursery.start(partial(serve, cache, resolve, background=False))
            async with connect(path) as client:
                asked = Background(1, BLOB, HandleOrigin("fake"), len(DATA), None, "")
                assert isinstance(await client.call(asked), BackgroundOk)
            known = {BLOB: len(DATA)}  # the size, from the images that name it
            report = await trio.to_thread.run_sync(cache_report, root, 1 << 30, known)
            nursery.cancel_scope.cancel()
    assert report.daemon_running
    (row,) = report.layers
    assert (row.digest, row.complete, row.state) == (BLOB, 1.0, "unchecked")
