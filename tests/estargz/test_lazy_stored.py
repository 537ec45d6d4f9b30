"""A lazily started eStargz image is found in the store while its layers are still remote.

The workload image (``tests.support.estargz_workloads``) from a loopback
registry, through a counting proxy, with no background fetch: a first
start builds each layer's index from its TOC and reads the warm files.
While the layers' blobs are still not in the store, a second start takes
the stored record once the registry says its tag still names it (the
manifest asked for, not the config), and with the registry stopped a
third still starts, with a warning, and reads the warm files from the
daemon's cache.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.containerd import Containerd
from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.estargz_workloads import WARM_FILES, WORKLOAD, WORKLOAD_FILES, publish, sha
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import machine
from tests.support.registry_servers import run_registry

WARM = sorted(WARM_FILES)


def _store_blobs(work: Path) -> set[str]:
    root = work / "store" / "docker" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir()} if root.is_dir() else set()


def _read(rootfs: Path) -> dict[str, str]:
    return {p: sha((rootfs / p).read_bytes()) for p in WARM}


def test_a_lazy_estargz_image_is_found_stored_and_starts_with_its_registry_gone(
    containerd: Containerd, tmp_path: Path
) -> None:
    need_fuse()
    expected = {p: sha(WORKLOAD_FILES[p]) for p in WARM}
    proxy = CountingProxy()
    with machine(tmp_path / "work") as m:
        with (
            run_registry(tmp_path / "registry", tmp_path / "storage") as registry,
            run_counting_proxy(registry.url, proxy) as host,
        ):
            image = publish(containerd, "stored", WORKLOAD, tmp_path / "image", registry.host)
            a = m.provision("a", image.reference(host))
            assert _read(a) == expected
            since = proxy.mark()
            m.provision("b", image.reference(host))
            assert set(image.layers) - _store_blobs(m.work), "every layer came whole"
            asked = [f"{e.method} {e.path}" for e in proxy.select(since=since) if not e.range]
            assert len(asked) == 1 and "/manifests/" in asked[0], asked
        # The registry and the proxy are gone: c never read the warm files, its
        # bytes come from the daemon's cache files.
        c = m.provision("c", image.reference(host))
        assert _read(c) == expected
