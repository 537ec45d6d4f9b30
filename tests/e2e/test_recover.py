"""recover: one failure does not stop it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Lazyfs

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def test_a_container_that_cannot_go_is_reported_and_the_others_go(lazyfs: Lazyfs) -> None:
    rootfs = {}
    for cid in ("c1", "c2", "c3"):
        out = json.loads(lazyfs("provision", cid, "busybox", "--backend", "copy").stdout)
        rootfs[cid] = Path(out["rootfs"])
    stuck = rootfs["c2"] / "etc" / "motd"
    subprocess.run(["chattr", "+i", stuck], check=True)  # as a container might have
    try:
        result = lazyfs("recover", check=False)
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["destroyed"] == ["c1", "c3"]
    assert report["failed"] == {"c2": f"Operation not permitted: {stuck}"}
    assert result.stderr == (
        f"lazyfs: container c2 could not be destroyed: Operation not permitted: {stuck}\n"
    )
    assert containers(lazyfs.work_dir) == ["c2"]
    # Once it can go, the next recover takes it.
    assert json.loads(lazyfs("recover").stdout)["destroyed"] == ["c2"]
    assert containers(lazyfs.work_dir) == []
