"""The ``lazyfs`` command loads what the command it runs uses, not the whole CLI.

Every container a Mesos-like agent starts runs ``lazyfs provision``, and the
first lazy mount of a machine starts ``lazyfs daemon`` and waits for it to
listen: what they import is part of every start.  A provision of a local
image loads no HTTP library (requests and urllib3 are for registries), no
protobuf JSON parser (for ``--image-file`` and ``--container-info`` only),
no Appc provider, and of the backends only the one it uses; the cache
daemon, by the time it listens, has loaded none of the provisioner, the
image providers, the store, the backends or the mount API: only the
parser, its own serving code and the registry client it fetches with.

Checked in fresh interpreters running the real command (``lazyfs.entry``,
as ``python -m lazyfs`` does), by the modules they have loaded.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from providers.digest import digest_bytes
from providers.manifest import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from tests.support.processes import stop

ROOT = Path(__file__).resolve().parents[2]

# What no command that handles local images needs.
REGISTRY = {"requests", "urllib3", "providers.registry", "providers.registry_http"}
NOT_FOR_LOCAL_PROVISION = REGISTRY | {
    "google.protobuf.json_format",
    "importlib.metadata",  # for --version only (and urllib3's own use)
    "lazyfs.images.appc",
    "providers.appc_store",
    "providers.appc_source",
    "lazyfs.cache.service",
    "lazyfs.cache.daemon",
    "lazyfs.cli_ps",
    "lazyfs.cli_gc",
    "lazyfs.cli_mount",
    "lazyfs.gc",
    "lazyfs.publish",
    "lazyfs.provision.devmount",
    # Backends other than the one asked for (copy, below).
    "backends.overlay",
    "backends.bind",
    "backends.fuse",
}
# The commands' code, which a daemon serving the cache never runs.
NOT_FOR_THE_DAEMON = {
    "google.protobuf.json_format",
    "lazyfs.provision",
    "lazyfs.images",
    "lazyfs.store",
    "lazyfs.fs",
    "lazyfs.tree",
    "lazyfs.publish",
    "lazyfs.gc",
    "lazyfs.cli_ps",
    "lazyfs.cli_gc",
    "lazyfs.cli_mount",
    "providers.appc_store",
    "providers.docker_local",
    "providers.transports",
    "backends.copy",
    "backends.bind",
    "backends.overlay",
    "backends.fuse",
    "backends.apply",
    "backends.extracted",
    # Checks of a layer the daemon has whole load them, not its start.
    "providers.diff_id",
    "providers.tar_stream",
    "isal",
}

# The command on ``sys.argv[2:]``, as ``python -m lazyfs`` runs it; what it
# loaded is written to ``sys.argv[1]`` when it exits.
COMMAND = """
import atexit, sys
out, sys.argv = sys.argv[1], ["lazyfs", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write("\\n".join(sys.modules)))
from lazyfs.entry import main
sys.exit(main())
"""

# The daemon on ``sys.argv[3:]``: once its socket ``sys.argv[2]`` takes a
# connection, what it has loaded is written to ``sys.argv[1]`` and it is
# asked to stop.  The watcher connects with the standard library only, so
# it loads nothing the daemon would not.
DAEMON = """
import os, signal, socket, sys, threading, time
out, sock, sys.argv = sys.argv[1], sys.argv[2], ["lazyfs", *sys.argv[3:]]

def watch():
    while True:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(sock)
            break
        except OSError:
            time.sleep(0.01)
        finally:
            probe.close()
    open(out, "w").write("\\n".join(sys.modules))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
from lazyfs.entry import main
sys.exit(main())
"""


def oci_layout(root: Path) -> Path:
    """A one-layer OCI image layout at ``root``, tagged ``t``, written by hand."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(data: bytes, media_type: str, **extra: object) -> dict[str, object]:
        digest = digest_bytes(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    layer = tar_bytes.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_bytes(layer)]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(json.dumps(config).encode(), OCI_CONFIG),
        "layers": [blob(gzip.compress(layer), OCI_LAYER_GZIP)],
    }
    tagged = blob(
        json.dumps(manifest).encode(),
        OCI_MANIFEST,
        annotations={"org.opencontainers.image.ref.name": "t"},
    )
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [tagged]}))
    return root


def loaded_by_command(out: Path, *args: str) -> set[str]:
    """Run ``lazyfs ARGS`` in a fresh interpreter; the modules it had loaded when it exited."""
    subprocess.run(
        [sys.executable, "-c", COMMAND, str(out), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return set(out.read_text().split())


def of(modules: set[str], names: set[str]) -> list[str]:
    """The modules of ``modules`` that are, or are inside, one of ``names``."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_provisioning_a_local_image_loads_no_registry_json_or_other_backend_code(
    tmp_path: Path,
) -> None:
    layout = oci_layout(tmp_path / "layout")
    work = tmp_path / "work"
    flags = ("--work_dir", str(work), "--docker_registry", str(tmp_path / "images"))
    modules = loaded_by_command(
        tmp_path / "modules",
        *flags,
        "provision",
        "--backend",
        "copy",
        "c1",
        f"oci:{layout}:t",
    )
    try:
        # It did provision, with the backend asked for.
        assert "backends.copy" in modules
        assert "lazyfs.provision.provisioner" in modules
        assert (work / "provisioner" / "containers" / "c1" / "info.json").is_file()
        assert of(modules, NOT_FOR_LOCAL_PROVISION) == []
    finally:
        subprocess.run(
            [sys.executable, "-m", "lazyfs", *flags, "destroy", "c1"],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )


def test_the_cache_daemon_listens_having_loaded_none_of_the_commands_code(
    tmp_path: Path,
) -> None:
    work, out = tmp_path / "work", tmp_path / "modules"
    work.mkdir(mode=0o700)
    cache = work / "cache"
    flags = ["--work_dir", str(work), "--cache_dir", str(cache)]
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(out), str(cache / "daemon.sock"), *flags, "daemon"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        daemon.wait(timeout=120)  # it stops itself once it has listened
    finally:
        stop(daemon)
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""
    modules = set(out.read_text().split())
    # It is the daemon, serving the cache, with its registry client.
    assert {"lazyfs.cache.service", "lazyfs.cache.daemon", "lazyfs.cache.upstream"} <= modules
    assert of(modules, NOT_FOR_THE_DAEMON) == []


def test_the_check_sees_what_a_command_loads(tmp_path: Path) -> None:
    """Not blind: a pull from a registry URL (refused: nothing listens there) loads its client."""
    work = tmp_path / "work"
    registry = "http://127.0.0.1:9"  # the discard port: nothing answers
    out = tmp_path / "modules"
    flags = ["--work_dir", str(work), "--docker_registry", registry]
    flags += ["--docker_registry_timeout", "1"]
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, str(out), *flags, "pull", "x/y:1"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert set(out.read_text().split()) >= REGISTRY
