"""A container outlives what killed its ``lazyfs run`` only as long as runc runs it.

While runc says a container is created, running or paused, ``recover``
keeps its rootfs and reports it busy, whatever happened to the ``lazyfs run``
that started it; once it stops, ``recover`` destroys it. A ``lazyfs run``
that is killed tells its container to stop (SIGTERM, through runc); a
hang-up reaches the container as SIGINT and SIGTERM do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from lazyfs.provision import runtime
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

# pid 1 of its namespace with no handler, the shell ignores SIGTERM: it runs on.
DEAF = "echo up; sleep 1000 & wait"


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def start(lazyfs: Lazyfs, script: str) -> subprocess.Popen[bytes]:
    """``lazyfs run`` of ``sh -c script`` on a copy rootfs, once the container said "up"."""
    run = subprocess.Popen(
        lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: communicate() later reads the pipes from here on
    )
    assert run.stdout is not None
    line = run.stdout.readline()
    assert line == b"up\n", run.communicate(timeout=60)
    return run


def runc(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """runc on the state root ``lazyfs run`` uses for ``work``."""
    return subprocess.run(
        ["runc", "--root", str(work / "runc"), *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def runc_status(work: Path, cid: str) -> str:
    answer = runc(work, "state", cid)
    assert answer.returncode == 0, answer.stderr
    return str(json.loads(answer.stdout)["status"])


def rootfs_of(work: Path, cid: str) -> Path:
    info = work / "provisioner" / "containers" / cid / "info.json"
    return Path(json.loads(info.read_text())["rootfs"])


def kill_and_reap(run: subprocess.Popen[bytes]) -> None:
    run.send_signal(signal.SIGKILL)
    run.wait()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("killed", ["run", "run and runc"])
def test_a_container_whose_run_was_killed_is_busy_until_it_stops(
    lazyfs: Lazyfs, killed: str
) -> None:
    work = lazyfs.work_dir
    run = start(lazyfs, DEAF)
    (cid,) = containers(work)
    rootfs = rootfs_of(work, cid)
    # runc run is the parent of its container's init (it clones it so).
    supervisor = parent_of(json.loads(runc(work, "state", cid).stdout)["pid"])
    assert Path(f"/proc/{supervisor}/comm").read_text() == "runc\n"
    kill_and_reap(run)
    if killed == "run and runc":
        os.kill(supervisor, signal.SIGKILL)  # nobody left to delete runc's state
    assert runc_status(work, cid) == "running"

    report = json.loads(lazyfs("recover").stdout)
    assert (report["busy"], report["destroyed"], report["kept"]) == ([cid], [], [])
    refused = lazyfs("destroy", cid, check=False)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        f"lazyfs: container {cid} is still running (runc); stop it first, or kill it"
        " with lazyfs destroy --force; nothing was destroyed"
    ]
    assert containers(work) == [cid]
    assert (rootfs / "etc" / "motd").read_text() == "hello from a lazyfs rootfs\n"
    assert runc_status(work, cid) == "running"

    assert runc(work, "kill", cid, "KILL").returncode == 0
    # The pipes close once the container, and runc if it lived, have ended.
    run.communicate(timeout=60)
    report = json.loads(lazyfs("recover").stdout)
    assert (report["busy"], report["destroyed"]) == ([], [cid])
    assert containers(work) == []
    assert not (work / "runc" / cid).exists()  # runc's state went too


def test_a_killed_run_tells_its_container_to_stop(lazyfs: Lazyfs) -> None:
    work = lazyfs.work_dir
    run = start(lazyfs, 'trap "echo stopping; exit 3" TERM; echo up; sleep 1000 & wait')
    (cid,) = containers(work)
    kill_and_reap(run)
    # Read to the end: runc and its container have ended then.
    out, err = run.communicate(timeout=60)
    assert (out, err) == (b"stopping\n", b"")
    assert not (work / "runc" / cid).exists()
    report = json.loads(lazyfs("recover").stdout)
    assert (report["busy"], report["destroyed"]) == ([], [cid])


def test_a_hang_up_reaches_the_container_and_ends_run(lazyfs: Lazyfs) -> None:
    work = lazyfs.work_dir
    run = start(lazyfs, 'trap "echo hung up; exit 3" HUP; echo up; sleep 1000 & wait')
    (cid,) = containers(work)
    run.send_signal(signal.SIGHUP)
    out, err = run.communicate(timeout=60)
    # As for SIGINT and SIGTERM: the container's own ending is run's.
    assert (run.returncode, out, err) == (3, b"hung up\n", b"")
    assert containers(work) == []
    assert not (work / "runc" / cid).exists()


def test_what_runc_cannot_answer_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No state for the id: not running, whether or not its directory is there.
    assert not runtime.still_running(tmp_path, "gone")
    (tmp_path / "empty").mkdir()
    assert not runtime.still_running(tmp_path, "empty")
    # State runc cannot read might be a live container's: running.
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "state.json").write_text("{not json")
    assert runtime.still_running(tmp_path, "torn")
    # Without runc nothing runs under it.
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert not runtime.still_running(tmp_path, "torn")
