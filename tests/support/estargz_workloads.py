"""eStargz images for the lazy fault and sharing tests, made by ctr-remote and pushed.

``WORKLOAD`` is an image of many small incompressible files in two layers:
``warm/`` (the bottom layer, which tests read first so its bytes are cached)
and ``cold/`` (the top layer, left unread until the test wants misses). Files
are 192 KiB so that one read of a file never spans a whole cache chunk and
the layers are several cache chunks long: a layer's table of contents, at its
end, never shares a cache chunk with the first files' bytes.

``BASE`` with ``TOP_ONE`` and ``TOP_TWO`` make two images that share their
bottom layer (``shared_base_images``).

``publish`` converts an image with ``ctr-remote image optimize --no-optimize
--oci`` in the private containerd (``tests.support.containerd``) and pushes
it to a loopback registry; ``toc_entries`` reads a converted layer's table of
contents by hand (tarfile over its gzip members), so tests can aim at one
file's compressed bytes without asking lazyfs where they are.
"""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import images
from tests.support.containerd import Containerd, export_layout, import_archive, push, to_estargz

SOURCE_TAG = "src"
ESGZ_TAG = "esgz"
FILE_SIZE = 192 << 10
_random = random.Random(2026)


def _files(prefix: str, count: int, size: int = FILE_SIZE) -> dict[str, bytes]:
    return {f"{prefix}/f{i:02d}": _random.randbytes(size) for i in range(count)}


WARM_FILES = _files("warm", 24)  # 4.5 MiB: bottom layer
COLD_FILES = _files("cold", 24)  # 4.5 MiB: top layer
WORKLOAD_FILES = {**WARM_FILES, **COLD_FILES}

# Top layers of several cache chunks too: reading only the base leaves most of them unfetched.
BASE_FILES = _files("base", 24)
TOP_ONE_FILES = _files("one", 12)
TOP_TWO_FILES = _files("two", 12)


def _layer(files: dict[str, bytes]) -> list[images.Entry]:
    directories = sorted({path.rsplit("/", 1)[0] for path in files})
    return [
        *(images.Entry(d, "dir", mode=0o755) for d in directories),
        *(images.Entry(path, data=data) for path, data in sorted(files.items())),
    ]


WORKLOAD = [_layer(WARM_FILES), _layer(COLD_FILES)]
BASE = _layer(BASE_FILES)
TOP_ONE = _layer(TOP_ONE_FILES)
TOP_TWO = _layer(TOP_TWO_FILES)


@dataclass(frozen=True)
class Published:
    """An eStargz image in a registry: ``name`` (repository, tag ESGZ_TAG), its OCI
    layout, and its layers' digests, bottom first."""

    name: str
    layout: Path
    layers: tuple[str, ...]

    def layer_blob(self, index: int) -> Path:
        algorithm, hexpart = self.layers[index].split(":")
        return self.layout / "blobs" / algorithm / hexpart

    def layer_size(self, index: int) -> int:
        return self.layer_blob(index).stat().st_size

    def reference(self, host: str) -> str:
        """The image as ``lazyfs`` takes it, at registry (or proxy) ``host``."""
        return f"docker:{host}/{self.name}:{ESGZ_TAG}"


def publish(
    containerd: Containerd, name: str, layers: list[list[images.Entry]], work: Path, host: str
) -> Published:
    """Build ``layers`` with umoci, convert to eStargz, push to ``host`` as ``name:esgz``."""
    source = images.build_oci_image(work / "source", layers, SOURCE_TAG)
    base = f"localhost/lazyfs-lazy/{name}"
    archive = images.to_oci_archive(source, SOURCE_TAG, work / "source.tar", f"{base}:{SOURCE_TAG}")
    import_archive(containerd, archive)
    to_estargz(containerd, f"{base}:{SOURCE_TAG}", f"{base}:{ESGZ_TAG}")
    layout = export_layout(containerd, f"{base}:{ESGZ_TAG}", work / "estargz")
    push(containerd, f"{base}:{ESGZ_TAG}", f"{host}/{name}:{ESGZ_TAG}")
    return Published(name, layout, tuple(_layer_digests(layout)))


def _layer_digests(layout: Path) -> list[str]:
    def blob(digest: str) -> Any:
        algorithm, hexpart = digest.split(":")
        return json.loads((layout / "blobs" / algorithm / hexpart).read_text())

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    if "manifests" in manifest:  # an index of one platform's manifest
        manifest = blob(manifest["manifests"][0]["digest"])
    return [layer["digest"] for layer in manifest["layers"]]


def toc_entries(blob: Path) -> list[dict[str, Any]]:
    """The ``entries`` of an eStargz blob's ``stargz.index.json``, read with tarfile."""
    with tarfile.open(blob, "r:gz") as tar:
        member = tar.extractfile("stargz.index.json")
        assert member is not None
        toc: dict[str, Any] = json.load(member)
    entries: list[dict[str, Any]] = toc["entries"]
    return entries


def file_span(blob: Path, path: str) -> tuple[int, int]:
    """Blob bytes [start, end) holding the compressed first chunk of file ``path``.

    From the TOC: the entry's ``offset`` is where its gzip member starts, and
    the next entry with an offset starts after it ends.
    """
    offsets = sorted({e["offset"] for e in toc_entries(blob) if e.get("offset")})
    start = next(e["offset"] for e in toc_entries(blob) if e["name"] == path and e.get("offset"))
    later = [o for o in offsets if o > start]
    assert later, f"{path} is the last member of {blob}"
    return start, later[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
