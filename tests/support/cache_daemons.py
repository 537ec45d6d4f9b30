"""Cache daemons started by the tests as real processes, and a registry proxy that holds blobs.

- ``run_daemon``: ``lazyfs daemon`` over a cache directory, in the
  foreground as systemd runs it; stopped on exit (SIGTERM, then SIGKILL),
  also when the test failed. ``kill_recorded`` ends a daemon a mount
  started by itself, found by its ``daemon.pid``.
- ``wait_for``: polls a condition up to a deadline, for states another
  process reaches (a daemon answering, a count reached); never a sleep to
  win a race.
- ``GatedProxy``: forwards to a registry, but holds every blob request
  until the test opens the gate, and counts them: what lets two readers'
  misses meet at the daemon before its one fetch goes out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import requests

from lazyfs.cache.client import status
from lazyfs.cache.framing import ProtocolError
from lazyfs.cache.messages import StatusOk
from tests.support.httpserver import relay, serve
from tests.support.processes import stop, zombie

ROOT = Path(__file__).resolve().parents[2]
PID_NAME = "daemon.pid"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def daemon_status(cache_dir: Path) -> StatusOk | None:
    try:
        return status(cache_dir)
    except (OSError, ProtocolError):
        return None


def daemon_argv(
    work_dir: Path, cache_dir: Path, size: str = "64MB", *, background: bool = True
) -> list[str]:
    quiet = [] if background else ["--no_background_fetch"]
    return [sys.executable, "-m", "lazyfs", "--work_dir", str(work_dir),
            "--cache_dir", str(cache_dir), "--cache_size", size, *quiet, "daemon"]  # fmt: skip


@contextlib.contextmanager
def run_daemon(
    work_dir: Path, cache_dir: Path, *, background: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """``lazyfs daemon`` running and answering; its log is ``work_dir/daemon-<n>.log``.
    Without ``background``, it fetches only what is read or asked for."""
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"daemon-{len(list(work_dir.glob('daemon-*.log')))}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            daemon_argv(work_dir, cache_dir, background=background),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            assert process.poll() is None, log_path.read_text()
            return daemon_status(cache_dir) is not None

        wait_for(up, "the cache daemon to answer")
        yield process
    finally:
        stop(process)


def recorded_daemon(cache_dir: Path) -> int | None:
    """The pid in ``daemon.pid`` when it is a live ``lazyfs daemon``."""
    try:
        pid = int((cache_dir / PID_NAME).read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"lazyfs" in args and b"daemon" in args else None


def kill_recorded(cache_dir: Path) -> None:
    """End the daemon ``daemon.pid`` names, if it still runs, and wait until it is gone."""
    pid = recorded_daemon(cache_dir)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or zombie(pid), "the daemon to end")


@dataclass
class GatedProxy:
    """Counts blob requests (their Range headers) and holds each until ``gate`` is set."""

    gate: threading.Event = field(default_factory=threading.Event)
    ranges: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def blob_requests(self) -> int:
        with self.lock:
            return len(self.ranges)


@contextlib.contextmanager
def run_gated_proxy(upstream: str, proxy: GatedProxy) -> Iterator[str]:
    """Serve ``proxy`` in front of ``upstream``; yields its host (``127.0.0.1:PORT``)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if "/blobs/" in self.path:
                with proxy.lock:
                    proxy.ranges.append(self.headers.get("Range", ""))
                assert proxy.gate.wait(60), "the gate was never opened"
            sent = {k: v for k, v in self.headers.items() if k in ("Accept", "Range")}
            answer = requests.get(upstream + self.path, headers=sent, timeout=30)
            relay(self, answer, ("Content-Type", "Content-Range", "Docker-Content-Digest"))

    with serve(Handler) as url:
        try:
            yield url.removeprefix("http://")
        finally:
            proxy.gate.set()  # no handler left waiting when the test ends
