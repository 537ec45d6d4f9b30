"""A pull that fails or is interrupted leaves no temporary file in the store's tmp/.

An image of two gzip layers on a loopback ``docker-registry``, behind a
proxy that sends half of the small layer and then holds it, so that the
small layer's temporary file is being written, its thread waiting on the
network, when the pull ends: because the large layer filled the work dir's
disk (a small tmpfs the test mounts), or because of Ctrl-C. The large
layer is sent only once the small one is held, so the order never depends
on timing. A pull also removes what processes that are gone left there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.httpserver import relay, serve
from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_servers import Registry, push_oci_image, run_registry
from tests.support.small_disks import small_disk

pytestmark = pytest.mark.integration

# A guard against a hang, far beyond any wait a test needs.
GUARD = 60
SMALL = 256 << 10  # the layer held halfway
LARGE = 8 << 20  # the layer that does not fit on the small disk
DISK = "4m"


def _gzip_layer(name: str, size: int) -> tuple[bytes, str]:
    """A gzip layer of one file of ``size`` random bytes; (blob, diff_id)."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo(name)
        member.size = size
        tar.addfile(member, io.BytesIO(os.urandom(size)))
    raw = plain.getvalue()
    return gzip.compress(raw, compresslevel=1), "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class BigImage:
    registry: Registry
    small: str  # blob digests
    large: str


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigImage]:
    work = tmp_path_factory.mktemp("registry")
    with run_registry(work, work / "storage") as registry:
        small, small_diff = _gzip_layer("small", SMALL)
        large, large_diff = _gzip_layer("large", LARGE)
        digests = push_oci_image(
            registry.url, "library/big", "plain",
            [(small, {}), (large, {})], [small_diff, large_diff], {},
        )  # fmt: skip
        yield BigImage(registry, digests[0], digests[1])


@dataclass
class Hold:
    """The proxy's state: the small layer held halfway until ``release``."""

    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def hold() -> Iterator[Hold]:
    state = Hold()
    yield state
    state.release.set()  # lets the proxy's threads end


@pytest.fixture
def proxy(image: BigImage, hold: Hold) -> Iterator[str]:
    upstream = image.registry.url

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            sent = {k: v for k, v in self.headers.items() if k in ("Accept", "Authorization")}
            answer = requests.get(upstream + self.path, headers=sent, timeout=30)
            if self.path.endswith(image.small) and not hold.release.is_set():
                # Half the blob, then nothing: the client's thread waits in a read.
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content[: len(answer.content) // 2])
                self.wfile.flush()
                hold.held.set()
                hold.release.wait()
                return
            if self.path.endswith(image.large) and not hold.release.is_set():
                hold.held.wait(GUARD)  # the small layer's temp file is there by now
            names = ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate")
            relay(self, answer, names)

    with serve(Handler) as url:
        yield url


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``DISK`` for the work dir; unmounted afterwards, also on failure."""
    with small_disk(tmp_path / "disk", DISK, inodes=None) as where:
        yield where


def pull(work: Path, registry: str) -> list[str]:
    return [sys.executable, "-m", "lazyfs", "--work_dir", str(work),
            "--docker_registry", registry, "pull", "big:plain"]  # fmt: skip


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=GUARD, stdin=subprocess.DEVNULL
    )


def tmp_of(work: Path) -> list[str]:
    return sorted(entry.name for entry in (work / "store" / "docker" / "tmp").iterdir())


def test_a_full_disk_leaves_no_temp_file_and_a_retry_works(
    disk: Path, proxy: str, hold: Hold, image: BigImage
) -> None:
    work = disk / "work"
    failed = run(pull(work, proxy))
    assert "No space left on device" in one_line_error(failed)
    assert hold.held.is_set()  # the small layer was being written as the large one failed
    assert tmp_of(work) == []
    # With room again, the same pull succeeds, and leaves nothing in tmp/ either.
    subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
    hold.release.set()
    done = run(pull(work, proxy))
    assert done.returncode == 0, done.stderr
    layers = [layer["digest"] for layer in json.loads(done.stdout)["layers"]]
    assert layers == [image.small, image.large]
    assert tmp_of(work) == []


def test_ctrl_c_leaves_no_temp_file(proxy: str, hold: Hold, tmp_path: Path) -> None:
    work = tmp_path / "work"
    process = subprocess.Popen(
        pull(work, proxy),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        if not hold.held.wait(GUARD):
            pytest.fail("the small layer's download never started")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=GUARD)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, out, err) == (130, "", "lazyfs: interrupted\n")
    assert tmp_of(work) == []


def test_a_pull_removes_what_processes_that_are_gone_left(
    proxy: str, hold: Hold, tmp_path: Path
) -> None:
    hold.release.set()  # nothing held
    work = tmp_path / "work"
    tmp = work / "store" / "docker" / "tmp"
    tmp.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp / f"{gone.pid}.partial").write_bytes(b"x" * 4096)
    (tmp / f"{gone.pid}.scratch" / "layer").mkdir(parents=True)
    (tmp / f"{gone.pid}.scratch" / "layer" / "file").write_bytes(b"y")
    live = f"{os.getpid()}.in-flight"  # a process that is still there: its file is its own
    (tmp / live).write_bytes(b"z")
    done = run(pull(work, proxy))
    assert done.returncode == 0, done.stderr
    assert tmp_of(work) == [live]
