"""A first lazy mount asks for what its program loads while it still indexes the layers.

Real processes: a loopback ``docker-registry`` behind the recording proxy
(``tests.support.fault_proxy``) and the cache daemon. The mount process's
indexing step (``lazyfs.fs.mount_layers.index_layers``) runs in this test,
without the mount's read-ahead (``lazyfs.fs.predict``) that starts once it
serves: what the proxy saw asked for came from the TOCs and the program's
headers alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cache.remote import RemoteOrigin
from lazyfs.fs.mount_layers import index_layers
from providers.digest import Digest
from providers.manifest import OCI_LAYER_GZIP, Layer
from tests.support.cache_daemons import run_daemon, wait_for
from tests.support.elf_files import elf
from tests.support.estargz_writer import File, write_estargz
from tests.support.lazy_fetch import proxied, ranges_of, settled
from tests.support.lazy_images import TOC_ANNOTATION, push_estargz_image
from tests.support.registry_servers import Registry, run_registry

ELF = elf(b"/lib64/ld-linux-x86-64.so.2", [b"libfoo.so.1"], b"/opt/lib", dynamic_at=700 << 10)
LOADED = write_estargz(
    [
        File("bin", type="dir", mode=0o755),
        # The dynamic section in the program's third chunk, as a real one has it far in.
        File("bin/prog", ELF.data + os.urandom(64 << 10), mode=0o755),
        # Past the cache chunks the program's own ask rounds up to.
        File("filler", os.urandom(256 << 10)),
        File("lib64", type="dir", mode=0o755),
        File("lib64/ld-linux-x86-64.so.2", os.urandom(300 << 10), mode=0o755),
        File("opt", type="dir", mode=0o755),
        File("opt/lib", type="dir", mode=0o755),
        File("opt/lib/libfoo.so.1", os.urandom(300 << 10)),
        File("opt/lib/libunused.so.1", os.urandom(300 << 10)),
    ],
    chunk_size=256 << 10,
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("libs-ahead-registry")
    with run_registry(work, work / "storage") as running:
        yield running


def test_the_interpreter_and_libraries_are_asked_for_once_the_programs_headers_are_in(
    registry: Registry, tmp_path: Path
) -> None:
    pushed = push_estargz_image(registry.url, "lazy/libs-ahead", "v1", [LOADED])
    layer = Layer(
        Digest(pushed.layers[0]), OCI_LAYER_GZIP, pushed.sizes[0], None,
        ((TOC_ANNOTATION, LOADED.toc_digest),),
    )  # fmt: skip
    cache = tmp_path / "cache"
    daemon = run_daemon(tmp_path / "work", cache, background=False)  # only what is asked for
    with proxied(registry) as (host, faults), daemon:
        origin = RemoteOrigin(host, "lazy/libs-ahead")
        index_layers(tmp_path / "store", [(layer, origin)], None, cache, None, ["/bin/prog"])
        wanted = [
            LOADED.offset_of("lib64/ld-linux-x86-64.so.2"),
            LOADED.offset_of("opt/lib/libfoo.so.1"),
        ]

        def asked() -> bool:
            ranges = ranges_of(faults, layer.digest)
            return all(any(a <= at <= b for a, b in ranges) for at in wanted)

        # Asked by a thread once the program's chunks are in: nothing here reads them.
        wait_for(asked, "the interpreter and the library to be asked for")
        settled(cache)
        # Past the 64 KiB cache chunk that may hold the needed library's end too.
        unused = LOADED.offset_of("opt/lib/libunused.so.1") + (128 << 10)
        assert not any(a <= unused <= b for a, b in ranges_of(faults, layer.digest))
