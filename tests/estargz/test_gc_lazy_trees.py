"""Image GC keeps the trees of a lazy mount of a registry eStargz image.

Every layer of ``rich:esgz`` stays remote, indexed from its TOC
(``lazyfs.index.estargz_store``), and the mount keeps its merged tree
(``trees/<chain>``) and packed tree (``packed-trees/``) in the store.  A GC
pass while the container runs must take neither.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import machine
from tests.support.registry_servers import Registry


def kept_trees(work: Path) -> list[Path]:
    """The merged and packed trees kept in ``work``'s store, by path."""
    layers = work / "store" / "docker" / "layers"
    return sorted([*layers.glob("*/trees/*"), *layers.glob("*/packed-trees/*")])


def test_gc_keeps_the_trees_of_a_running_lazy_estargz_mount(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    with machine(tmp_path / "work") as lazy:
        rootfs = lazy.provision("c1", f"docker:{estargz_registry.host}/rich:esgz")
        assert (rootfs / "etc/hostname").read_bytes() == b"rich-top\n"
        trees = kept_trees(lazy.work)
        assert [p.parent.name for p in trees] == ["packed-trees", "trees"], trees

        report = json.loads(lazy.run("gc").stdout)

        assert kept_trees(lazy.work) == trees, report
        assert not [p for p in report["stale"] if "trees" in p], report
