"""The store's tmp/ cleaning holds across pid namespaces sharing the store.

A writer in another pid namespace (``unshare --pid --fork``, as an agent in a
container beside a tool on the host) stores a blob through ``Store.ingest``
and waits on a pipe while its temporary file is in ``tmp/``. The pid in that
file's name is the writer's in its namespace, chosen to be a pid no process
has here: judged by the pid, the file of a live pull looked like a leftover
and went, and the pull failed. A writer that died there leaves a file that
does go. Pipes sequence every step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazyfs.store.disk import Store
from providers.digest import Digest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# A guard against a hang, far beyond any wait a test needs.
GUARD = 60

# Forks until a process of the new namespace has pid argv[2] (pids there are
# handed out in order from 1), which then stores a blob: its bytes are sent
# only once the test, told "writing", answers on stdin.
LIVE_WRITER = """
import hashlib, os, sys
from pathlib import Path

root, want = Path(sys.argv[1]), int(sys.argv[2])
while True:
    pid = os.fork()
    if pid == 0:
        if os.getpid() == want:
            break
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if pid >= want:
        sys.exit(os.waitstatus_to_exitcode(status) if pid == want else 3)

from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.manifest import Layer

data = b"the layer's bytes"
layer = Layer("sha256:" + hashlib.sha256(data).hexdigest(), "application/octet-stream", len(data))


class Held:
    sent = False

    def read(self, size=-1):
        if self.sent:
            return b""
        print("writing", flush=True)
        sys.stdin.readline()  # the test has cleaned tmp/
        self.sent = True
        return data

    def close(self):
        pass


Store(root).ingest(layer, Held)
print("stored", layer.digest, flush=True)
"""

# Makes a temporary file in tmp/, names it, and dies without removing it.
DEAD_WRITER = """
import os, sys
from pathlib import Path

from lazyfs.store.disk import Store
from providers.digest import Digest

with Store(Path(sys.argv[1])).temp_file() as (path, out):
    out.write(b"half")
    out.flush()
    print(path.name, flush=True)
    os._exit(0)
"""


def _in_new_pid_namespace(script: str, *args: str) -> list[str]:
    # --kill-child: the namespace goes with unshare, also when the test kills it.
    return ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", script, *args]


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_live_writers_temp_file_in_another_pid_namespace_stays(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    # A pid that names no process here, for the writer over there.
    want = next(pid for pid in range(300, 5000) if not _alive_here(pid))

    dead = subprocess.run(
        _in_new_pid_namespace(DEAD_WRITER, str(store.root)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=True,
    )
    leftover = dead.stdout.strip()
    assert (store.tmp / leftover).is_file()

    writer = subprocess.Popen(
        _in_new_pid_namespace(LIVE_WRITER, str(store.root), str(want)),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline() == "writing\n"
        live = sorted(entry.name for entry in store.tmp.iterdir() if entry.name != leftover)
        assert len(live) == 1 and live[0].startswith(f"{want}."), live

        store.clean_tmp()

        assert sorted(entry.name for entry in store.tmp.iterdir()) == live
        writer.stdin.write("go on\n")
        writer.stdin.flush()
        said = writer.stdout.readline().split()
        assert writer.wait(GUARD) == 0
        assert said[:1] == ["stored"]
        assert store.has_blob(Digest(said[1]))
        assert list(store.tmp.iterdir()) == []
    finally:
        writer.kill()
        writer.wait(GUARD)
