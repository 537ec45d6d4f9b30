"""Image GC keeps the trees of a lazy mount through an index published beside its image.

A second machine provisions the rich image with ``--trust_published_indexes``:
every layer stays remote, indexed from the index fetched from the registry
(``lazyfs.index.published``), and the mount keeps its merged tree
(``trees/<chain>``) and packed tree (``packed-trees/``) in the store.  A GC
pass while the container runs must take neither: the next mount of the
image loads them, merging nothing.  Once background fetch has made the
layers local, the next start mounts them from indexes of their own and
keeps a tree of that source, which GC keeps as well.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import machine
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry

TRUST = "--trust_published_indexes"


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


def kept_trees(work: Path) -> list[Path]:
    """The merged and packed trees kept in ``work``'s store, by path."""
    layers = work / "store" / "docker" / "layers"
    return sorted([*layers.glob("*/trees/*"), *layers.glob("*/packed-trees/*")])


def test_gc_keeps_the_trees_of_a_running_lazy_published_mount(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    image = f"{registry.host}/rich:oci"
    with machine(tmp_path / "first") as first:
        first.provision("whole", f"docker:{image}")
        first.run("index", "push", image)
    with machine(tmp_path / "second", TRUST) as second:
        done = second.run("provision", "lazy", f"docker:{image}", "--backend", "fuse")
        info = json.loads(done.stdout)
        second.rootfses["lazy"] = Path(info["rootfs"])
        assert info["remote_layers"], info  # read through the published index
        trees = kept_trees(second.work)
        assert [p.parent.name for p in trees] == ["packed-trees", "trees"], trees

        report = json.loads(second.run("gc").stdout)

        assert kept_trees(second.work) == trees, report
        assert not [p for p in report["stale"] if "trees" in p], report


def test_once_background_fetch_made_the_layers_local_gc_keeps_the_local_tree(
    registry: Registry, tmp_path: Path
) -> None:
    """The next start mounts them local and keeps its tree (another source), which GC keeps too."""
    need_fuse()
    image = f"{registry.host}/rich:oci"
    with machine(tmp_path / "first") as first:
        first.provision("whole", f"docker:{image}")
        first.run("index", "push", image)
    with machine(tmp_path / "second", TRUST, background_fetch=True) as second:
        done = second.run("provision", "lazy", f"docker:{image}", "--backend", "fuse")
        info = json.loads(done.stdout)
        second.rootfses["lazy"] = Path(info["rootfs"])
        layers = [str(d) for d in info["remote_layers"]]
        blobs = second.work / "store" / "docker" / "blobs" / "sha256"
        deadline = time.monotonic() + 60
        while not all((blobs / d.partition(":")[2]).is_file() for d in layers):
            assert time.monotonic() < deadline, "background fetch did not make the layers local"
            time.sleep(0.1)  # polling the adoption, a detached process
        again = json.loads(
            second.run("provision", "local", f"docker:{image}", "--backend", "fuse").stdout
        )
        second.rootfses["local"] = Path(again["rootfs"])
        assert again["remote_layers"] == [], again
        trees = kept_trees(second.work)
        # One marshal file per chain (the local one now), a packed file per source.
        assert [p.parent.name for p in trees] == ["packed-trees"] * 2 + ["trees"], trees

        report = json.loads(second.run("gc").stdout)

        assert kept_trees(second.work) == trees, report
