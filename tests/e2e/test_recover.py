"""recover: one failure does not stop it; a running container is busy."""

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


def test_a_running_container_is_busy_and_kept(lazyfs: Lazyfs) -> None:
    script = "echo up; read line; cat /etc/motd"
    run = subprocess.Popen(
        lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", script),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None and run.stdin is not None
        assert run.stdout.readline() == "up\n", run.stderr and run.stderr.read()
        (running,) = containers(lazyfs.work_dir)
        report = json.loads(lazyfs("recover").stdout)
        assert report["busy"] == [running] and report["destroyed"] == []
        run.stdin.write("go on\n")
        run.stdin.close()
        # The container reads its rootfs after recover: it is still there.
        assert run.stdout.read() == "hello from a lazyfs rootfs\n"
        assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    finally:
        if run.poll() is None:
            # EOF lets the container end by itself; runc would outlive a killed run.
            if run.stdin is not None and not run.stdin.closed:
                run.stdin.close()
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
    assert containers(lazyfs.work_dir) == []
