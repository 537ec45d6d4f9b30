"""A first start's prefetch, as the registry sees it: an executable's head read through a lazy
mount has the daemon fetch its interpreter and needed library before anything reads them, and
the program the container will run is read ahead, with what it loads, before it starts.

Real processes: ``lazyfs provision --backend fuse`` (no background fetch, an
eStargz layer with the no-prefetch landmark, so nothing else asks for those
bytes) from a loopback ``docker-registry`` behind a recording proxy
(``tests.support.fault_proxy``), the daemon the mount starts, and a read of
the mounted rootfs. The libraries sit at the blob's start, megabytes before
its TOC, out of reach of the TOC's tail read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cache_daemons import kill_recorded, wait_for
from tests.support.elf_files import elf
from tests.support.estargz_writer import File, write_estargz
from tests.support.fault_proxy import Faults, run_proxy
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_images import TOC_ANNOTATION, diff_id, lazyfs, push_estargz_image
from tests.support.registry_servers import Registry, push_oci_image, run_registry

pytestmark = pytest.mark.integration

LIB = "usr/lib/x86_64-linux-gnu/libfoo.so.1.0"
LD = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
OTHER = "usr/lib/x86_64-linux-gnu/libother.so.1"
APP = elf(interp=b"/lib64/ld-linux-x86-64.so.2", needed=[b"libfoo.so.1"]).data
FILES = [
    File("usr", type="dir", mode=0o755),
    File("usr/lib", type="dir", mode=0o755),
    File("usr/lib/x86_64-linux-gnu", type="dir", mode=0o755),
    File(LIB, os.urandom(256 << 10), mode=0o755),
    File("usr/lib/x86_64-linux-gnu/libfoo.so.1", type="symlink", link="libfoo.so.1.0"),
    File(LD, os.urandom(128 << 10), mode=0o755),
    File(OTHER, os.urandom(128 << 10), mode=0o755),  # needed by nothing
    File("lib64", type="dir", mode=0o755),
    File("lib64/ld-linux-x86-64.so.2", type="symlink", link=f"/{LD}"),
    File("usr/share", type="dir", mode=0o755),
    File("usr/share/filler", os.urandom(3 << 20)),  # keeps the files above out of the TOC's tail
    File("usr/bin", type="dir", mode=0o755),
    File("usr/bin/app", APP, mode=0o755),
]
BLOB = write_estargz(FILES)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("predict-registry")
    with run_registry(work, work / "storage") as running:
        yield running


def _asked(faults: Faults, digest: str, offset: int) -> bool:
    """Whether a Range request for blob ``digest`` covered byte ``offset``."""
    with faults.lock:
        seen = list(faults.seen)
    for path, headers in seen:
        if path.endswith(f"/blobs/{digest}") and "Range" in headers:
            first, last = headers["Range"].removeprefix("bytes=").split("-")
            if int(first) <= offset <= int(last):
                return True
    return False


@contextmanager
def _provisioned(work: Path, host: str, image: str) -> Iterator[Path]:
    """``lazyfs provision --backend fuse`` without background fetch; the rootfs, destroyed after."""
    url = f"http://{host}"
    try:
        done = lazyfs(work, url, "provision", "c1", f"docker:{host}/{image}", "--backend", "fuse",
                      background=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield Path(json.loads(done.stdout)["rootfs"])
    finally:
        gone = lazyfs(work, url, "destroy", "c1")
        kill_recorded(work / "cache")
        assert gone.returncode == 0, gone.stderr


def test_reading_an_executables_head_fetches_its_libraries_before_they_are_read(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    (layer,) = push_estargz_image(registry.url, "predict/app", "v1", [BLOB]).layers
    lib, ld, other = (BLOB.offset_of(name) for name in (LIB, LD, OTHER))
    faults = Faults()
    with run_proxy(registry.url, faults) as url:
        host = url.removeprefix("http://")
        with _provisioned(tmp_path / "work", host, "predict/app:v1") as rootfs:
            assert not _asked(faults, layer, lib) and not _asked(faults, layer, ld)
            with open(rootfs / "usr/bin/app", "rb") as app:
                assert app.read(64) == APP[:64]
            # Nothing reads the library or the interpreter: the mount asks for them itself.
            wait_for(lambda: _asked(faults, layer, lib), "the needed library to be fetched")
            wait_for(lambda: _asked(faults, layer, ld), "the interpreter to be fetched")
            # Past where a request for the interpreter's last chunk may reach.
            assert not _asked(faults, layer, other + (96 << 10))
            assert (rootfs / LIB).read_bytes() == FILES[3].data


def test_the_program_the_container_runs_is_read_ahead_with_what_it_loads_before_it_starts(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    # Found through the image's PATH, as runc finds it: /usr/local/bin first, which has none.
    config = {"Cmd": ["app"], "Env": ["PATH=/usr/local/bin:/usr/bin"]}
    layers = [(BLOB.data, {TOC_ANNOTATION: BLOB.toc_digest})]
    (layer,) = push_oci_image(registry.url, "predict/cmd", "v1", layers, [diff_id(BLOB)], config)
    app, lib, ld = (BLOB.offset_of(name) for name in ("usr/bin/app", LIB, LD))
    faults = Faults()
    with run_proxy(registry.url, faults) as url:
        host = url.removeprefix("http://")
        # Provisioned, nothing of the rootfs read: the mount reads the program ahead itself.
        with _provisioned(tmp_path / "work", host, "predict/cmd:v1"):
            wait_for(lambda: _asked(faults, layer, app), "the program to be fetched")
            wait_for(lambda: _asked(faults, layer, lib), "its library to be fetched")
            wait_for(lambda: _asked(faults, layer, ld), "its interpreter to be fetched")


BIG = os.urandom(3 << 20)
# /bin is the base layer's link to usr/bin; the program is in the layer above, in chunks.
BASE = write_estargz([
    File("usr", type="dir", mode=0o755),
    File("usr/bin", type="dir", mode=0o755),
    File("bin", type="symlink", link="usr/bin"),
    File("usr/share", type="dir", mode=0o755),
    File("usr/share/filler", os.urandom(1 << 20)),
])  # fmt: skip
TOP = write_estargz([File("usr/bin/big", BIG, mode=0o755)], chunk_size=256 << 10)


def _one_request_covers(faults: Faults, digest: str, first: int, last: int) -> bool:
    with faults.lock:
        seen = list(faults.seen)
    for path, headers in seen:
        if path.endswith(f"/blobs/{digest}") and "Range" in headers:
            start, end = headers["Range"].removeprefix("bytes=").split("-")
            if int(start) <= first and last <= int(end):
                return True
    return False


def test_the_program_is_asked_for_whole_from_the_tocs_on_a_first_start(
    registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    config = {"Cmd": ["big"], "Env": ["PATH=/bin"]}
    blobs = (BASE, TOP)
    layers = [(b.data, {TOC_ANNOTATION: b.toc_digest}) for b in blobs]
    _, top = push_oci_image(registry.url, "predict/early", "v1", layers,
                            [diff_id(b) for b in blobs], config)  # fmt: skip
    # Its chunks run from its first to the TOC (the landmark comes first in the layer); the
    # blob's last 64 KiB, its footer and TOC, hold its end.
    start, end = TOP.offset_of("usr/bin/big"), len(TOP.data) - (128 << 10)
    faults = Faults()
    with run_proxy(registry.url, faults) as url:
        host = url.removeprefix("http://")
        with _provisioned(tmp_path / "work", host, "predict/early:v1") as rootfs:
            # One prefetch of the whole file, as its TOC places it: not piece by piece.
            wait_for(lambda: _one_request_covers(faults, top, start, end),
                     "the program to be asked for in one request")  # fmt: skip
            assert (rootfs / "usr/bin/big").read_bytes() == BIG
