"""Pulls of one image that waited for a pull that failed fail with it, not one by one.

Several ``lazyfs pull`` processes of one image find its pull lock held (here by
the test, standing for another process's pull), and wait.  Once it is free,
one of them resolves the image against a registry that takes the connection
and never answers (``--docker_registry_timeout 1``), and fails; the others,
which waited through that attempt, fail at once with its one-line error and
exit status, without asking the registry again: the listener sees one
connection, the first attempt's.  A pull begun later, which did not wait,
tries afresh.  GC leaves the record until its waiters had time to read it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.store.disk import Store
from lazyfs.store.lock_sweep import FAILED_KEPT
from providers.platforms import host_platform
from tests.support.lazyfs_cli import REPO

PULLS = 5
REFERENCE = "docker.io/library/rich:latest"
BOUND = 120.0  # bounds a hung test; never reached when it passes


@dataclass
class Silent:
    """A loopback listener that takes connections, counts them, and never answers."""

    url: str
    held: list[socket.socket] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(self.held)


@contextmanager
def silent_listener() -> Iterator[Silent]:
    server = socket.create_server(("127.0.0.1", 0))
    silent = Silent(f"http://127.0.0.1:{server.getsockname()[1]}")

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the test is over
            silent.held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield silent
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=BOUND)
        for conn in silent.held:
            conn.close()


def _argv(work: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "--debug",
            "--docker_registry", url, "--docker_registry_timeout", "1", "pull", "rich"]  # fmt: skip


@dataclass
class Pull:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    waiting: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "waiting for its pull by another process" in line:
                self.waiting.set()

    def errors(self) -> list[str]:
        """What it printed that is not a debug or warning line."""
        said = ("lazyfs: DEBUG:", "lazyfs: WARNING:")
        return [line for line in self.lines if not line.startswith(said)]


def _image_lock(work: Path) -> tuple[Store, str]:
    """The store of ``work`` and the name of the lock ``REFERENCE``'s pulls take
    (``DockerProvider._fetch``'s)."""
    key = f"{REFERENCE}\n{host_platform()}"
    return Store(work / "store" / "docker"), "image-" + hashlib.sha256(key.encode()).hexdigest()


def test_pulls_that_waited_for_a_failed_pull_fail_with_its_error_at_once(tmp_path: Path) -> None:
    work = tmp_path / "work"
    subprocess.run([sys.executable, "-m", "lazyfs", "--work_dir", str(work), "images"],
                   cwd=REPO, check=True, capture_output=True, timeout=BOUND)  # fmt: skip
    store, name = _image_lock(work)
    with silent_listener() as silent:
        pulls: list[Pull] = []
        readers: list[threading.Thread] = []
        try:
            with store.lock(name):  # another process's pull, under way
                for _ in range(PULLS):
                    process = subprocess.Popen(
                        _argv(work, silent.url), cwd=REPO, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    pulls.append(pull := Pull(process))
                    readers.append(reader := threading.Thread(target=pull.read, daemon=True))
                    reader.start()
                # Released once every pull waits for it (a bound only for an old lazyfs that
                # does not say it waits: then they are let go as they are).
                deadline = time.monotonic() + 30
                for pull in pulls:
                    pull.waiting.wait(timeout=max(0.0, deadline - time.monotonic()))
            for pull in pulls:
                pull.process.wait(timeout=BOUND)
        finally:
            for pull in pulls:
                if pull.process.poll() is None:
                    pull.process.kill()
                pull.process.wait()
            for reader in readers:
                reader.join(timeout=BOUND)
        manifest = f"{silent.url}/v2/library/rich/manifests/latest"
        line = f"lazyfs: {REFERENCE}: no answer from {manifest} within 1 s"
        assert [pull.errors() for pull in pulls] == [[line]] * PULLS
        assert [pull.process.returncode for pull in pulls] == [1] * PULLS
        # The first attempt's request, and none of the others'.
        assert silent.connections == 1
        assert all(pull.waiting.is_set() for pull in pulls), [p.lines for p in pulls]
        # A pull that did not wait tries afresh, and fails as it finds.
        again = subprocess.run(_argv(work, silent.url), cwd=REPO, capture_output=True,
                               text=True, timeout=BOUND, stdin=subprocess.DEVNULL)  # fmt: skip
        assert again.returncode == 1
        assert silent.connections == 2
    # GC sweeps the record once its waiters had time to read it (FAILED_KEPT), not before.
    failed = store.locks / f"{name}.failed"
    assert failed.is_file()
    gc = [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "gc"]
    subprocess.run(gc, cwd=REPO, check=True, capture_output=True, timeout=BOUND)
    assert failed.is_file()
    facts = json.loads(failed.read_bytes())
    facts["began"] = time.time() - FAILED_KEPT - 1
    failed.write_text(json.dumps(facts))
    subprocess.run(gc, cwd=REPO, check=True, capture_output=True, timeout=BOUND)
    assert not failed.exists()
