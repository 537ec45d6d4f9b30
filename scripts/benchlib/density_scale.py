"""Density by image size: one fuse mount of images of 1k, 10k, 100k and 1M files, kept.

Part of ``scripts/bench --only density`` (``benchlib.density``), run once
per bench run, not per image.  Each image is 20 layers of small files in
directories of 40 (about one file in eight holds 64 bytes, the rest are
empty; each layer after the first rewrites ten files of the one below and
whites out ten), written straight into an OCI layout in the bench's
cache (Python's ``tarfile``; no umoci: a million files would take it long),
and kept there.  ``MANY_FILES`` (default ``1000,10000,100000,1000000``)
picks the sizes.

Per size, in a store of its own: a first mount without a deadline
indexes the 20 layers, merges them and keeps the tree (its time is
logged), so every timed provision mounts from the kept tree, as every
container after an image's first does.  The figure is one writable fuse provision, with the
mount process's PSS, RSS and CPU time (facts, as ``benchlib.density``
takes them) while it is up; the peer is the overlay backend's writable
provision of the same image (its layers extracted once, in the warm-up),
up to 100k files (``MANY_FILES_OVERLAY_UP_TO``): extracting a million
files takes it over five minutes on the development VM.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median
from typing import IO, Any

import trio

from backends.base import scratch_dir as rootfs_scratch
from benchlib.density_memory import memory_contenders
from benchlib.images import BenchImage
from benchlib.lazy import Lazyfs
from benchlib.measure import Contender, Context, Result, Timing, compare
from benchlib.util import now, settle
from lazyfs.fs import mount as lazy_mount
from lazyfs.fs import mount_server_client as server_client

LAYERS = 20
PER_DIR = 40
SIZES = (1_000, 10_000, 100_000, 1_000_000)
RECIPE = "1"
TAG = "bench"
MTIME = 1_600_000_000
FIRST_MOUNT_TIMEOUT = 3600.0
# Extracting a million files for overlay takes over five minutes here: left out above this.
OVERLAY_UP_TO = int(os.environ.get("MANY_FILES_OVERLAY_UP_TO", "100000"))


def sizes() -> tuple[int, ...]:
    """The image sizes to measure: ``MANY_FILES``, else ``SIZES``."""
    given = os.environ.get("MANY_FILES")
    return tuple(int(n) for n in given.split(",")) if given else SIZES


def measure_scale(
    ctx: Context, measure: Callable[[int], float], per: Callable[..., int]
) -> list[Result]:
    """Mount time, PSS and CPU of one fuse mount per image size; overlay beside it.

    Then, per size, a mount's memory after a walk and a read-all
    (``benchlib.density_memory``), as a second result, ``density-memory``.
    ``measure(pid)`` is a mount process's CPU ms, ``per(pids, field)`` its
    ``smaps_rollup`` field (``benchlib.density``'s, passed in to share them).
    """
    contenders: list[Contender] = []
    loaded: list[Contender] = []
    for files in sizes():
        image = many_files_image(ctx.cache, files, ctx.log)
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(_work(ctx.scratch / f"many-{files}"))
            lazyfs = Lazyfs(work, image)
            # Last in, first out: the mounts go, then the store's mount server.
            stack.callback(server_client.stop_server, server_client.server_dir(lazyfs.store.root))
            stack.callback(_recover, lazyfs)
            _first_mount(ctx, lazyfs, work, files)
            pair = [Contender(f"lazyfs fuse {files:,} files", True, _fuse(lazyfs, measure, per))]
            if files <= OVERLAY_UP_TO:
                pair.append(Contender(f"overlay {files:,} files", False, _overlay(lazyfs)))
            compare(pair, ctx.runs, ctx.log, f"density {files:,} files")
            log_medians(ctx, f"density {files:,} files", pair)
            contenders += pair
            if pair[0].samples:
                loaded += memory_contenders(lazyfs, files, per, ctx.log)
    return [
        Result("density-files", "many-files", contenders),
        Result("density-memory", "many-files", loaded),
    ]


def log_medians(ctx: Context, label: str, contenders: list[Contender]) -> None:
    """Each contender's median time and facts in the log (the JSON keeps the first run's facts)."""
    for contender in contenders:
        if contender.samples:
            facts = {
                key: median([sample.facts[key] for sample in contender.samples])
                for key in contender.samples[0].facts
            }
            seconds = median([sample.seconds for sample in contender.samples])
            shown = "".join(f"; {key} {value:,.0f}" for key, value in facts.items())
            ctx.log(f"{label}: {contender.name}: {seconds:.3f} s{shown}")


@contextlib.contextmanager
def _work(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    yield path


def _recover(lazyfs: Lazyfs) -> None:
    trio.run(lazyfs.provisioner.recover, [])


def _first_mount(ctx: Context, lazyfs: Lazyfs, work: Path, files: int) -> None:
    """Index the layers and keep the tree, by one mount without a deadline; its time logged.

    A provision's mount gives up 60 s after the layers are indexed, and
    merging a million entries (then keeping the tree both ways) takes about
    that on this machine: the first mount of such an image is made here.
    """
    point = work / "first-mount"
    point.mkdir(exist_ok=True)
    began = now()
    pid = lazy_mount.mount(
        lazyfs.manifest.layers,
        point,
        store=lazyfs.store.root,
        log_path=work / "first-mount.log",
        timeout=FIRST_MOUNT_TIMEOUT,
    )
    took = now() - began
    lazy_mount.unmount(point, pid=pid)
    ctx.log(f"density {files:,} files: first mount (index, merge, keep the tree): {took:.1f} s")


def _fuse(
    lazyfs: Lazyfs, measure: Callable[[int], float], per: Callable[..., int]
) -> Callable[[], Timing]:
    def once() -> Timing:
        settle()
        info, took = lazyfs.provision("fuse", writable=True)
        try:
            pid = lazy_mount.recorded_pid(rootfs_scratch(info.rootfs))
            if pid is None:
                raise OSError(f"no mount process recorded for {info.rootfs}")
            facts = {
                "pss_kib": per([pid], "Pss"),
                "rss_kib": per([pid], "Rss"),
                "cpu_ms": round(measure(pid)),
            }
        finally:
            lazyfs.destroy(info.container_id)
        return Timing(took, facts=facts)

    return once


def _overlay(lazyfs: Lazyfs) -> Callable[[], Timing]:
    def once() -> Timing:
        settle()
        info, took = lazyfs.provision("overlay", writable=True)
        lazyfs.destroy(info.container_id)
        return Timing(took)

    return once


# -- the images -------------------------------------------------------------------------


def many_files_image(cache: Path, files: int, log: Callable[[str], None]) -> BenchImage:
    """The image of ``files`` files, written into the cache once (``RECIPE``)."""
    name = f"many-{files}"
    images = cache / "images"
    layout = images / f"{name}:{TAG}"
    marker = images / f".{name}.done"
    image = BenchImage(name, TAG, images, layout, ("/bin/true",), "")
    if marker.is_file() and marker.read_text() == f"recipe {RECIPE}\n":
        return image
    log(f"building the image of {files:,} files in {LAYERS} layers")
    staged = images / f".{name}.building"
    with contextlib.suppress(FileNotFoundError):
        _remove(staged)
    (staged / "blobs" / "sha256").mkdir(parents=True)
    layers = [_layer(staged, files, number) for number in range(LAYERS)]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in layers]},
    }
    config_digest, config_size = _blob(staged, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
            for d, s in layers
        ],
    }
    manifest_digest, manifest_size = _blob(staged, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }
        ],
    }
    (staged / "index.json").write_text(json.dumps(index))
    (staged / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with contextlib.suppress(FileNotFoundError):
        _remove(layout)
    staged.rename(layout)
    marker.write_text(f"recipe {RECIPE}\n")
    return image


def _remove(path: Path) -> None:
    shutil.rmtree(path)


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest, len(data)


def _layer(layout: Path, files: int, number: int) -> tuple[str, int]:
    """Layer ``number`` of the image of ``files`` files, as an uncompressed tar blob."""
    staged = layout / "blobs" / f"layer-{number}.tar"
    with open(staged, "wb") as raw:
        hashing = _Hashing(raw)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _fill(tar, files, number)
    digest = "sha256:" + hashing.sha256.hexdigest()
    staged.rename(layout / "blobs" / "sha256" / digest[7:])
    return digest, hashing.size


def _fill(tar: tarfile.TarFile, files: int, number: int) -> None:
    per_layer = files // LAYERS
    directories = max(per_layer // PER_DIR, 1)
    if number == 0:
        for top in ("bin", "usr", "usr/lib"):
            _add(tar, top, tarfile.DIRTYPE)
    for directory in range(directories):
        where = f"usr/lib/l{number:02d}/pkg{directory:05d}"
        if directory == 0:
            _add(tar, f"usr/lib/l{number:02d}", tarfile.DIRTYPE)
        _add(tar, where, tarfile.DIRTYPE)
        for child in range(min(PER_DIR, per_layer - directory * PER_DIR)):
            data = b"x" * 64 if child % 8 == 0 else b""
            _add(tar, f"{where}/f{child:02d}", tarfile.REGTYPE, data)
    if number:
        below = f"usr/lib/l{number - 1:02d}/pkg00000"
        for child in range(10):  # rewritten
            _add(tar, f"{below}/f{child:02d}", tarfile.REGTYPE, b"new %d\n" % number)
        for child in range(10, 20):  # deleted
            _add(tar, f"{below}/.wh.f{child:02d}", tarfile.REGTYPE)


def _add(tar: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = MTIME
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


class _Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.out.write(view)
        self.size += len(view)
        return len(view)
