"""ACIs made with tarfile, a loopback HTTP server for simple discovery, and the CLI."""

from __future__ import annotations

import functools
import http.server
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from tests.support.httpserver import serve
from tests.support.lazyfs_cli import AppcLazyfs


@pytest.fixture
def aci_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "acis"
    directory.mkdir()
    return directory


@pytest.fixture
def http_prefix(aci_dir: Path) -> Iterator[str]:
    """An HTTP server on loopback serving ``aci_dir``; yields its URL prefix."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(aci_dir))
    with serve(handler) as url:
        yield url + "/"


@pytest.fixture
def appc_lazyfs(tmp_path: Path, aci_dir: Path) -> Iterator[AppcLazyfs]:
    yield AppcLazyfs(tmp_path / "work", str(aci_dir) + "/")
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)
