"""Starting the process that adopts an image's remote layers (``lazyfs.provision.adopt``).

Apart from that module so that a start imports only this: the lock, the
spawn and the CPU share. See ``lazyfs.provision.adopt`` for what the
process does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
from pathlib import Path

from providers.append_log import open_log
from providers.fslock import take_lock
from providers.manifest import ImageManifest
from providers.reaping import SPAWN_DEFAULTS, reap_later

LOG_NAME = "adopt.log"
# The autogroup nice value of the process: the least CPU share there is.
NICE = 19


def adopt_lock(store_root: Path, reference: str, platform: str) -> Path:
    """The lock held while image ``reference`` is adopted into the store at ``store_root``."""
    key = hashlib.sha256(f"{reference}\n{platform}".encode()).hexdigest()
    return store_root / "locks" / f"adopt-{key}.lock"


def adopt_later(
    store_root: Path,
    cache_dir: Path,
    manifest: ImageManifest,
    log_dir: Path,
    limits: tuple[int, int] | None = None,
) -> int | None:
    """Start the process that adopts ``manifest``'s remote layers as they complete; its pid.

    None when a process adopts the image already: its adopt lock is held.
    The lock is taken here and handed to the process (``--lock-fd``), so
    checking and spawning are one step. ``limits`` (max layer size, max
    ratio) when not the defaults. Reaped by a thread here if it ends first;
    otherwise it outlives this process. Raises OSError when it cannot be
    started.
    """
    # Taken as every lock of the store is (``providers.fslock``): GC removes the lock
    # files no one holds (``lazyfs.store.lock_sweep``): one per image adopted stayed.
    taken = take_lock(adopt_lock(store_root, manifest.reference, manifest.platform), wait=False)
    if taken is None:
        return None
    lock_fd = _above_std(taken)  # the same open file, so the same lock
    try:
        argv = [sys.executable, "-P", "-m", "lazyfs.provision.adopt",
                "--store", str(store_root), "--cache-dir", str(cache_dir),
                "--reference", manifest.reference, "--platform", manifest.platform,
                "--follow", "--lock-fd", str(lock_fd)]  # fmt: skip
        if limits is not None:
            argv += ["--max-layer-size", str(limits[0]), "--max-layer-ratio", str(limits[1])]
        pid = _spawn(argv, log_dir, lock_fd)
    finally:
        os.close(lock_fd)  # the process holds the lock through its own copy of it
    # Its own autogroup since setsid: lowered before it has imported much.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(NICE))
    # A `lazyfs run` lives as long as its container: no zombie meanwhile.
    reap_later(pid)
    return pid


def _above_std(fd: int) -> int:
    """``fd`` moved to 3 or above: a caller started with stdin, stdout or stderr closed
    may get one of those numbers, which the spawn's file actions replace in the child."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _spawn(argv: list[str], log_dir: Path, lock_fd: int) -> int:
    """Spawn ``argv`` detached, its output to ``adopt.log``, keeping ``lock_fd`` (3 or above)."""
    log_fd = _above_std(open_log(log_dir / LOG_NAME))  # renamed to .1 once past its cap
    try:
        return os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
                # dup2 onto itself clears close-on-exec in this child only (POSIX).
                (os.POSIX_SPAWN_DUP2, lock_fd, lock_fd),
            ],
            setsid=True,  # Ctrl-C at the terminal of `lazyfs run` does not end it
            setsigdef=SPAWN_DEFAULTS,
        )
    finally:
        os.close(log_fd)
