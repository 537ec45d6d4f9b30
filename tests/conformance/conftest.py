"""Fixtures of the backend conformance suite: the variant a test runs, and its images.

The variants themselves and the helpers that provision and compare live in
``tests.support.backend_variants``.  Every image of
``tests.support.backend_cases.CASES`` is built once per session as a
docker-archive in one image directory, next to what ``umoci unpack`` makes
of it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from backends.overlay import overlay_usable
from tests.support import fuse_paths, images
from tests.support.backend_cases import CASES
from tests.support.backend_variants import CaseImages, Variant, fuse_usable


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
