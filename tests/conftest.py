"""Session fixtures shared by the integration and conformance suites: the rich
test image, built once, in every local form; the FUSE path a test's mounts
take; and no silent skips under CI."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fuse_paths, images, mount_servers
from tests.support.ci_skips import pytest_runtest_makereport  # noqa: F401  (a hook: pytest finds it here)
from tests.support.rich_image import RICH_TAG, need_tools

# The Ctrl-C tests signal lazyfs as a terminal would, which finds SIGINT and
# SIGQUIT at their defaults. A runner started in the background by a shell
# without job control (`cmd &` in a script) has both ignored, and every child
# would inherit that: lazyfs would run on through the test's Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # exec'd children: default
if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)

# Mount processes are exec'd unless a test asks for the mount server
# (tests.support.mount_servers): a server per test's store would outlive its test.
os.environ.setdefault("LAZYFS_MOUNT_SERVER", "0")


@pytest.fixture(params=fuse_paths.PATHS)
def fuse_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The path (``tests.support.fuse_paths``) the FUSE mounts take: each test runs on both."""
    path: str = request.param
    fuse_paths.choose(path, monkeypatch.setenv)
    return path


@pytest.fixture(params=mount_servers.PATHS)
def mount_start(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """How mount processes of the store ``tmp_path / "store"`` start: exec'd or forked.

    The store's mount server, if one was started, is stopped afterwards
    (``tests.support.mount_servers``).
    """
    path: str = request.param
    with mount_servers.chosen(path, tmp_path / "store", monkeypatch.setenv):
        yield path


@pytest.fixture(scope="session")
def rich_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout holding the rich image as tags ``1.0`` and ``latest``."""
    need_tools()
    layout = images.build_rich_image(tmp_path_factory.mktemp("rich"), RICH_TAG)
    images.run("umoci", "tag", "--image", f"{layout}:{RICH_TAG}", "latest")
    return layout


@pytest.fixture(scope="session")
def image_dir(rich_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--docker_registry`` directory with the rich image in every form.

    Names and files (all tag 1.0 unless said):
      legacy:1.0.tar (pre-1.10 docker save), archive:1.0.tar (skopeo
      docker-archive), ociarchive:1.0.tar, ocidir:1.0/, zstd:1.0/,
      docker25:1.0.tar (OCI layout + manifest.json), plain.tar (latest),
      foo/bar:1.0.tar, localhost:5000/foo/bar:2.0.tar.
    """
    root = tmp_path_factory.mktemp("images")
    tag = RICH_TAG
    images.to_legacy_docker_save(rich_layout, tag, root / "legacy:1.0.tar", "legacy")
    images.to_docker_archive(rich_layout, tag, root / "archive:1.0.tar", "archive")
    images.to_oci_archive(rich_layout, tag, root / "ociarchive:1.0.tar")
    images.to_oci_dir(rich_layout, tag, root / "ocidir:1.0")
    images.to_zstd_oci_dir(rich_layout, tag, root / "zstd:1.0")
    images.to_docker25_save(rich_layout, tag, root / "docker25:1.0.tar", "docker25")
    images.to_docker_archive(rich_layout, "latest", root / "plain.tar", "plain")
    images.to_docker_archive(rich_layout, tag, root / "foo" / "bar:1.0.tar", "foo/bar")
    images.to_oci_archive(rich_layout, tag, root / "localhost:5000" / "foo" / "bar:2.0.tar", "2.0")
    return root
