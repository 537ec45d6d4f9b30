"""One machine's cache daemon shares what it fetched: between containers, and between images.

- Twenty containers provisioned at once from one eStargz image, each reading
  the same files, move the image's needed bytes over the link once: at most
  1.05x what one container alone moves. Bytes are counted at a proxy in
  front of the registry (``tests.support.counting_proxy``), everything that
  crossed it: manifests, configs, tables of contents and chunks.
- Two images whose bottom layer is the same blob share its cached bytes: the
  second image's containers fetch nothing of it.

Real processes throughout: ``lazyfs provision --backend fuse`` (twenty at
once), the daemon the first mount starts, FUSE mounts, ``docker-registry``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cache_daemons import daemon_status
from tests.support.containerd import Containerd
from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.estargz_workloads import (
    BASE,
    BASE_FILES,
    TOP_ONE,
    TOP_ONE_FILES,
    TOP_TWO,
    TOP_TWO_FILES,
    Published,
    publish,
    sha,
)
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import machine
from tests.support.registry_servers import Registry, run_registry

CONTAINERS = 20
BOUND = 1.05


@pytest.fixture(scope="module")
def origin(
    containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Registry, dict[str, Published]]]:
    """A loopback registry with two images sharing their base layer."""
    need_fuse()
    work = tmp_path_factory.mktemp("sharing-registry")
    with run_registry(work, work / "storage") as registry:
        made = {
            name: publish(containerd, name, layers, work / name, registry.host)
            for name, layers in (("one", [BASE, TOP_ONE]), ("two", [BASE, TOP_TWO]))
        }  # fmt: skip
        yield registry, made


def read_files(rootfs: Path, files: dict[str, bytes]) -> dict[str, bool]:
    """Each file read whole through the mount: whether it had the image's bytes."""
    return {path: sha((rootfs / path).read_bytes()) == sha(data) for path, data in files.items()}


def all_right(files: dict[str, bytes]) -> dict[str, bool]:
    return dict.fromkeys(files, True)


def _bytes_moved(
    registry: Registry, image: Published, work: Path, containers: int
) -> tuple[int, int]:
    """(all bytes, layer bytes) over the link for ``containers`` provisioned at once on a
    fresh machine, each reading the base layer's files, all at once."""
    proxy = CountingProxy()
    with run_counting_proxy(registry.url, proxy) as host, machine(work) as m:
        names = [f"c{i:02d}" for i in range(containers)]
        rootfses = m.provision_at_once(names, image.reference(host))
        with ThreadPoolExecutor(containers) as pool:
            read = list(pool.map(lambda r: read_files(r, BASE_FILES), rootfses))
        assert read == [all_right(BASE_FILES)] * containers
        found = daemon_status(m.cache_dir)
        assert found is not None and found.fetches > 0  # one daemon, started by a mount
        return proxy.total_bytes(), proxy.blob_bytes(image.layers)


def test_twenty_containers_at_once_move_the_needed_bytes_once(
    origin: tuple[Registry, dict[str, Published]], tmp_path: Path
) -> None:
    registry, images = origin
    image = images["one"]
    one_total, one_layers = _bytes_moved(registry, image, tmp_path / "one", 1)
    # The files read are the base layer's: their bytes crossed, the top layer's did not.
    assert one_layers >= sum(map(len, BASE_FILES.values()))
    assert one_layers < image.layer_size(0) + image.layer_size(1)

    many_total, many_layers = _bytes_moved(registry, image, tmp_path / "many", CONTAINERS)
    assert many_layers <= BOUND * one_layers, (many_layers, one_layers)
    assert many_total <= BOUND * one_total, (many_total, one_total)


def test_two_images_sharing_a_base_layer_share_its_cached_bytes(
    origin: tuple[Registry, dict[str, Published]], tmp_path: Path
) -> None:
    registry, images = origin
    one, two = images["one"], images["two"]
    # ctr-remote made the same eStargz blob of the same base layer for both.
    assert one.layers[0] == two.layers[0] and one.layers[1] != two.layers[1]
    base = one.layers[0]
    proxy = CountingProxy()
    with run_counting_proxy(registry.url, proxy) as host, machine(tmp_path / "work") as m:
        first = m.provision("one", one.reference(host))
        assert read_files(first, {**BASE_FILES, **TOP_ONE_FILES}) == all_right(
            {**BASE_FILES, **TOP_ONE_FILES}
        )
        assert proxy.blob_bytes([base]) >= sum(map(len, BASE_FILES.values()))
        cached = daemon_status(m.cache_dir)
        assert cached is not None

        since = proxy.mark()
        second = m.provision("two", two.reference(host))
        assert read_files(second, {**BASE_FILES, **TOP_TWO_FILES}) == all_right(
            {**BASE_FILES, **TOP_TWO_FILES}
        )
        # The base came from the cache; only image two's own layer crossed the link.
        assert proxy.blob_requests([base], since) == 0
        assert proxy.blob_bytes([two.layers[1]], since) > 0
        # One copy of the base on disk: the cache grew by image two's own layer only.
        grown = daemon_status(m.cache_dir)
        assert grown is not None
        assert grown.used_bytes - cached.used_bytes < sum(map(len, BASE_FILES.values()))
