"""Ctrl-C and SIGTERM while a layer downloads, or while a retry waits: one line, nothing left.

A loopback proxy in front of the registry holds layer blob responses open
(or answers the first one 503) and says when a download has started, so
the signal lands there, never by timing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from backends.mounts import mounts_under
from providers.manifest import OCI_MANIFEST
from tests.support.httpserver import relay, serve
from tests.support.registry_servers import Registry

pytestmark = pytest.mark.integration

# A guard against a hang, far beyond any wait a test needs: without the fix the
# process waits out the 60 s read timeout of the held download.
GUARD = 40


@dataclass
class Hold:
    """What the proxy does to layer blob requests: hold them open, or first answer 503.

    ``started`` is set once the client is reading a held body, or, with
    ``fail_first``, once every layer got its 503 (the client is backing off).
    """

    layers: frozenset[str]
    fail_first: bool = False
    failed: set[str] = field(default_factory=set)
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, digest: str) -> bool:
        """Whether to answer 503 to this request for ``digest``."""
        with self.lock:
            if not self.fail_first or digest in self.failed:
                return False
            self.failed.add(digest)
            if self.failed == self.layers:
                self.started.set()  # every layer is backing off now
            return True


@pytest.fixture(scope="module")
def layers(plain_registry: Registry) -> frozenset[str]:
    response = requests.get(
        f"{plain_registry.url}/v2/library/rich/manifests/oci",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    )
    return frozenset(layer["digest"] for layer in response.json()["layers"])


@pytest.fixture
def hold(layers: frozenset[str]) -> Iterator[Hold]:
    held = Hold(layers)
    yield held
    held.release.set()  # lets the proxy's threads end


@pytest.fixture
def proxy(plain_registry: Registry, hold: Hold) -> Iterator[str]:
    upstream = plain_registry.url

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            digest = self.path.rsplit("/", 1)[-1]
            sent = {k: v for k, v in self.headers.items() if k in ("Accept", "Authorization")}
            answer = requests.get(upstream + self.path, headers=sent, timeout=30)
            if "/blobs/" in self.path and digest in hold.layers:
                self._hold(digest, answer.content)
                return
            relay(self, answer, ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate"))

        def _hold(self, digest: str, blob: bytes) -> None:
            if hold.fail(digest):
                self.send_response(503)
                self.send_header("Retry-After", "4")  # the client's longest backoff
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.wfile.flush()
                return
            # The blob's own first half: nothing wrong with what did arrive.
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[: len(blob) // 2])
            self.wfile.flush()
            if not hold.fail_first:
                hold.started.set()  # the client is reading the body now
            hold.release.wait()

    with serve(Handler) as url:
        yield url


def provision(work: Path, registry: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work)]
    argv += ["--docker_registry", registry, "provision", "c1", "rich:oci", "--backend", "copy"]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    process.send_signal(signum)
    try:
        out, err = process.communicate(timeout=GUARD)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def assert_nothing_left(work: Path) -> None:
    assert list((work / "provisioner" / "containers").iterdir()) == []
    assert mounts_under(work) == []


@pytest.mark.parametrize(
    ("signum", "status", "line"),
    [
        (signal.SIGINT, 130, "lazyfs: interrupted"),
        (signal.SIGTERM, 143, "lazyfs: stopped by SIGTERM"),
    ],
)
def test_a_signal_during_a_download_ends_with_one_line(
    proxy: str, hold: Hold, tmp_path: Path, signum: int, status: int, line: str
) -> None:
    process = provision(tmp_path, proxy)
    if not hold.started.wait(GUARD):
        process.kill()
        pytest.fail(f"the download never started: {process.communicate()}")
    assert stop(process, signum) == (status, "", line + "\n")
    assert_nothing_left(tmp_path)


def test_ctrl_c_during_a_retry_backoff_ends_with_one_line(
    proxy: str, hold: Hold, tmp_path: Path
) -> None:
    hold.fail_first = True  # then every retry is held open
    process = provision(tmp_path, proxy)
    if not hold.started.wait(GUARD):
        process.kill()
        pytest.fail(f"the download never started: {process.communicate()}")
    assert stop(process, signal.SIGINT) == (130, "", "lazyfs: interrupted\n")
    assert_nothing_left(tmp_path)
