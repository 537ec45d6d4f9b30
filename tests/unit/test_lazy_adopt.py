"""Layers the cache holds whole: adopted into the store after the start, not during it.

A lazy start that finds a remote layer complete in the cache mounts it
remote (``blobs_for``); the detached process it leaves
(``lazyfs.provision.adopt``) copies each layer into the store as it
completes, verified.
A layer another image brought is held to each image's own diff_id.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import io
import logging
import os
import signal
import sys
import tarfile
from logging import ERROR
from pathlib import Path

import pytest

from lazyfs.cache.blobstate import COMPLETE, Verdict, write_verdict
from lazyfs.cache.layout import CHUNK_SIZE, ChunkKey, Layout
from lazyfs.cache.remote import Remote, trace_key
from lazyfs.cache.spawn import DaemonSpec
from lazyfs.cache.values import BlobInfo, BlobKind
from lazyfs.index.stored import load_index
from lazyfs.provision import adopt
from lazyfs.provision.adopt import adopt_complete, adopt_image, main
from lazyfs.provision.adopt_spawn import _spawn, adopt_later, adopt_lock
from lazyfs.provision.lazy import LazyBlobs, blobs_for, remote_digests, start_adopting
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import DigestMismatch
from providers.fslock import try_exclusive_lock
from providers.manifest import ImageManifest, Layer, RuntimeConfig
from tests.support.cache_daemons import wait_for

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sha(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def _layer_bytes() -> tuple[bytes, Digest]:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as out:
        info = tarfile.TarInfo("hello")
        info.size = 5
        out.addfile(info, io.BytesIO(b"hello"))
    return gzip.compress(tar.getvalue(), mtime=0), _sha(tar.getvalue())


def _image(layer: Layer) -> ImageManifest:
    return ImageManifest("registry.test/app:1", _sha(b"manifest"), (layer,))


def test_a_stored_layer_is_held_to_each_image_s_own_diff_id(tmp_path: Path) -> None:
    blob, diff_id = _layer_bytes()
    store = Store(tmp_path / "store")
    honest = Layer(_sha(blob), GZIP, len(blob), diff_id)
    store.ingest(honest, lambda: io.BytesIO(blob))
    cache_dir = tmp_path / "cache"  # holds nothing: only stored layers are in question

    assert adopt_complete(store, cache_dir, _image(honest)) == []

    lying = Layer(honest.digest, GZIP, len(blob), _sha(b"another tar"))
    with pytest.raises(DigestMismatch, match="diff_id"):  # the start refuses it
        blobs_for("fuse", StoreBlobs(store), _image(lying), DaemonSpec(cache_dir, ()))
    skipped: set[Digest] = set()  # the adopting process passes over it, and on
    assert adopt_complete(store, cache_dir, _image(lying), skipped) == []
    assert skipped == {honest.digest}


def _cached_whole(cache_dir: Path, layer: Layer, blob: bytes, diff_id: Digest) -> None:
    """What the daemon leaves once background fetch has the blob whole and verified."""
    layout = Layout(cache_dir)
    for index, start in enumerate(range(0, len(blob), CHUNK_SIZE)):
        path = layout.chunk_path(ChunkKey(layer.digest, index))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob[start : start + CHUNK_SIZE])
    write_verdict(cache_dir, Verdict(layer.digest, COMPLETE, len(blob), diff_id))


def _complete_image(tmp_path: Path) -> tuple[Store, Path, ImageManifest]:
    blob, diff_id = _layer_bytes()
    layer = Layer(_sha(blob), GZIP, len(blob), diff_id)
    cache_dir = tmp_path / "cache"
    _cached_whole(cache_dir, layer, blob, diff_id)
    store = Store(tmp_path / "store")
    manifest = _image(layer)
    store.put_image(manifest)  # as fetch_lazy records it, the layer left remote
    return store, cache_dir, manifest


def test_a_start_that_finds_a_layer_complete_mounts_it_remote_without_copying_it(
    tmp_path: Path,
) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    (layer,) = manifest.layers

    blobs = blobs_for("fuse", StoreBlobs(store), manifest, DaemonSpec(cache_dir, ()), ["true"])

    # Remote in the provisioner's record, read through the cache; not copied first.
    assert remote_digests(blobs) == (layer.digest,)
    assert isinstance(blobs, LazyBlobs)
    assert not store.has_blob(layer.digest)


def test_a_working_dir_given_keys_the_trace_and_finds_a_relative_program_from_it(
    tmp_path: Path,
) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    manifest = dataclasses.replace(
        manifest, config=RuntimeConfig(cmd=("./app",), working_dir="/srv")
    )
    spec = DaemonSpec(cache_dir, ())

    def remote(working_dir: str) -> Remote:
        blobs = blobs_for("fuse", StoreBlobs(store), manifest, spec, [], working_dir)
        assert isinstance(blobs, LazyBlobs)
        return blobs.remote

    image, given = remote(""), remote("/opt")
    assert image.trace == trace_key(manifest.digest, (), ("./app",), "/srv")
    assert given.trace == trace_key(manifest.digest, (), ("./app",), "/opt") != image.trace
    assert (image.executable, given.executable) == (("/srv/./app",), ("/opt/./app",))


def test_a_layer_the_cache_found_other_than_the_image_says_is_not_copied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    (layer,) = manifest.layers
    lying = _image(Layer(layer.digest, GZIP, layer.size, _sha(b"another tar")))
    store.put_image(lying)

    with caplog.at_level(logging.WARNING, logger="lazyfs.adopt"):
        adopted = adopt_image(store.root, cache_dir, lying.reference, "")

    assert adopted == [] and not store.has_blob(layer.digest)
    assert "what the cache found whole" in caplog.text and "stays remote" in caplog.text


def test_adopting_copies_the_complete_layers_and_the_next_start_finds_them_local(
    tmp_path: Path,
) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    (layer,) = manifest.layers
    args = (store.root, cache_dir, manifest.reference, manifest.platform)

    # An image another process adopts right now is left to it.
    with try_exclusive_lock(adopt_lock(store.root, manifest.reference, manifest.platform)):
        assert adopt_image(*args) == []
    assert not store.has_blob(layer.digest)

    assert adopt_image(*args) == [layer.digest]
    assert store.has_blob(layer.digest)
    # Not indexed here: a gzip layer's index is built from the whole blob, by the
    # start that needs it rather than under its lock at this process's CPU share.
    # (An eStargz layer keeps its TOC's index: tests/estargz/test_lazy_fetch.py.)
    assert load_index(store.layers, layer.digest) is None
    again = blobs_for("fuse", StoreBlobs(store), manifest, DaemonSpec(cache_dir, ()))
    assert remote_digests(again) == ()


def test_an_image_gone_from_the_store_is_not_adopted(tmp_path: Path) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    store.image_record(manifest.reference, manifest.platform).unlink()  # removed by image GC

    adopted = adopt_image(store.root, cache_dir, manifest.reference, "")

    assert adopted == [] and not store.has_blob(manifest.layers[0].digest)


def test_the_detached_process_adopts_the_layers_and_exits(tmp_path: Path) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    (layer,) = manifest.layers
    logs = tmp_path / "logs"
    logs.mkdir()

    pid = adopt_later(store.root, cache_dir, manifest, logs)

    assert pid is not None
    # Reaped by adopt_later's thread once it exits: its /proc entry goes then.
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the adopting process to exit", 60)
    assert store.has_blob(layer.digest), (logs / "adopt.log").read_text()
    assert "1 layers adopted" in (logs / "adopt.log").read_text()


def test_a_failure_is_one_logged_line_and_exit_status_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    store.image_record(manifest.reference, manifest.platform).write_text("{")  # damaged

    status = main(["--store", str(store.root), "--cache-dir", str(cache_dir),
                   "--reference", manifest.reference])  # fmt: skip

    assert status == 1
    (record,) = [r for r in caplog.records if r.name == "lazyfs.adopt" and r.levelno >= ERROR]
    assert "adopting failed" in record.getMessage() and record.exc_info is None
    assert not store.has_blob(manifest.layers[0].digest)


def test_a_start_leaves_no_second_process_while_one_adopts_the_image(tmp_path: Path) -> None:
    store, cache_dir, manifest = _complete_image(tmp_path)
    blobs = blobs_for("fuse", StoreBlobs(store), manifest, DaemonSpec(cache_dir, ()))
    logs = tmp_path / "logs"
    logs.mkdir()

    with try_exclusive_lock(adopt_lock(store.root, manifest.reference, manifest.platform)):
        start_adopting(blobs, manifest, logs, None)
        assert not (logs / "adopt.log").exists()  # nothing was spawned

    start_adopting(blobs, manifest, logs, None)
    wait_for(lambda: store.has_blob(manifest.layers[0].digest), "the layer to be adopted", 60)


def _status(blob: Layer, kind: BlobKind, cached: int) -> dict[Digest, BlobInfo]:
    return {blob.digest: BlobInfo(blob.digest, kind, blob.size, cached)}


def test_a_following_process_copies_a_layer_once_background_fetch_completes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob, diff_id = _layer_bytes()
    layer = Layer(_sha(blob), GZIP, len(blob), diff_id)
    cache_dir, store, manifest = tmp_path / "cache", Store(tmp_path / "store"), _image(layer)
    store.put_image(manifest)
    answers: list[int] = []

    def daemon_says(_: Path) -> dict[Digest, BlobInfo]:
        answers.append(len(answers))
        if len(answers) < 3:
            return _status(layer, BlobKind.FETCHING, len(answers))
        # As the daemon does: the verdict is written before the blob leaves FETCHING.
        _cached_whole(cache_dir, layer, blob, diff_id)
        return _status(layer, BlobKind.COMPLETE, len(blob))

    monkeypatch.setattr(adopt, "_daemon_blobs", daemon_says)
    args = (store.root, cache_dir, manifest.reference, "")

    assert adopt_image(*args, follow=True, poll=0, status_every=0) == [layer.digest]
    assert store.has_blob(layer.digest) and len(answers) == 3


def test_a_following_process_gives_up_when_nothing_more_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blob, diff_id = _layer_bytes()
    layer = Layer(_sha(blob), GZIP, len(blob), diff_id)
    store, manifest = Store(tmp_path / "store"), _image(layer)
    store.put_image(manifest)
    asked: list[int] = []

    def daemon_says(_: Path) -> dict[Digest, BlobInfo]:
        asked.append(1)
        assert len(asked) < 100, "it never gave up"
        return _status(layer, BlobKind.FETCHING, 7)

    monkeypatch.setattr(adopt, "_daemon_blobs", daemon_says)
    args = (store.root, tmp_path / "cache", manifest.reference, "")

    with caplog.at_level(logging.WARNING, logger="lazyfs.adopt"):
        adopted = adopt_image(*args, follow=True, poll=0, status_every=0, patience=0)

    assert adopted == [] and "no byte more of 1 layers" in caplog.text


def test_the_spawned_process_holds_the_lock_the_start_took(tmp_path: Path) -> None:
    lock = tmp_path / "adopt.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # A process that keeps whatever it was handed, until told to end.
    pid = _spawn([sys.executable, "-c", "import signal; signal.pause()"], tmp_path, fd)
    os.close(fd)
    try:
        with try_exclusive_lock(lock) as free:
            assert not free  # the child's copy of the descriptor holds it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with try_exclusive_lock(lock) as free:
        assert free


def test_a_following_process_waits_for_a_fetch_that_waits_out_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon's background fetch waits for its origin (no byte more meanwhile), then
    # completes the blob: the process outwaits it, whatever its patience for a stall.
    blob, diff_id = _layer_bytes()
    layer = Layer(_sha(blob), GZIP, len(blob), diff_id)
    cache_dir, store, manifest = tmp_path / "cache", Store(tmp_path / "store"), _image(layer)
    store.put_image(manifest)
    answers: list[int] = []

    def daemon_says(_: Path) -> dict[Digest, BlobInfo]:
        answers.append(len(answers))
        if len(answers) < 5:
            why = "waiting for its origin: cannot reach the registry; again in 60 s"
            return {layer.digest: BlobInfo(layer.digest, BlobKind.FETCHING, layer.size, 7, why)}
        _cached_whole(cache_dir, layer, blob, diff_id)
        return _status(layer, BlobKind.COMPLETE, len(blob))

    monkeypatch.setattr(adopt, "_daemon_blobs", daemon_says)
    args = (store.root, cache_dir, manifest.reference, "")

    adopted = adopt_image(*args, follow=True, poll=0, status_every=0, patience=0)
    assert adopted == [layer.digest] and len(answers) == 5
