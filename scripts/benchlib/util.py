"""Small helpers: running tools, timing, mounts the harness makes itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from backends.mounts import is_mounted, mount, unmount, unmount_all_under


class ToolError(RuntimeError):
    """A tool the harness runs failed; the message carries its stderr."""


def run(
    args: Sequence[str | Path], *, quiet: bool = True, env: dict[str, str] | None = None
) -> str:
    """Run a tool to completion; raise ToolError with its stderr on failure."""
    proc = subprocess.run(
        [str(a) for a in args],
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip()[-2000:]
        raise ToolError(f"{' '.join(map(str, args))} failed ({proc.returncode}): {detail}")
    return proc.stdout or ""


def now() -> float:
    return time.perf_counter()


def drop_caches() -> None:
    """Empty the page, dentry and inode caches so the next pass reads the disk.

    ``sync`` first: dirty pages cannot be dropped, and a pending writeback
    would land in the next timed pass.
    """
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as out:
        out.write("3\n")


def settle() -> None:
    """Write back what earlier runs left dirty, so it is not paid by the next one."""
    os.sync()


@contextlib.contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary directory on ``parent``'s filesystem, unmounted-under and removed after."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        # Never delete through a mount someone forgot: it could reach shared data.
        unmount_all_under(path)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def mounted(source: str, target: Path, fstype: str, options: str = "") -> Iterator[Path]:
    """mount(2) for the duration of the block."""
    target.mkdir(parents=True, exist_ok=True)
    mount(source, target, fstype, 0, options)
    try:
        yield target
    finally:
        unmount(target)


@contextlib.contextmanager
def kernel_overlay(lowers: Sequence[Path], target: Path) -> Iterator[Path]:
    """A read-only kernel overlayfs of ``lowers`` (bottom first) at ``target``."""
    # overlayfs lists lowerdir top first.
    lowerdir = ":".join(str(p) for p in reversed(lowers))
    with mounted("overlay", target, "overlay", f"lowerdir={lowerdir}") as path:
        yield path


@contextlib.contextmanager
def fuse_overlay(lowers: Sequence[Path], target: Path) -> Iterator[Path]:
    """A read-only fuse-overlayfs of ``lowers`` at ``target``.

    Run in the foreground (``-f``) so the harness owns the process: after the
    unmount it is waited for, and killed if it lingers, so none is left.
    """
    target.mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in reversed(lowers))
    proc = subprocess.Popen(
        ["fuse-overlayfs", "-f", "-o", f"lowerdir={lowerdir}", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_mounted(target, proc)
        yield target
    finally:
        try:
            unmount(target)
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_mounted(target: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Return once ``target`` is a mount point; raise if the daemon died or took too long."""
    deadline = time.monotonic() + timeout
    resolved = target.resolve()
    while time.monotonic() < deadline:
        if is_mounted(resolved):
            return
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise ToolError(f"fuse-overlayfs exited ({proc.returncode}): {err.strip()}")
        time.sleep(0.01)
    raise ToolError(f"fuse-overlayfs did not mount {target} within {timeout:.0f}s")
