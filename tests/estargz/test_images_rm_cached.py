"""``images rm`` and ``images prune`` free the cache's chunks of the layers they remove.

A lazy mount of ``rich:esgz`` reads its files through the cache daemon; the
chunks of its layers' blobs stay in the cache directory after the rootfs is
destroyed. Removing the image removes its layers from the store and, through
the daemon or, when none runs, from the directory, their chunks too, counted
in what the command says it freed. A layer another image still has keeps its
chunks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazyfs.gc.uses import mounted_layers
from lazyfs.progress import human_size
from tests.support.cache_daemons import kill_recorded, wait_for
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import Machine, machine, mount_processes_under
from tests.support.registry_servers import Registry


def cached_bytes(cache_dir: Path, digests: list[str]) -> int:
    """What ``du`` counts of the chunk files of ``digests`` in the cache directory."""
    total = 0
    for chunks in cache_dir.glob("chunks-*"):
        for digest in digests:
            blob = chunks / digest.replace(":", "/")
            if blob.is_dir():
                total += sum(entry.stat().st_blocks * 512 for entry in os.scandir(blob))
    return total


def provision_and_read(lazy: Machine, container: str, image: str) -> list[str]:
    """A lazy fuse rootfs of ``image``, every file of it read; its remote layers."""
    info = json.loads(lazy.run("provision", container, image, "--backend", "fuse").stdout)
    rootfs = lazy.rootfses[container] = Path(info["rootfs"])
    for top, _, names in os.walk(rootfs):
        for name in names:
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                path.read_bytes()
    assert info["remote_layers"], info
    return list(info["remote_layers"])


def destroy(lazy: Machine, *containers: str) -> None:
    for container in containers:
        lazy.run("destroy", container)
        del lazy.rootfses[container]
    # Image GC counts a mount process, and the process adopting the image's layers
    # (``lazyfs.provision.adopt``: it ends once no layer is fetched), as users until they end.
    wait_for(lambda: not mount_processes_under(lazy.work), "the mount processes to end")
    store = lazy.work / "store" / "docker"
    wait_for(lambda: not mounted_layers(store), "the store's processes to end", timeout=120)


def listed(lazy: Machine, digests: list[str]) -> list[dict[str, object]]:
    """The rows of ``lazyfs cache --json`` for ``digests``."""
    report = json.loads(lazy.run("cache", "--json").stdout)
    return [row for row in report["layers"] if row["digest"] in digests]


@pytest.mark.parametrize("daemon", ["running", "none"])
def test_images_rm_frees_the_cached_chunks_of_the_layers_it_removes(
    estargz_registry: Registry, tmp_path: Path, daemon: str
) -> None:
    need_fuse()
    host = estargz_registry.host
    with machine(tmp_path / "work") as lazy:
        if daemon == "running":
            lazy.start_daemon()
        layers = provision_and_read(lazy, "c1", f"docker:{host}/rich:esgz")
        images = json.loads(lazy.run("images", "--json").stdout)
        [digest] = {image["digest"] for image in images}
        # The same image by digest: another record, which has the same layers.
        provision_and_read(lazy, "c2", f"docker:{host}/rich@{digest}")
        destroy(lazy, "c1", "c2")
        before = cached_bytes(lazy.cache_dir, layers)
        assert before > 0
        if daemon == "none":
            kill_recorded(lazy.cache_dir)  # the daemon the mounts started

        kept = lazy.run("images", "rm", f"{host}/rich:esgz")
        assert "removed layer" not in kept.stdout, kept.stdout
        assert cached_bytes(lazy.cache_dir, layers) == before  # the digest's image has them

        done = lazy.run("images", "rm", f"{host}/rich@{digest}")
        lines = done.stdout.splitlines()
        assert len([line for line in lines if line.startswith("removed layer")]) == len(layers)
        assert cached_bytes(lazy.cache_dir, layers) == 0
        assert not listed(lazy, layers)
        assert lines[-1].startswith("freed "), lines
        assert lines[-1].endswith(f" ({human_size(before)} of it cached chunks)"), lines
        assert done.stderr == "", done.stderr


def test_images_prune_frees_the_cached_chunks_and_verdicts_of_what_it_removes(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    with machine(tmp_path / "work", background_fetch=True) as lazy:
        lazy.start_daemon()
        layers = provision_and_read(lazy, "c1", f"docker:{estargz_registry.host}/rich:esgz")

        def complete() -> bool:
            rows = listed(lazy, layers)
            return len(rows) == len(layers) and all(r["state"] == "complete" for r in rows)

        # Whole and verified: every chunk of them cached, and a verdict on each.
        wait_for(complete, "the background fetch to complete the layers", timeout=120)
        destroy(lazy, "c1")
        before = cached_bytes(lazy.cache_dir, layers)
        assert before > 0

        done = lazy.run("images", "prune")

        assert cached_bytes(lazy.cache_dir, layers) == 0
        assert not listed(lazy, layers)  # neither chunks nor a verdict of complete
        last = done.stdout.splitlines()[-1]
        assert last.endswith(f" ({human_size(before)} of it cached chunks)"), done.stdout


def test_a_gc_pass_frees_the_cached_chunks_of_the_layers_it_removes(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    with machine(tmp_path / "work") as lazy:
        layers = provision_and_read(lazy, "c1", f"docker:{estargz_registry.host}/rich:esgz")
        destroy(lazy, "c1")
        before = cached_bytes(lazy.cache_dir, layers)
        assert before > 0

        # A headroom of 100% is never reached: the pass removes all that nothing uses.
        done = lazy.run("--image_gc_config", '{"image_disk_headroom": 1}', "gc", check=False)

        report = json.loads(done.stdout)
        assert sorted(layer["digest"] for layer in report["removed_layers"]) == sorted(layers)
        assert report["cache_freed"] == before
        assert cached_bytes(lazy.cache_dir, layers) == 0
