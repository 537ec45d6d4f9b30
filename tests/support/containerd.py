"""A private containerd, and ``ctr-remote`` turning test images into eStargz.

``run_containerd`` starts Debian's ``containerd`` with a config file of its
own: its own root, state, opt directory and socket, no CRI plugin, no
snapshotters that need special filesystems, so it touches nothing of the
machine's containerd (if any) and leaves no process behind.  Images go in
with ``ctr image import`` from an OCI archive (``tests.images`` builds
them) and are converted with ``ctr-remote image optimize --no-optimize
--oci``, which needs no snapshotter and runs nothing.  The result can be
exported as an OCI layout or pushed to a loopback registry.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import images
from tests.support.processes import stop

TOOLS = ("containerd", "ctr", "ctr-remote", "umoci", "skopeo")
NAMESPACE = "lazyfs-test"
START_TIMEOUT = 30.0
# Plugins that would reach outside the private directories or need a
# filesystem the test machine may lack; none is needed to convert images.
_DISABLED = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)


def missing_tools() -> list[str]:
    """What the eStargz fixtures lack on this machine: tools, or root."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (containerd's content store and metadata)")
    return missing


@dataclass(frozen=True)
class Containerd:
    """A running private containerd; ``ctr`` and ``ctr_remote`` talk to it."""

    address: Path
    root: Path
    process: subprocess.Popen[bytes]

    def ctr(self, *args: str | Path) -> str:
        return images.run("ctr", "--address", self.address, "--namespace", NAMESPACE, *args)

    def ctr_remote(self, *args: str | Path) -> str:
        return images.run("ctr-remote", "--address", self.address, "--namespace", NAMESPACE, *args)


def _config(workdir: Path, address: Path) -> Path:
    disabled = ", ".join(f'"{name}"' for name in _DISABLED)
    config = workdir / "config.toml"
    config.write_text(
        "\n".join(
            [
                "version = 2",
                f'root = "{workdir / "root"}"',
                f'state = "{workdir / "state"}"',
                f"disabled_plugins = [{disabled}]",
                "[grpc]",
                f'  address = "{address}"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{workdir / "opt"}"',
                "",
            ]
        )
    )
    return config


def _listening(address: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(address))
        except OSError:
            return False
        return True


@contextmanager
def run_containerd(workdir: Path) -> Iterator[Containerd]:
    """Start a private containerd under ``workdir``; stop it on exit.

    Its socket lives in a short temporary directory of its own: a Unix
    socket path has a limit of 108 bytes, which pytest's directories pass.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sockets = Path(tempfile.mkdtemp(prefix="lazyfs-ctd-"))
    address = sockets / "containerd.sock"
    log_path = workdir / "containerd.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["containerd", "--config", str(_config(workdir, address))],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(address):
            if process.poll() is not None:
                raise RuntimeError(f"containerd exited: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not listen in {START_TIMEOUT}s")
            time.sleep(0.02)
        yield Containerd(address, workdir / "root", process)
    finally:
        stop(process, timeout=20)
        log.close()
        shutil.rmtree(sockets, ignore_errors=True)


def import_archive(containerd: Containerd, archive: Path) -> None:
    """Import an OCI archive; its images keep the names its index gives them."""
    # No unpacking: that would need a snapshotter and mounts, and nothing here runs.
    containerd.ctr("images", "import", "--no-unpack", archive)


def to_estargz(containerd: Containerd, source: str, target: str) -> None:
    """Convert image ``source`` into the eStargz image ``target``, with OCI media types.

    ``--no-optimize`` converts without running the image: with profiling,
    optimize has failed on a layer that lacks its parent directories' entries.
    """
    containerd.ctr_remote("images", "optimize", "--no-optimize", "--oci", source, target)


def export_layout(containerd: Containerd, ref: str, out: Path) -> Path:
    """Export image ``ref`` as an OCI layout directory ``out``; its tag is ``ref``'s."""
    with tempfile.TemporaryDirectory(prefix="lazyfs-export-") as tmp:
        archive = Path(tmp) / "image.tar"
        containerd.ctr("images", "export", archive, ref)
        out.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            for member in tar:
                _extract_plain(tar, member, out)
    return out


def _extract_plain(tar: tarfile.TarFile, member: tarfile.TarInfo, out: Path) -> None:
    """Extract ``member`` of an image archive under ``out``: a directory or a regular file.

    Written out here, not by ``extractall(filter="data")``: Debian's Python
    3.11.2 predates that filter. An archive holds nothing else; any other
    member, or a name that leaves ``out``, fails the test.
    """
    parts = Path(member.name).parts
    if not parts or Path(member.name).is_absolute() or ".." in parts:
        raise ValueError(f"image archive member {member.name!r} leaves its directory")
    path = out.joinpath(*parts)
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
    elif member.isfile():
        path.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        with source, path.open("xb") as target:
            shutil.copyfileobj(source, target)
    else:
        raise ValueError(f"image archive member {member.name!r} is not a file or directory")


# Tries of one push. Debian's containerd 1.6 has once, in a CI run, cut the
# stream of a blob that ``ctr`` pushed from its content store ("rpc error:
# code = Internal desc = unexpected EOF"); some 150 pushes here, 55 of
# them on a machine loaded three times over, never did. A push is
# idempotent: what the registry has is not sent again.
PUSH_TRIES = 3


def push(containerd: Containerd, ref: str, dest: str) -> None:
    """Push image ``ref`` to ``dest`` (``127.0.0.1:PORT/name:tag``) over plain HTTP.

    Only that cut stream is tried again; any other failure, or the same one
    ``PUSH_TRIES`` times, fails the fixture with every try's error.
    """
    errors: list[str] = []
    while True:
        try:
            containerd.ctr("images", "push", "--plain-http", dest, ref)
            return
        except RuntimeError as error:
            errors.append(str(error))
            if "unexpected EOF" not in str(error) or len(errors) == PUSH_TRIES:
                raise RuntimeError("\n".join(errors)) from None
