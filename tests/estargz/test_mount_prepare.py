"""The command that mounts remote eStargz layers indexes them while the mount process loads.

Real processes: a loopback ``docker-registry`` behind the recording proxy
(``tests.support.fault_proxy``), the cache daemon, and a mount process
exec'd by ``lazyfs.fs.mount``. What happened is read from the store, the
proxy's record and the kernel's view of the processes, never from a mock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cache.remote import RemoteOrigin
from lazyfs.fs import mount
from lazyfs.fs.mount_prepare import prepare_layers
from lazyfs.fs.mount_wire import READY, layer_arg
from lazyfs.index.stored_remote import unindexed_toc
from lazyfs.store.disk import Store
from lazyfs.tree.mapped import tree_kept
from providers.digest import Digest
from providers.manifest import OCI_LAYER_GZIP, Layer
from providers.mountinfo import is_mounted
from tests.support.cache_daemons import run_daemon, wait_for
from tests.support.elf_files import elf
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_fetch import many_files_blob, proxied, ranges_of, settled
from tests.support.lazy_images import TOC_ANNOTATION, push_estargz_image
from tests.support.registry_servers import Registry, run_registry

PROGRAM = os.urandom(1 << 20)
UPPER = write_estargz(
    [
        File("bin", type="dir", mode=0o755),
        File("bin/prog", PROGRAM, mode=0o755),
        File("etc", type="dir", mode=0o755),
        File("etc/conf", b"conf\n"),
    ]
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("prepare-registry")
    with run_registry(work, work / "storage") as running:
        yield running


def pushed_layers(registry: Registry, repository: str, blobs: list[Blob]) -> list[Layer]:
    pushed = push_estargz_image(registry.url, repository, "v1", blobs)
    return [
        Layer(Digest(digest), OCI_LAYER_GZIP, size, None, ((TOC_ANNOTATION, blob.toc_digest),))
        for digest, size, blob in zip(pushed.layers, pushed.sizes, blobs, strict=True)
    ]


def new_store(root: Path) -> Store:
    return Store(root)  # made with its directories


def compressed_offset(blob: Blob, name: str) -> int:
    toc = json.loads(blob.toc_json)
    return int(next(e["offset"] for e in toc["entries"] if e["name"] == name))


def test_the_caller_indexes_the_layers_keeps_their_tree_and_asks_for_the_program(
    registry: Registry, tmp_path: Path
) -> None:
    blobs = [many_files_blob(3), UPPER]
    layers = pushed_layers(registry, "lazy/prepare", blobs)
    store, cache = new_store(tmp_path / "store"), tmp_path / "cache"
    with proxied(registry) as (host, faults), run_daemon(tmp_path / "work", cache):
        origins = {layer.digest: RemoteOrigin(host, "lazy/prepare") for layer in layers}
        assert all(unindexed_toc(store.layers, layer) is not None for layer in layers)
        prepare_layers(store.root, layers, origins, cache, executable=["/nowhere", "/bin/prog"])
        settled(cache)
        # What the mount process finds: every index stored, and the tree it would merge kept.
        assert all(unindexed_toc(store.layers, layer) is None for layer in layers)
        assert tree_kept(store.layers, [layer.digest for layer in layers])
        # The program's bytes were asked for from the TOCs: no read of the tree asks them.
        at = compressed_offset(UPPER, "bin/prog")
        assert any(first <= at <= last for first, last in ranges_of(faults, layers[1].digest))


def test_a_layer_already_indexed_is_not_read_again(registry: Registry, tmp_path: Path) -> None:
    layers = pushed_layers(registry, "lazy/prepare-twice", [UPPER])
    store, cache = new_store(tmp_path / "store"), tmp_path / "cache"
    with proxied(registry) as (host, faults), run_daemon(tmp_path / "work", cache):
        origins = {layer.digest: RemoteOrigin(host, "lazy/prepare-twice") for layer in layers}
        prepare_layers(store.root, layers, origins, cache)
        settled(cache)
        with faults.lock:
            seen = len(faults.seen)
        prepare_layers(store.root, layers, origins, cache, executable=["/bin/prog"])
        with faults.lock:
            assert len(faults.seen) == seen


ELF = elf(b"/lib64/ld-linux-x86-64.so.2", [b"libfoo.so.1"], b"/opt/lib", dynamic_at=700 << 10)
LOADED = write_estargz(
    [
        File("bin", type="dir", mode=0o755),
        # The dynamic section in the program's third chunk, as a real one has it far in.
        File("bin/prog", ELF.data + os.urandom(64 << 10), mode=0o755),
        File("lib64", type="dir", mode=0o755),
        File("lib64/ld-linux-x86-64.so.2", os.urandom(300 << 10), mode=0o755),
        File("opt", type="dir", mode=0o755),
        File("opt/lib", type="dir", mode=0o755),
        File("opt/lib/libfoo.so.1", os.urandom(300 << 10)),
        File("opt/lib/libunused.so.1", os.urandom(300 << 10)),
    ],
    chunk_size=256 << 10,
)


def test_the_caller_asks_for_what_the_program_loads_once_its_headers_are_in(
    registry: Registry, tmp_path: Path
) -> None:
    layers = pushed_layers(registry, "lazy/prepare-libs", [LOADED])
    store, cache = new_store(tmp_path / "store"), tmp_path / "cache"
    with proxied(registry) as (host, faults), run_daemon(tmp_path / "work", cache):
        origins = {layer.digest: RemoteOrigin(host, "lazy/prepare-libs") for layer in layers}
        prepare_layers(store.root, layers, origins, cache, executable=["/bin/prog"])
        wanted = [
            compressed_offset(LOADED, "lib64/ld-linux-x86-64.so.2"),
            compressed_offset(LOADED, "opt/lib/libfoo.so.1"),
        ]

        def asked() -> bool:
            ranges = ranges_of(faults, layers[0].digest)
            return all(any(a <= at <= b for a, b in ranges) for at in wanted)

        # Asked from a thread of the caller once the program's chunks are in: no read asks.
        wait_for(asked, "the interpreter and the library to be asked for")
        settled(cache)
        # Past the 64 KiB cache chunk that may hold the needed library's end too.
        unused = compressed_offset(LOADED, "opt/lib/libunused.so.1") + (128 << 10)
        assert not any(a <= unused <= b for a, b in ranges_of(faults, layers[0].digest))


def waiting_for_caller(pid: int) -> bool:
    """Whether the mount process ``pid`` is blocked in read(2) of its ``--wait-fd`` (x86_64)."""
    try:
        # Until it has exec'd, its command line may still be its parent's.
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    if b"--wait-fd" not in argv or len(fields) < 2:
        return False
    fd = int(argv[argv.index(b"--wait-fd") + 1])
    return fields[0] == "0" and int(fields[1], 16) == fd


def test_an_execd_mount_process_reads_the_store_only_once_its_caller_is_done(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    layers = pushed_layers(registry, "lazy/prepare-wait", [UPPER])
    store, cache = new_store(tmp_path / "store"), tmp_path / "cache"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with proxied(registry) as (host, _), run_daemon(tmp_path / "work", cache):
        origin = RemoteOrigin(host, "lazy/prepare-wait")
        argv = ["--mountpoint", str(mountpoint), "--store", str(store.root)]
        argv += ["--cache-dir", str(cache), "--layer", layer_arg(layers[0], origin)]
        read_end, write_end = os.pipe()
        log_fd = os.open(tmp_path / "mount.log", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            pid, wait_end = mount._start(
                argv, store.root, ready_fd=write_end, log_fd=log_fd, caller_indexes=True
            )
        finally:
            os.close(log_fd)
            os.close(write_end)
        up = False
        try:
            wait_for(lambda: waiting_for_caller(pid), "the mount process to wait for its caller")
            # Waiting, it has read no TOC and indexed nothing, let alone mounted.
            assert unindexed_toc(store.layers, layers[0]) is not None
            assert not is_mounted(mountpoint)
            os.close(wait_end)
            wait_end = -1
            up = mount._read_answer(read_end, 60.0) == READY
            assert up
            assert (mountpoint / "etc" / "conf").read_bytes() == b"conf\n"
            assert unindexed_toc(store.layers, layers[0]) is None  # it indexed it itself
        finally:
            if wait_end >= 0:
                os.close(wait_end)
            os.close(read_end)
            if up:
                mount.unmount(mountpoint, pid=pid)
            else:  # killed, not left to mount once this test has gone
                mount._abandon(pid, mountpoint, 30.0)
