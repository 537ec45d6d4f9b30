"""Prefetch, background fetch and bad bytes, as the registry and the daemon see them.

Real processes throughout: ``lazyfs provision --backend fuse`` from a
loopback ``docker-registry`` behind a recording proxy
(``tests.support.fault_proxy``: every request with its Range header), the
daemon the first mount starts, and reads of the mounted rootfs. What
happened is read from the proxy's record and the daemon's status, never
from a mock. Tests that count bytes turn background fetch off
(``--no_background_fetch``); the background tests leave it on.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyfs.cache.messages import BlobKind
from lazyfs.cache.remote import RemoteOrigin
from lazyfs.cache.tails import ask_tails
from lazyfs.fs.mount_ahead import toc_start
from lazyfs.index.stored import OWN_TOC_STAMP
from providers.digest import Digest
from providers.manifest import OCI_LAYER_GZIP, Layer
from tests.support.cache_daemons import (
    daemon_status,
    kill_recorded,
    recorded_daemon,
    run_daemon,
    wait_for,
)
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.fuse_mounts import kill_mount_process, need_fuse
from tests.support.lazy_fetch import (
    many_files_blob,
    provisioned,
    proxied,
    ranges_of,
    settled,
    wait_adopted,
)
from tests.support.lazy_images import TOC_ANNOTATION, diff_id, lazyfs, push_estargz_image
from tests.support.registry_servers import Registry, run_registry

A = os.urandom(1536 << 10)
B = os.urandom(1 << 20)
C = os.urandom(3 << 20)
TREE = [
    File("app", type="dir", mode=0o755),
    File("app/a", A),
    File("app/b", B),
    File("data", type="dir", mode=0o755),
    File("data/c", C),
]
# The landmark after app/a and app/b: they are the prioritized files.
PREFETCHED = write_estargz(TREE, chunk_size=512 << 10, prefetch=3)
NOT_PREFETCHED = write_estargz(TREE, chunk_size=512 << 10)
TOP = write_estargz([File("etc", type="dir", mode=0o755), File("etc/top", b"top\n" * 2000)])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("lazy-fetch-registry")
    with run_registry(work, work / "storage") as running:
        yield running


def landmark_offset(blob: Blob) -> int:
    toc = json.loads(blob.toc_json)
    return int(next(e["offset"] for e in toc["entries"] if e["name"] == ".prefetch.landmark"))


def test_the_files_before_the_landmark_arrive_at_mount_in_one_range_request(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    pushed = push_estargz_image(registry.url, "lazy/pre", "v1", [PREFETCHED])
    (layer,) = pushed.layers
    work = tmp_path / "work"
    with (
        proxied(registry) as (host, faults),
        provisioned(work, host, "lazy/pre:v1", background=False) as info,
    ):
        settled(work / "cache")
        at_mount = ranges_of(faults, layer)
        from_start = [r for r in at_mount if r[0] == 0]
        # One request from the blob's start through the landmark's bytes.
        assert len(from_start) == 1, at_mount
        assert from_start[0][1] >= landmark_offset(PREFETCHED)
        rootfs = Path(info["rootfs"])
        assert (rootfs / "app/a").read_bytes() == A
        assert (rootfs / "app/b").read_bytes() == B
        # The prioritized files were all there: reading them asked nothing more.
        assert ranges_of(faults, layer) == at_mount
        assert (rootfs / "data/c").read_bytes() == C
        assert len(ranges_of(faults, layer)) > len(at_mount)


def test_a_layer_with_the_no_prefetch_landmark_gets_no_prefetch(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    pushed = push_estargz_image(registry.url, "lazy/noprefetch", "v1", [NOT_PREFETCHED])
    (layer,) = pushed.layers
    work = tmp_path / "work"
    with (
        proxied(registry) as (host, faults),
        provisioned(work, host, "lazy/noprefetch:v1", background=False),
    ):
        found = settled(work / "cache")
        # The footer and TOC only: the tail of the blob, nothing from its start.
        at_mount = ranges_of(faults, layer)
        assert at_mount and all(first > 0 for first, _ in at_mount), at_mount
        assert found.used_bytes < len(NOT_PREFETCHED.data) // 2


def test_the_toc_is_all_a_mount_fetches_of_a_layer_with_a_big_toc(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    blob = many_files_blob()
    toc_at = blob.toc_offset
    member = len(blob.data) - toc_at
    assert 64 << 10 < member < 512 << 10  # needs the footer's say, yet is not most of 1 MiB
    pushed = push_estargz_image(registry.url, "lazy/bigtoc", "v1", [blob])
    (layer,) = pushed.layers
    work = tmp_path / "work"
    with (
        proxied(registry) as (host, faults),
        provisioned(work, host, "lazy/bigtoc:v1", background=False),
    ):
        found = settled(work / "cache")
        # The TOC member and the footer, in whole 64 KiB chunks: nothing of the files.
        assert all(first >= toc_at - (64 << 10) for first, _ in ranges_of(faults, layer))
        assert found.fetched_bytes <= member + (64 << 10)


def test_the_mounting_command_asks_for_every_layers_toc_before_the_mount_reads_one(
    registry: Registry, tmp_path: Path
) -> None:
    blobs = [many_files_blob(1), many_files_blob(2)]
    pushed = push_estargz_image(registry.url, "lazy/asktocs", "v1", blobs)
    layers = [
        Layer(Digest(digest), OCI_LAYER_GZIP, size, None, ((TOC_ANNOTATION, blob.toc_digest),))
        for digest, size, blob in zip(pushed.layers, pushed.sizes, blobs, strict=True)
    ]
    cache = tmp_path / "cache"
    with proxied(registry) as (host, faults), run_daemon(tmp_path / "work", cache):
        origins = {layer.digest: RemoteOrigin(host, "lazy/asktocs") for layer in layers}
        # What the command that mounts does while its mount process starts: no mount reads.
        assert ask_tails(cache, tmp_path / "store", layers, origins, toc_start) > 0
        settled(cache)
        for layer, blob in zip(layers, blobs, strict=True):
            asked = ranges_of(faults, layer.digest)
            # Each TOC member whole, from where its footer says, and nothing before it.
            assert min(first for first, _ in asked) == blob.toc_offset // (64 << 10) * (64 << 10)
            assert max(last for _, last in asked) == layer.size - 1


def _blob_states(cache_dir: Path) -> dict[str, BlobKind]:
    found = daemon_status(cache_dir)
    return {} if found is None else {b.digest: b.kind for b in found.blobs}


def test_background_fetch_completes_the_layers_and_the_next_provision_has_them_local(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    pushed = push_estargz_image(registry.url, "lazy/bg", "v1", [NOT_PREFETCHED, TOP])
    work = tmp_path / "work"
    cache_dir = work / "cache"
    with proxied(registry) as (host, _faults):
        with provisioned(work, host, "lazy/bg:v1", background=True) as info:
            assert len(info["remote_layers"]) == 2

            def complete() -> bool:
                states = _blob_states(cache_dir)
                return all(states.get(d) is BlobKind.COMPLETE for d in pushed.layers)

            wait_for(complete, "both layers to be fetched and verified", timeout=120)
            shown = lazyfs(work, f"http://{host}", "cache", "--json")
            assert shown.returncode == 0, shown.stderr
            report = json.loads(shown.stdout)
            assert report["daemon_running"] is True and report["background_fetch"] is True
            rows = {row["digest"]: row for row in report["layers"]}
            for digest, size in zip(pushed.layers, pushed.sizes, strict=True):
                assert rows[digest]["state"] == "complete"
                assert rows[digest]["size"] == size and rows[digest]["complete"] == 1.0
            table = lazyfs(work, f"http://{host}", "cache").stdout
            assert pushed.layers[0][:19] in table and "100%" in table
            images = lazyfs(work, f"http://{host}", "images").stdout
            assert "LOCAL" in images and "100%" in images
            # Files read while the background fetch ran are the image's.
            assert (Path(info["rootfs"]) / "data/c").read_bytes() == C
        assert recorded_daemon(cache_dir) is None
        # With no other start: the process the provision left copied each layer
        # into the store, verified, as background fetch completed it.
        wait_adopted(work, pushed.layers)
        # And gave each the index its own TOC gave, stamped so: the next start only reads it.
        layers = work / "store" / "docker" / "layers"
        for digest in pushed.layers:
            assert (layers / digest.removeprefix("sha256:") / OWN_TOC_STAMP).is_file()
        # The next provision mounts them as local layers: no daemon is needed, none is started.
        with provisioned(work, host, "lazy/bg:v1", "c2", background=True) as again:
            assert again["remote_layers"] == []
            assert (Path(again["rootfs"]) / "app/a").read_bytes() == A
            assert recorded_daemon(cache_dir) is None


def test_a_lazy_container_mounted_again_after_a_reboot_has_its_layers_made_local(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    pushed = push_estargz_image(registry.url, "lazy/reboot", "v1", [NOT_PREFETCHED, TOP])
    work = tmp_path / "work"
    cache_dir = work / "cache"
    with proxied(registry) as (host, _faults):
        url = f"http://{host}"
        # No background fetch: the layers stay remote, and the process the start left to
        # make them local ends, as a reboot ends it.
        with provisioned(work, host, "lazy/reboot:v1", background=False) as info:
            rootfs = Path(info["rootfs"])
            assert len(info["remote_layers"]) == 2
            wait_adopted(work, [])
            kill_mount_process(rootfs)
            kill_recorded(cache_dir)
            # The agent's restart, after the reboot: its daemon fetches in the background.
            kept = lazyfs(work, url, "recover", "--keep", "c1")
            assert kept.returncode == 0, kept.stderr
            assert json.loads(kept.stdout)["remounted"] == ["c1"]
            assert (rootfs / "etc/top").read_bytes() == b"top\n" * 2000
            # The recovered mount's layers are copied into the store as they complete,
            # as its first start's would have been: not left in the size-bounded cache.
            wait_adopted(work, pushed.layers)
        stored = lazyfs(work, url, "provision", "c2", f"docker:{host}/lazy/reboot:v1",
                        "--backend", "fuse")  # fmt: skip
        try:
            assert stored.returncode == 0, stored.stderr
            assert json.loads(stored.stdout)["remote_layers"] == []
        finally:
            assert lazyfs(work, url, "destroy", "c2").returncode == 0


def test_an_image_lying_about_a_layer_s_diff_id_cannot_deny_the_layer_to_other_images(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    wrong = diff_id(TOP)  # the other layer's: a config that lies about this one
    right = diff_id(NOT_PREFETCHED)
    lying = push_estargz_image(registry.url, "lazy/lying", "v1", [NOT_PREFETCHED], diff_ids=[wrong])
    honest = push_estargz_image(registry.url, "lazy/honest", "v1", [NOT_PREFETCHED])
    (layer,) = lying.layers
    assert honest.layers == lying.layers
    work = tmp_path / "work"
    cache_dir = work / "cache"
    with (
        proxied(registry) as (host, _faults),
        provisioned(work, host, "lazy/lying:v1", background=True) as info,
    ):
        # The liar's own background fetch runs to its verdict: on the bytes, not the claim.
        wait_for(
            lambda: _blob_states(cache_dir).get(layer) is BlobKind.COMPLETE,
            "the layer's verdict",
            timeout=120,
        )
        rootfs = Path(info["rootfs"])
        with pytest.raises(OSError) as raised:
            (rootfs / "data/c").read_bytes()
        assert raised.value.errno == errno.EIO
        log = (rootfs.parent.parent / "scratch" / rootfs.name / "mount.log").read_text()
        assert f"layer {layer}: its diff_id is {right}, the image says {wrong}" in log
        shown = json.loads(lazyfs(work, f"http://{host}", "cache", "--json").stdout)
        (row,) = [r for r in shown["layers"] if r["digest"] == layer]
        assert row["state"] == "complete"
        # Nothing is made local for the liar: the store checks diff_id per image.
        again = lazyfs(work, f"http://{host}", "provision", "c3", f"docker:{host}/lazy/lying:v1",
                       "--backend", "fuse")  # fmt: skip
        try:
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["remote_layers"] == [layer]
        finally:
            assert lazyfs(work, f"http://{host}", "destroy", "c3").returncode == 0
        # Another image naming the layer with its true diff_id reads it, and has it local.
        with provisioned(work, host, "lazy/honest:v1", "c2", background=True) as victim:
            assert (Path(victim["rootfs"]) / "data/c").read_bytes() == C
            assert (Path(victim["rootfs"]) / "app/a").read_bytes() == A
            wait_adopted(work, [layer])


def test_a_chunk_corrupted_in_flight_is_dropped_from_the_cache_and_fetched_again(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    pushed = push_estargz_image(registry.url, "lazy/flip", "v1", [NOT_PREFETCHED])
    (layer,) = pushed.layers
    work = tmp_path / "work"
    with (
        proxied(registry) as (host, faults),
        provisioned(work, host, "lazy/flip:v1", background=False) as info,
    ):
        settled(work / "cache")
        before = len(ranges_of(faults, layer))
        with faults.lock:
            faults.corruptions = 1  # the next blob body has one byte flipped
        assert (Path(info["rootfs"]) / "app/a").read_bytes() == A
        assert (Path(info["rootfs"]) / "app/b").read_bytes() == B
        assert faults.corruptions == 0  # it fired
        after = ranges_of(faults, layer)[before:]
        # The corrupted bytes were asked for again, after the mount told the daemon
        # (not always as the same range: the refetch asks for the evicted chunks).
        assert any(
            first <= other_last and other_first <= last
            for at, (first, last) in enumerate(after)
            for other_first, other_last in after[at + 1 :]
        ), after
        assert "evicted" in (work / "cache" / "daemon.log").read_text()


def _lying_chunk(doc: dict[str, Any]) -> None:
    for entry in doc["entries"]:
        if entry["name"] == "app/b":
            entry["chunkDigest"] = "sha256:" + "0" * 64


def test_a_chunk_that_never_verifies_gives_eio_and_is_not_kept_in_the_cache(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    lying = write_estargz(TREE, chunk_size=512 << 10, edit_toc=_lying_chunk)
    pushed = push_estargz_image(registry.url, "lazy/never", "v1", [lying])
    (layer,) = pushed.layers
    work = tmp_path / "work"
    with (
        proxied(registry) as (host, faults),
        provisioned(work, host, "lazy/never:v1", background=False) as info,
    ):
        settled(work / "cache")
        for attempt in (1, 2):
            before = len(ranges_of(faults, layer))
            with pytest.raises(OSError) as raised:
                (Path(info["rootfs"]) / "app/b").read_bytes()
            assert raised.value.errno == errno.EIO
            # Fetched, found wrong, dropped, fetched again: on every attempt,
            # never served from a cache that kept the bad bytes.
            assert len(ranges_of(faults, layer)) >= before + 2, attempt
        assert (Path(info["rootfs"]) / "app/a").read_bytes() == A
