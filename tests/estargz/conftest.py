"""eStargz images made by the real tool: ``ctr-remote`` against a private containerd.

Session fixtures, started once:

- ``containerd``: Debian's containerd with its own root, state and socket
  (``tests.support.containerd.run_containerd``), stopped at the end.
- ``converted``: the rich image (``tests.support.images.RICH_LAYERS``) and a "big"
  image (a file of several 4 MiB chunks, files without their parent
  directories' entries) built with umoci, imported into that containerd and
  converted with ``ctr-remote image optimize --no-optimize --oci``; each
  source and result as an OCI layout.
- ``estargz_registry``: a loopback ``docker-registry`` holding the
  converted images as ``NAME:esgz``, pushed by containerd.

Without the tools or root these skip, which fails under CI (tests.ci_skips).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.containerd import (
    Containerd,
    export_layout,
    import_archive,
    missing_tools,
    push,
    run_containerd,
    to_estargz,
)
from tests.support.estargz_images import BIG_LAYERS, ESGZ_TAG, SOURCE_TAG, Converted
from tests.support.registry_servers import Registry, run_registry


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    with run_containerd(tmp_path_factory.mktemp("containerd")) as running:
        yield running


def _convert(
    containerd: Containerd, name: str, layers: list[list[images.Entry]], work: Path,
    config: images.ImageConfig | None = None,
) -> Converted:  # fmt: skip
    source = images.build_oci_image(work / "source", layers, SOURCE_TAG, config)
    base = f"localhost/lazyfs/{name}"
    archive = images.to_oci_archive(source, SOURCE_TAG, work / "source.tar", f"{base}:{SOURCE_TAG}")
    import_archive(containerd, archive)
    to_estargz(containerd, f"{base}:{SOURCE_TAG}", f"{base}:{ESGZ_TAG}")
    layout = export_layout(containerd, f"{base}:{ESGZ_TAG}", work / "estargz")
    return Converted(name, source, layout, f"{base}:{ESGZ_TAG}")


@pytest.fixture(scope="session")
def converted(
    containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Converted]:
    """The rich and the big image, as sources and as eStargz, by name."""
    return {
        "rich": _convert(containerd, "rich", images.RICH_LAYERS, tmp_path_factory.mktemp("rich"),
                         images.RICH_CONFIG),
        "big": _convert(containerd, "big", BIG_LAYERS, tmp_path_factory.mktemp("big")),
    }  # fmt: skip


@pytest.fixture(scope="session")
def estargz_registry(
    containerd: Containerd,
    converted: dict[str, Converted],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Registry]:
    """A loopback registry holding every converted image as ``NAME:esgz``."""
    work = tmp_path_factory.mktemp("esgz-registry")
    with run_registry(work, work / "storage") as registry:
        for image in converted.values():
            push(containerd, image.ref, f"{registry.host}/{image.name}:{ESGZ_TAG}")
        yield registry
