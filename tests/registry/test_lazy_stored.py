"""A lazily started image is found in the store while its layers are still remote.

One machine publishes the index of a one-layer gzip image (``lazyfs index
push``); a second, with ``--trust_published_indexes`` and no background
fetch, reaches the registry through a counting proxy and provisions it
with the fuse backend: the layer stays remote, read by range.  While its
blob is still not in the store:

- a second start of the image takes the stored record once the registry
  says its tag still names it: one request, a HEAD of the manifest (which
  Docker Hub counts as no pull), and nothing else of a resolve (config,
  referrers, indexes);
- a tag moved to another image is noticed: the next start mounts the new one,
  having asked once (not again after taking the pull lock) before resolving;
- with the registry gone, the image still starts, with a warning, and a
  file read before reads the same from the cache (DESIGN.md §4: EIO only
  for bytes never fetched).
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


def _provision(second: Machine, container: str, image: str) -> tuple[dict[str, object], str]:
    done = second.run("provision", container, f"docker:{image}", "--backend", "fuse")
    info: dict[str, object] = json.loads(done.stdout)
    second.rootfses[container] = Path(str(info["rootfs"]))
    return info, done.stderr


def _store_blobs(work: Path) -> set[str]:
    root = work / "store" / "docker" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir()} if root.is_dir() else set()


def _image(at: Path, greeting: bytes) -> Path:
    # Noise does not compress: a layer of many cache chunks, of which a read of the small
    # file before it fetches the first few only, so the blob is never complete here.
    noise = random.Random(7).randbytes(2_000_000)
    return build_oci_image(at, [[
        Entry("etc", "dir"), Entry("etc/greeting", data=greeting),
        Entry("usr", "dir"), Entry("usr/lib", "dir"), Entry("usr/lib/blob", data=noise),
    ]])  # fmt: skip


def test_a_lazy_image_is_found_stored_while_its_tag_names_it(tmp_path: Path) -> None:
    need_fuse()
    proxy = CountingProxy()
    with machine(tmp_path / "second", TRUST) as second:
        with (
            run_registry(tmp_path / "registry", tmp_path / "storage") as registry,
            run_counting_proxy(registry.url, proxy) as host,
        ):
            skopeo_push(_image(tmp_path / "one", GREETING), "latest",
                        f"{registry.host}/solo:latest", "oci")  # fmt: skip
            with machine(tmp_path / "first") as first:
                first.run("index", "push", f"{registry.host}/solo:latest")
            image = f"{host}/solo:latest"
            info, _ = _provision(second, "a", image)
            layers = [str(d) for d in info["remote_layers"]]  # type: ignore[attr-defined]
            assert len(layers) == 1, info
            assert (second.rootfses["a"] / "etc" / "greeting").read_bytes() == GREETING
            since = proxy.mark()
            info, _ = _provision(second, "b", image)
            assert info["remote_layers"] == layers, info
            assert not set(layers) & _store_blobs(second.work), "the layer came whole"
            asked = [f"{e.method} {e.path}" for e in proxy.select(since=since)]
            assert asked == ["HEAD /v2/solo/manifests/latest"], asked

            # The tag moves to another image (its index pushed too): the next start
            # mounts that one, not the stored one.
            moved = b"hello from the moved tag\n"
            skopeo_push(_image(tmp_path / "two", moved), "latest",
                        f"{registry.host}/solo:latest", "oci")  # fmt: skip
            with machine(tmp_path / "third") as third:
                third.run("index", "push", f"{registry.host}/solo:latest")
            since = proxy.mark()
            info, _ = _provision(second, "c", image)
            assert info["remote_layers"] != layers, info
            # Asked once whether the tag names the stored image (not again once the
            # pull lock is had), then resolved.
            asked = [f"{e.method} {e.path}" for e in proxy.select(since=since)]
            assert asked.count("HEAD /v2/solo/manifests/latest") == 1, asked
            assert (second.rootfses["c"] / "etc" / "greeting").read_bytes() == moved
        # The registry and the proxy are gone: what was read is in the cache.
        info, stderr = _provision(second, "d", image)
        assert (second.rootfses["d"] / "etc" / "greeting").read_bytes() == moved
        assert "starting the image stored here" in stderr, stderr
        assert stderr.count("\n") == 1, stderr
