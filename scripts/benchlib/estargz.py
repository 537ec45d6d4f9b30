"""eStargz forms of the benchmark's images, made by the real tool, pushed to a registry.

``push_estargz`` imports an image into a private ``containerd`` (its own
root, state and socket under the run's scratch directory; no CRI, no
snapshotter that needs a special filesystem; stopped at the end), converts it
with ``ctr-remote image optimize --no-optimize --oci`` (what Debian's
stargz-snapshotter ships; ``--no-optimize`` runs nothing, so no prefetch
profile is recorded and every layer gets the no-prefetch landmark) and pushes
the result to a loopback registry.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib.util import ToolError, run, scratch_dir

TOOLS = ("containerd", "ctr", "ctr-remote")
_NAMESPACE = "lazyfs-bench"
_DISABLED = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)


def _listening(address: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(address))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def _containerd(work: Path) -> Iterator[Path]:
    """A private containerd under ``work``; yields its socket's address."""
    # A Unix socket path is limited to 108 bytes: keep it short.
    sockets = Path(tempfile.mkdtemp(prefix="lazyfs-bench-ctd-"))
    address = sockets / "containerd.sock"
    disabled = ", ".join(f'"{name}"' for name in _DISABLED)
    config = work / "containerd.toml"
    config.write_text(
        f'version = 2\nroot = "{work / "root"}"\nstate = "{work / "state"}"\n'
        f"disabled_plugins = [{disabled}]\n"
        f'[grpc]\n  address = "{address}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{work / "opt"}"\n'
    )
    with open(work / "containerd.log", "wb") as log:
        process = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not _listening(address):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ToolError(f"containerd did not start; see {work / 'containerd.log'}")
                time.sleep(0.05)
            yield address
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for leftover in sockets.iterdir():
                leftover.unlink()
            sockets.rmdir()


def push_estargz(layout: Path, tag: str, scratch: Path, dest: str) -> None:
    """Convert the OCI image ``layout:tag`` to eStargz and push it as ``dest`` (plain HTTP)."""
    with scratch_dir(scratch, "estargz-") as work:
        source, converted = f"localhost/bench/source:{tag}", f"localhost/bench/esgz:{tag}"
        archive = work / "source.tar"  # skopeo splits its arguments on ':'
        run(["skopeo", "copy", "-q", f"oci:{layout}:{tag}", f"oci-archive:{archive}:{source}"])
        with _containerd(work) as address:
            ctr = ["--address", str(address), "--namespace", _NAMESPACE]
            run(["ctr", *ctr, "images", "import", "--no-unpack", archive])
            run(["ctr-remote", *ctr, "images", "optimize", "--no-optimize", "--oci",
                 source, converted])  # fmt: skip
            run(["ctr", *ctr, "images", "push", "--plain-http", dest, converted])
