"""The real ``lazyfs`` command, run as a subprocess the way a user runs it.

``Lazyfs`` runs it on a work dir and a local image directory, ``AppcLazyfs``
with the Appc provider and a simple discovery prefix; ``one_line_error``
checks that a failure printed one line and no traceback.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shlex
import shutil
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DEEP = 1100  # levels of the e2e deep image: past Python's recursion limit (1000)


@dataclass
class Lazyfs:
    work_dir: Path
    image_dir: Path

    def argv(self, *args: str) -> list[str]:
        """The ``lazyfs`` command line for ``args``, on this work dir and image dir."""
        return [
            sys.executable,
            "-m",
            "lazyfs",
            "--work_dir",
            str(self.work_dir),
            "--docker_registry",
            str(self.image_dir),
            *args,
        ]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result

    def stored(self) -> list[str]:
        """The references ``lazyfs images`` lists, sorted."""
        lines = self("images").stdout.splitlines()[1:]
        return sorted(line.split()[0] for line in lines)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )


@dataclass
class AppcLazyfs:
    work_dir: Path
    prefix: str

    def argv(self, *args: str, prefix: str | None = None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lazyfs",
            "--work_dir",
            str(self.work_dir),
            "--image_providers",
            "appc,docker",
            "--appc_simple_discovery_uri_prefix",
            self.prefix if prefix is None else prefix,
            *args,
        ]

    def __call__(
        self, *args: str, check: bool = True, prefix: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args, prefix=prefix)
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed; asserts it is one line and no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("lazyfs: ")
    return lines[0]


def in_terminal(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with a terminal as its stdin, stdout and stderr (``script``'s pty)."""
    assert shutil.which("script"), "needs script (util-linux)"
    return subprocess.run(
        ["script", "-qec", shlex.join(argv), "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def on_new_terminal(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """``argv`` started in a session of its own whose controlling terminal is a new pty,
    as stdin, stdout and stderr; the process and the pty's main side, to read and close."""
    main, tty = pty.openpty()
    try:
        started = subprocess.Popen(
            argv,
            stdin=tty,
            stdout=tty,
            stderr=tty,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
    except BaseException:
        os.close(main)
        raise
    finally:
        os.close(tty)
    return started, main


def read_until(main: int, marker: bytes, seen: bytes = b"", timeout: float = 60.0) -> bytes:
    """What the pty ``main`` shows, read until ``marker`` is in it (after ``seen``)."""
    while marker not in seen:
        assert select.select([main], [], [], timeout)[0], seen
        try:
            seen += os.read(main, 4096)
        except OSError as error:  # EIO: the process ended first; say what it wrote
            raise AssertionError(seen) from error
    return seen


def mount_process_alive(pid: int) -> bool:
    """Whether ``pid`` is still a lazyfs mount process (not a process that took its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False  # it exited between the kill and the read
    return cmdline.find(b"lazyfs.fs.mount_main") >= 0
