"""One machine's lazyfs, driven through the real command: containers, mounts and the cache daemon.

``machine(work)`` yields a ``Machine``: a work dir, its cache dir, and the
``lazyfs`` command on them. ``provision`` runs ``lazyfs provision --backend
fuse`` (each rootfs a real FUSE mount served by its own process, the
cache daemon started by the first mount that needs it, detached);
``provision_at_once`` starts several such processes together, as an agent
starting many containers does. ``start_daemon`` runs ``lazyfs daemon`` in
the foreground as a process the test owns (to SIGKILL or restart it).

On exit, also when the test failed, everything is taken down and checked
gone: every rootfs unmounted and its mount process ended (all at once, as
``destroy`` does it, for twenty containers take long one by one), every
container then removed by ``lazyfs recover`` with nothing kept, then
whatever is still mounted under the work dir unmounted and any mount process
of it killed, then the daemons, the test's own and any a mount started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from backends.mounts import mounts_under, unmount_all_under
from lazyfs.fs import mount as lazy_mount
from tests.support.cache_daemons import ROOT, kill_recorded, wait_for
from tests.support.fuse_mounts import alive
from tests.support.processes import stop, zombie

TIMEOUT = 300.0  # bounds a hung command, so a failing test ends; never reached when it passes


@dataclass
class Machine:
    work: Path
    cache_dir: Path
    flags: tuple[str, ...] = ()
    background_fetch: bool = False
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rootfses: dict[str, Path] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lazyfs", "--work_dir", str(self.work),
                "--cache_dir", str(self.cache_dir), *self.flags, *args]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        """The environment of every command: the daemon a mount starts inherits it."""
        env = dict(os.environ)
        if not self.background_fetch:
            # Fetch only what mounts read, so bytes over the link are what reads
            # need; a lazyfs without background fetch ignores the variable.
            env["LAZYFS_NO_BACKGROUND_FETCH"] = "1"
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
            stdin=subprocess.DEVNULL, check=False, env=self.env,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"lazyfs {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args), cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def provision(self, container: str, image: str) -> Path:
        """``lazyfs provision CONTAINER IMAGE --backend fuse``; returns the rootfs."""
        done = self.run("provision", container, image, "--backend", "fuse")
        return self._took(container, done.stdout)

    def provision_at_once(self, containers: list[str], image: str) -> list[Path]:
        """Start one ``lazyfs provision`` process per container together; their rootfses."""
        started = [self.popen("provision", c, image, "--backend", "fuse") for c in containers]
        results = []
        try:
            for process in started:
                out, err = process.communicate(timeout=TIMEOUT)
                results.append((process.returncode, out, err))
        finally:
            for process in started:
                if process.poll() is None:
                    process.kill()
                process.wait()
        failed = [err for code, _, err in results if code != 0]
        assert not failed, f"{len(failed)} provisions failed, the first: {failed[0]}"
        return [self._took(c, out) for c, (_, out, _) in zip(containers, results, strict=True)]

    def _took(self, container: str, stdout: str) -> Path:
        info = json.loads(stdout)
        assert info["backend"] == "fuse", info
        rootfs = self.rootfses[container] = Path(info["rootfs"])
        return rootfs

    def mount_log(self, container: str) -> str:
        """The log of ``container``'s mount process (``scratch/<rootfs name>/mount.log``)."""
        rootfs = self.rootfses[container]
        return (rootfs.parent.parent / "scratch" / rootfs.name / "mount.log").read_text()

    def start_daemon(self, cache_size: str | None = None) -> subprocess.Popen[bytes]:
        """``lazyfs daemon`` in the foreground, answering; stopped at the end if still running."""
        from tests.support.cache_daemons import daemon_status

        flags = () if cache_size is None else ("--cache_size", cache_size)
        self.work.mkdir(parents=True, exist_ok=True)
        log_path = self.work / f"daemon-{len(self.daemons)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                self.argv(*flags, "daemon"), cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.daemons.append(process)

        def up() -> bool:
            assert process.poll() is None, log_path.read_text()
            return daemon_status(self.cache_dir) is not None

        wait_for(up, "the cache daemon to answer")
        return process

    def kill_daemon(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``process`` (a daemon this test started) and reap it."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT)

    def _destroy_all(self) -> None:
        """Unmount every rootfs (all at once: fusermount3, then its mount process ends),
        then ``lazyfs recover`` removes the containers' records and directories."""
        with ThreadPoolExecutor(8) as pool:
            for done in pool.map(_unmount, self.rootfses.values()):
                assert done is None
        containers = self.work / "provisioner" / "containers"
        if containers.is_dir() and any(containers.iterdir()):
            self.run("recover")
            assert not any(containers.iterdir()), "recover left containers behind"

    def take_down(self) -> None:
        """Destroy every container, unmount and kill what is left, stop the daemons."""
        errors: list[BaseException] = []
        try:
            self._destroy_all()
        except BaseException as error:  # the fallbacks below still run
            errors.append(error)
        for pid in mount_processes_under(self.work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            if mounts_under(self.work):
                unmount_all_under(self.work)
        except BaseException as error:
            errors.append(error)
        for process in self.daemons:
            stop(process)
        kill_recorded(self.cache_dir)
        wait_for(lambda: not mount_processes_under(self.work), "the mount processes to end")
        if errors:
            raise errors[0]


def _unmount(rootfs: Path) -> None:
    """What ``destroy`` does to a fuse rootfs first: unmount, and wait for its process to end."""
    scratch = rootfs.parent.parent / "scratch" / rootfs.name
    lazy_mount.unmount(rootfs, pid=lazy_mount.recorded_pid(scratch))


def mount_processes_under(root: Path) -> list[int]:
    """Live ``lazyfs.fs.mount_main`` processes whose mount point is under ``root``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lazyfs.fs.mount_main" not in argv or b"--mountpoint" not in argv:
            continue
        point = Path(os.fsdecode(argv[argv.index(b"--mountpoint") + 1]))
        if (point == root or root in point.parents) and alive(int(name)) and not zombie(name):
            found.append(int(name))
    return found


@contextlib.contextmanager
def machine(work: Path, *flags: str, background_fetch: bool = False) -> Iterator[Machine]:
    """A ``Machine`` on ``work`` (cache in ``work/cache``), taken down on exit.

    Background fetch is off unless asked for: what crosses the link is then
    what the test's reads need.
    """
    found = Machine(work, work / "cache", flags, background_fetch)
    try:
        yield found
    finally:
        found.take_down()


def chunk_bytes_on_disk(cache_dir: Path) -> int:
    """What ``du`` counts for the cache's chunks (whole blocks), renamed in or being written."""
    total = 0
    for part in [cache_dir / "tmp", *cache_dir.glob("chunks-*")]:
        for top, _, names in os.walk(part):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total
