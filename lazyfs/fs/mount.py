"""The public mount API: serve an image's merged tree at a mount point, in its own process.

pyfuse3 serves one mount per process, so every mount is a child process
running ``python -m lazyfs.fs.mount_main`` (see there), in a session of its
own with its output going to a log file, so it outlives the caller's
terminal and its Ctrl-C.  This is the one module of lazyfs that backends may
import.

``mount`` indexes the layers first, in the calling process (once per layer:
the indexes are stored by digest, see ``lazyfs.index.stored``), so a bad layer
fails there with its own error; then it starts the mount process and waits
until it says the mount is up, or says why not, or ``timeout`` passes.  On
any failure nothing is left mounted or running.  ``unmount`` takes the mount
down and waits for its process to end, killing it if it does not.  Both are
blocking; ``unmount`` is idempotent.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.index.stored import ensure_index
from lazyfs.tree.kept import tree_path
from providers.digest import Digest
from providers.errors import BackendError
from providers.private_dir import private_dir

if TYPE_CHECKING:
    from providers.tar_stream import LayerLimits

READY = b"ready\n"
MOUNT_TIMEOUT = 60.0
EXIT_TIMEOUT = 10.0
MODULE = "lazyfs.fs.mount_main"


@dataclass(frozen=True)
class MountLayer:
    """A verified layer blob in the store."""

    digest: Digest
    blob: Path


def mount(
    layers: Sequence[MountLayer],
    mountpoint: Path,
    *,
    layers_dir: Path,
    tmp_dir: Path,
    log_path: Path,
    timeout: float = MOUNT_TIMEOUT,
    upper: Path | None = None,
    work: Path | None = None,
    debug: bool = False,
    suid: bool = True,
    dev: bool = True,
    limits: LayerLimits | None = None,
) -> int:
    """Mount the union of ``layers`` (bottom first) at the existing ``mountpoint``.

    Read-only, or with ``upper`` (and ``work``, both existing empty
    directories on one filesystem) copy-on-write: the writes go to
    ``upper`` in overlayfs' format (see ``lazyfs.fs.upper``). With ``debug``
    the mount process logs every request it serves to ``log_path``.

    ``suid`` and ``dev`` (as root; the defaults, as a container's rootfs
    needs) honour the image's setuid bits and device nodes; false, the
    mount is ``nosuid``/``nodev``, as a person's look inside an image must
    be where other users can reach it (see ``lazyfs.fs.mount_main.mount_options``).

    Returns the mount process's pid.  Raises BadImage or UnsafeLayer for a
    layer the index refuses (one that unpacks past ``limits`` too),
    BackendError when the mount does not come up (the reason from the mount
    process's log).
    """
    # With the image's merged tree kept, the mount process needs only the
    # indexes' headers; without it, it merges the entries, so check them whole
    # (a damaged index is built again here, not refused there every time).
    kept = tree_path(layers_dir, [layer.digest for layer in layers]).is_file()
    for layer in layers:
        # It checks (or writes) what the index points into, too.
        ensure_index(layers_dir, tmp_dir, layer.digest, layer.blob, entries=not kept, limits=limits)
    argv = [sys.executable, "-m", MODULE, "--mountpoint", str(mountpoint)]
    argv += ["--layers-dir", str(layers_dir)]
    for layer in layers:
        # The blob, not where its tar stream is: the mount process asks its
        # index (lazyfs.index.stored.layer_data), so that knowledge stays in one place.
        argv += ["--layer", f"{layer.digest}={layer.blob}"]
    if upper is not None:
        if work is None:
            raise BackendError("a writable mount needs a work directory beside its upper")
        argv += ["--upper", str(upper), "--work", str(work)]
    if debug:
        argv.append("--debug")
    # mount_main mounts nosuid,nodev: only what is asked for here opens them.
    if suid:
        argv.append("--suid")
    if dev:
        argv.append("--dev")
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(write_end, True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # posix_spawn, not subprocess: the caller forgets this child on
            # purpose, and Popen would warn about that when collected.
            pid = os.posix_spawn(
                sys.executable,
                [*argv, "--ready-fd", str(write_end)],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,  # detached: no signal of the caller's terminal reaches it
            )
        finally:
            os.close(log_fd)
        os.close(write_end)
        write_end = -1
        answer = _read_answer(read_end, timeout)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if answer == READY:
        return pid
    # Whatever it did, it must not stay: a half-made mount goes with it.
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, timeout)
    _fusermount_unmount(mountpoint)
    reason = answer.decode(errors="replace").strip() or _last_line(log_path)
    raise BackendError(f"mounting {mountpoint} failed: {reason or 'the mount process died'}")


def mount_recorded(
    record: Path,
    layers: Sequence[MountLayer],
    mountpoint: Path,
    *,
    layers_dir: Path,
    tmp_dir: Path,
    writable: bool,
    debug: bool = False,
    suid: bool = True,
    dev: bool = True,
    limits: LayerLimits | None = None,
) -> int:
    """``mount``, keeping the mount's state in ``record``, an existing empty directory.

    ``record`` gets ``mount.log``, ``pid`` once the mount is up, and with
    ``writable`` the ``upper`` and ``work`` directories. It is closed to
    other users (``0700``): the upper gets copies of the image's setuid
    files. The caller removes ``record`` when this fails and after ``unmount``.
    """
    private_dir(record)
    upper = work = None
    if writable:
        upper, work = record / "upper", record / "work"
        upper.mkdir(mode=0o755)
        work.mkdir(mode=0o700)
    pid = mount(
        layers,
        mountpoint,
        layers_dir=layers_dir,
        tmp_dir=tmp_dir,
        log_path=record / "mount.log",
        upper=upper,
        work=work,
        debug=debug,
        suid=suid,
        dev=dev,
        limits=limits,
    )
    (record / "pid").write_text(f"{pid}\n")
    return pid


def recorded_pid(record: Path) -> int | None:
    """The mount process ``mount_recorded`` noted in ``record``, if any."""
    try:
        return int((record / "pid").read_text())
    except (OSError, ValueError):
        return None


def _read_answer(fd: int, timeout: float) -> bytes:
    """What the mount process wrote to its ready pipe before closing it, or b"" on timeout."""
    deadline = time.monotonic() + timeout
    answer = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return answer
        answer += chunk
        if answer == READY:
            return answer
    return answer if answer else b"timed out waiting for the mount"


def _last_line(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def unmount(mountpoint: Path, *, pid: int | None, timeout: float = EXIT_TIMEOUT) -> None:
    """Unmount ``mountpoint`` and wait for its mount process ``pid`` to end.

    Fine when nothing is mounted there and when the process is gone.  A
    process that does not exit within ``timeout`` after the unmount gets
    SIGTERM, then SIGKILL.  Raises BackendError if the mount stays.
    """
    _fusermount_unmount(mountpoint)
    alive = pid is not None and _is_mount_process(pid, mountpoint)
    if pid is not None and alive and not _wait_gone(pid, timeout):
        _signal(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, timeout)
    if is_mounted(mountpoint):
        raise BackendError(f"{mountpoint} is still mounted after unmount")


def _fusermount_unmount(mountpoint: Path) -> None:
    if not is_mounted(mountpoint):
        return
    for args in (["-u"], ["-u", "-z"]):  # lazily only when busy
        done = subprocess.run(
            ["fusermount3", *args, str(mountpoint)], capture_output=True, text=True, check=False
        )
        if done.returncode == 0 or not is_mounted(mountpoint):
            return
    raise BackendError(f"fusermount3 -u {mountpoint} failed: {done.stderr.strip()}")


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is a mount point in this mount namespace (a dead FUSE one too)."""
    return Path(os.path.abspath(mountpoint)) in mount_points()


def mount_points() -> list[Path]:
    """Every mount point of this mount namespace, in mount order."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split(" ")
            if len(fields) > 4:
                points.append(Path(_unescape(fields[4])))
    return points


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _is_mount_process(pid: int, mountpoint: Path) -> bool:
    """Whether ``pid`` still is the mount process of ``mountpoint`` (pids get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in args and os.fsencode(str(mountpoint)) in args


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Reap it if it is our child; a zombie would look alive forever.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)
