"""A lazy mount of a docker.io image behind a mirror that takes connections and never answers.

The cache daemon lists the mirrors first for every blob, so each of its range
reads would wait out ``--docker_registry_timeout`` there before asking the
registry. A mirror that failed a blob is held (providers.registry_range
``MirrorHolds``), in the daemon as in the command: each asks the mirror for
each blob once, not for each read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        try:
            done = subprocess.run([*argv, "mount", "docker:big:esgz", str(point)],
                                  capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
            layers = json.loads(done.stdout)["image"]["layers"]
            # Its 9 MiB of incompressible data: many range reads of one layer.
            assert (point / "opt/big").read_bytes() == BIG_DATA
            assert (point / "opt/small").read_bytes() == b"small\n" * 100
            found = daemon_status(work / "cache")
            assert found is not None and found.fetches > 2 * len(layers), found
            asked: dict[str, int] = {}
            for path, _ in faults.seen:
                if "/blobs/" in path:
                    asked[path] = asked.get(path, 0) + 1
            # The command (its config, its tables of contents) and the daemon: one each.
            assert asked and max(asked.values()) <= 2, asked
        finally:
            subprocess.run([*argv, "umount", str(point)], capture_output=True, timeout=120,
                           stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            kill_recorded(work / "cache")
