"""A lazy mount of a docker.io image behind a mirror that takes connections and never answers.

The cache daemon lists the mirrors first for every blob, so each of its range
reads would wait out ``--docker_registry_timeout`` there before asking the
registry. A mirror that failed a blob is held (providers.registry_range
``MirrorHolds``): the daemon asks the mirror for each blob once, not for
each read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from providers.registry_range import HOLD_FIRST
from tests.support.cache_daemons import daemon_status, kill_recorded
from tests.support.estargz_images import BIG_DATA
from tests.support.fault_proxy import Faults, run_proxy
from tests.support.fuse_mounts import need_fuse
from tests.support.images import run
from tests.support.registry_servers import Registry


def test_a_mirror_that_never_answers_costs_a_lazy_mount_once_per_blob(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    # A docker.io reference goes to the mirrors first: library/big, as on Docker Hub.
    host = estargz_registry.host
    run("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{host}/big:esgz", f"docker://{host}/library/big:esgz")  # fmt: skip
    work, point = tmp_path / "work", tmp_path / "look"
    point.mkdir()
    faults = Faults(target="/blobs/", silent=1_000_000)
    with run_proxy(estargz_registry.url, faults) as mirror:
        argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "--cache_dir",
                str(work / "cache"), "--docker_registry", estargz_registry.url,
                "--docker_registry_mirrors", mirror, "--docker_registry_timeout", "1",
                "--no_background_fetch"]  # fmt: skip
        began = time.monotonic()
        try:
            done = subprocess.run([*argv, "mount", "docker:big:esgz", str(point)],
                                  capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
            layers = json.loads(done.stdout)["image"]["layers"]
            # Its 9 MiB of incompressible data: many range reads of one layer.
            assert (point / "opt/big").read_bytes() == BIG_DATA
            assert (point / "opt/small").read_bytes() == b"small\n" * 100
            took = time.monotonic() - began
            found = daemon_status(work / "cache")
            assert found is not None and found.fetches > 2 * len(layers), found
        finally:
            gone = subprocess.run([*argv, "umount", str(point)], capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL,
                                  check=False)  # fmt: skip
            kill_recorded(work / "cache")
    assert gone.returncode == 0, gone.stderr
    asked = {layer: sum(layer in path for path, _ in faults.seen) for layer in layers}
    # The daemon asked the mirror for every layer (the command reads them through it) ...
    assert all(asked.values()), asked
    # ... and, while the first hold lasted, not for each read: once each here (its tail,
    # read before its chunks), twice at most should two first reads overlap (20 times
    # for the big layer without the holds).
    if took < HOLD_FIRST:
        assert max(asked.values()) <= 2, asked
