"""Fixtures of the backend conformance suite: the variant a test runs, and its images.

The variants themselves and the helpers that provision and compare live in
``tests.support.backend_variants``.  Every image of
``tests.support.backend_cases.CASES`` is built once per session as a
docker-archive in one image directory, next to what ``umoci unpack`` makes
of it; ``lazy_cases`` converts them to eStargz with ctr-remote for the
fuse-lazy variant (``test_fuse_lazy``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from backends.overlay import overlay_usable
from tests.support import containerd, fuse_paths, images
from tests.support.backend_cases import CASES
from tests.support.backend_variants import CaseImages, Variant, fuse_usable
from tests.support.lazy_cases import LazyCases
from tests.support.registry_servers import run_registry


@pytest.fixture(scope="session")
def overlay_ok(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return overlay_usable(tmp_path_factory.mktemp("probe"))


@pytest.fixture
def variant(
    request: pytest.FixtureRequest, overlay_ok: bool, monkeypatch: pytest.MonkeyPatch
) -> Variant:
    """The variant the test is parametrized with, skipped where it cannot run."""
    chosen: Variant = request.param
    if os.geteuid() != 0:
        pytest.skip("backends need root")
    if chosen.needs_overlay and not overlay_ok:
        pytest.skip("overlayfs is not usable here")
    if chosen.needs_fuse and not fuse_usable():
        pytest.skip("FUSE is not usable here (/dev/fuse, fusermount3)")
    if chosen.fuse_path is not None:
        fuse_paths.choose(chosen.fuse_path, monkeypatch.setenv)
    return chosen


@pytest.fixture(scope="session")
def case_images(tmp_path_factory: pytest.TempPathFactory) -> CaseImages:
    missing = [tool for tool in ("umoci", "skopeo") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    work = tmp_path_factory.mktemp("cases")
    directory = work / "images"
    references, layouts = {}, {}
    for name, layers in CASES.items():
        layout = images.build_oci_image(work / name, layers, "latest")
        images.to_docker_archive(layout, "latest", directory / f"{name}:latest.tar", name)
        references[name] = images.umoci_unpack(layout, "latest", work / name / "bundle")
        layouts[name] = layout
    return CaseImages(directory, references, layouts)


@pytest.fixture(scope="session")
def lazy_cases(
    case_images: CaseImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LazyCases]:
    """What the fuse-lazy variant reads: ``ctr-remote image optimize --no-optimize --oci``
    of each case image, in a registry, as a user's eStargz image would be."""
    missing = containerd.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    work = tmp_path_factory.mktemp("lazy-cases")
    with run_registry(work / "registry", work / "registry" / "storage") as registry:
        refs = {}
        with containerd.run_containerd(work / "containerd") as running:
            for name, layout in case_images.layouts.items():
                source = f"localhost/lazyfs/{name}:src"
                archive = images.to_oci_archive(layout, "latest", work / f"{name}.tar", source)
                containerd.import_archive(running, archive)
                converted = f"localhost/lazyfs/{name}:esgz"
                containerd.to_estargz(running, source, converted)
                containerd.push(running, converted, f"{registry.host}/{name}:esgz")
                refs[name] = f"docker:{registry.host}/{name}:esgz"
        yield LazyCases(registry, refs)
