"""Laziness end to end: ``lazyfs run`` of an eStargz Debian + python3 image prints its
program's line while only part of the image has crossed the link: under a
quarter of it (issue 12).

The image (``tests.support.debian_like``: a minbase-like base, python3 and
its standard library, an app; about 36 MB of gzip) is converted by
``ctr-remote`` and pushed to a loopback registry; lazyfs reaches that
registry only through a byte-counting proxy (``tests.support.tcp_counter``),
which is what the image reference names, so the cache daemon's range reads
cross it too.  The count is read the moment the program's line arrives.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from providers.registry import RegistryClient, RegistryOptions
from tests.support import debian_like, images
from tests.support.cache_daemons import kill_recorded
from tests.support.containerd import Containerd, import_archive, push, to_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.registry_pulls import FAST
from tests.support.registry_servers import Registry, run_registry
from tests.support.tcp_counter import run_counting_proxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def python_registry(
    containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A loopback registry holding the eStargz Debian + python3 image as ``debpy:esgz``."""
    lacking = debian_like.missing()
    if lacking:
        pytest.skip(f"needs the host's Debian packages {', '.join(lacking)}")
    work = tmp_path_factory.mktemp("debpy")
    layout = debian_like.build(work / "image")
    source, converted = "localhost/lazyfs/debpy:src", "localhost/lazyfs/debpy:esgz"
    import_archive(containerd, images.to_oci_archive(layout, "latest", work / "src.tar", source))
    to_estargz(containerd, source, converted)
    with run_registry(work, work / "storage") as registry:
        push(containerd, converted, f"{registry.host}/debpy:esgz")
        yield registry


@dataclass(frozen=True)
class LazyRun:
    line: str
    crossed: int  # bytes from the registry, when the line arrived
    image_bytes: int


@pytest.fixture(scope="module")
def lazy_run(python_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> LazyRun:
    """``lazyfs run --backend fuse`` of the image through the counting proxy, once."""
    need_fuse()
    manifest = RegistryClient(RegistryOptions(registry=python_registry.url, http=FAST)).resolve(
        f"{python_registry.host}/debpy:esgz"
    )
    work = tmp_path_factory.mktemp("run") / "work"
    port = int(python_registry.host.rsplit(":", 1)[1])
    with run_counting_proxy(port) as link:
        argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work),
                "--docker_registry", f"http://{link.host}", "--cache_dir", str(work / "cache"),
                "--no_background_fetch",  # what the program needs only: the rest would follow
                "run", "--backend", "fuse", f"docker:{link.host}/debpy:esgz",
                "--", *debian_like.COMMAND]  # fmt: skip
        run = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert run.stdout is not None
            line = run.stdout.readline()
            crossed = link.down
            _, errors = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            kill_recorded(work / "cache")
    assert run.returncode == 0, errors
    return LazyRun(line.strip(), crossed, sum(layer.size for layer in manifest.layers))


def test_run_prints_the_programs_line_before_the_image_has_arrived(lazy_run: LazyRun) -> None:
    assert lazy_run.line == debian_like.APP_LINE
    # Range reads only: never the image whole (its layers are 27, 9 and 0 MB).
    assert lazy_run.crossed < lazy_run.image_bytes * 3 / 4, lazy_run


# The python layer (9 MB: the interpreter, its libraries, and the stdlib
# modules ``import json`` loads, spread through it) must not cross whole: the
# cache fetches 64 KiB chunks and reads nothing ahead of an eStargz layer's
# chunks.  (The run asks for no background fetch, which would bring the rest
# of the image.)
def test_under_a_quarter_of_the_image_crossed_by_then(lazy_run: LazyRun) -> None:
    assert lazy_run.crossed < lazy_run.image_bytes / 4, lazy_run
