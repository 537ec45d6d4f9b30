"""A lazily started image is found in the store while its layers are still remote.

One machine publishes the index of a one-layer gzip image (``lazyfs index
push``); a second, with ``--trust_published_indexes`` and no background
fetch, reaches the registry through a counting proxy and provisions it
with the fuse backend: the layer stays remote, read by range.  While its
blob is still not in the store:

- a second start of the image takes the stored record: no manifest (nor
  anything else of the image's resolve) is asked of the registry;
- with the registry gone, the image still starts, and a file read before
  reads the same from the cache (DESIGN.md §4: EIO only for bytes never
  fetched).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.fuse_mounts import need_fuse
from tests.support.images import Entry, build_oci_image
from tests.support.lazy_machine import Machine, machine
from tests.support.registry_servers import run_registry, skopeo_push

pytestmark = pytest.mark.integration

TRUST = "--trust_published_indexes"
GREETING = b"hello from the first chunk\n"


def _provision(second: Machine, container: str, image: str) -> dict[str, object]:
    done = second.run("provision", container, f"docker:{image}", "--backend", "fuse")
    info: dict[str, object] = json.loads(done.stdout)
    second.rootfses[container] = Path(str(info["rootfs"]))
    return info


def _store_blobs(work: Path) -> set[str]:
    root = work / "store" / "docker" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir()} if root.is_dir() else set()


def test_a_lazy_image_is_found_stored_and_starts_with_its_registry_gone(tmp_path: Path) -> None:
    need_fuse()
    # Noise does not compress: a layer of many cache chunks, of which a read of the small
    # file before it fetches the first few only, so the blob is never complete here.
    noise = random.Random(7).randbytes(2_000_000)
    layout = build_oci_image(tmp_path / "image", [[
        Entry("etc", "dir"), Entry("etc/greeting", data=GREETING),
        Entry("usr", "dir"), Entry("usr/lib", "dir"), Entry("usr/lib/blob", data=noise),
    ]])  # fmt: skip
    proxy = CountingProxy()
    with machine(tmp_path / "second", TRUST) as second:
        with (
            run_registry(tmp_path / "registry", tmp_path / "storage") as registry,
            run_counting_proxy(registry.url, proxy) as host,
        ):
            skopeo_push(layout, "latest", f"{registry.host}/solo:latest", "oci")
            with machine(tmp_path / "first") as first:
                first.run("index", "push", f"{registry.host}/solo:latest")
            image = f"{host}/solo:latest"
            info = _provision(second, "a", image)
            layers = [str(d) for d in info["remote_layers"]]  # type: ignore[attr-defined]
            assert len(layers) == 1, info
            assert (second.rootfses["a"] / "etc" / "greeting").read_bytes() == GREETING
            assert proxy.select(lambda e: "/manifests/" in e.path), "the first start resolved"
            since = proxy.mark()
            info = _provision(second, "b", image)
            assert info["remote_layers"] == layers, info
            assert not set(layers) & _store_blobs(second.work), "the layer came whole"
            asked = [f"{e.method} {e.path}" for e in proxy.select(since=since)]
            assert not [line for line in asked if "/manifests/" in line], asked
        # The registry and the proxy are gone: what was read is in the cache.
        info = _provision(second, "c", image)
        assert info["remote_layers"] == layers, info
        assert (second.rootfses["c"] / "etc" / "greeting").read_bytes() == GREETING
