"""A provision and a GC pass exclude each other: the usage lock of the store."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.store.usage_lock import collecting, in_use, lock_path
from tests.support.backend_variants import docker, make_provisioner, one_image_registry

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return one_image_registry(tmp_path)


async def test_a_provision_waits_while_a_gc_pass_holds_the_store(
    tmp_path: Path, registry: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", registry)
    done = []

    async def provision() -> None:
        done.append(await prov.provision("c1", docker("one"), "copy"))

    try:
        async with trio.open_nursery() as nursery:
            with collecting(prov.store.root):
                nursery.start_soon(provision)
                await trio.testing.wait_all_tasks_blocked()
                # It has not even made its container: GC may take anything meanwhile.
                assert not (prov.containers / "c1").exists()
                assert done == []
        assert (done[0].rootfs / "etc" / "motd").read_bytes() == b"hi\n"
    finally:
        await prov.destroy("c1")


def test_a_gc_pass_waits_for_a_provision_under_way(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "locks").mkdir(parents=True)
    with in_use(store):
        # Another process's pass: its exclusive flock conflicts with ours.
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                "except BlockingIOError: sys.exit(3)",
                str(lock_path(store)),
            ],
            check=False,
        )
        assert probe.returncode == 3
        # Shared holders do not wait for each other: provisions run side by side.
        other = os.open(lock_path(store), os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(other)
    with collecting(store):
        pass  # free once the provision is done
