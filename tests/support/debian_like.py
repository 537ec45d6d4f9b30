"""An image shaped like Debian + python3, built from this (Debian) host's packages, no network.

Three layers, as an application image on Debian has them: a minbase-like
base (libc, coreutils, bash, dpkg, perl-base, tar, tzdata...), then python3
with its standard library and the libraries it links, then a small app.
Each package's files are taken as ``dpkg -L`` lists them, laid out as
Debian does (``/lib``, ``/bin``, ``/sbin`` and ``/lib64`` are symlinks into
``/usr``), about 100 MB unpacked.  The app prints ``APP_LINE``, reading a
few MB of it: the interpreter, the libraries it links and the modules
``import json`` needs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.support import images

BASE = (
    "base-files", "libc6", "libcrypt1", "libtinfo6", "zlib1g", "libssl3", "libuuid1",
    "coreutils", "bash", "dpkg", "perl-base", "tar", "sed", "grep", "findutils",
    "util-linux", "tzdata", "netbase",
)  # fmt: skip
PYTHON = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11",
    "python3-minimal", "libexpat1", "libffi8", "libsqlite3-0", "libncursesw6",
    "libreadline8", "libbz2-1.0", "liblzma5", "media-types", "libdb5.3", "libgdbm6",
)  # fmt: skip
APP_LINE = "hello from a lazily pulled python"
# It parses JSON, so the interpreter loads a package of its standard library.
APP = f"import json\nprint(json.loads({json.dumps({'line': APP_LINE})!r})['line'])\n"
COMMAND = ("python3", "/srv/app/main.py")
_USR_LINKS = ("bin", "sbin", "lib", "lib64")


def missing() -> list[str]:
    """The packages (or tools) this host lacks to build the image."""
    if shutil.which("dpkg-query") is None:
        return ["dpkg-query"]
    found = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\n", *BASE, *PYTHON],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    return [package for package in (*BASE, *PYTHON) if package not in found]


def _in_image(path: str) -> str | None:
    """Where host path ``path`` goes in the image: its parent resolved (merged /usr)."""
    parent, name = os.path.split(path)
    if not name:
        return None
    relative = os.path.relpath(os.path.join(os.path.realpath(parent), name), "/")
    return None if relative.startswith("..") or relative == "." else relative


def _package_paths(packages: tuple[str, ...]) -> dict[str, str]:
    """Image path -> host path, for every file, directory and link of ``packages``."""
    listed = subprocess.run(
        ["dpkg-query", "-L", *packages], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    paths: dict[str, str] = {}
    for host in listed:
        host = host.strip()
        if not host.startswith("/") or not os.path.lexists(host):
            continue  # "diverted by" lines, files removed since
        target = _in_image(host)
        if target is None or target.startswith(("usr/share/doc/", "proc/", "sys/", "dev/")):
            continue
        paths[target] = host
        # Every parent gets an entry too, with the host directory's own attributes.
        parent = os.path.dirname(target)
        while parent and parent not in paths:
            paths[parent] = "/" + parent
            parent = os.path.dirname(parent)
    return paths


def _layer(paths: dict[str, str], out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for target in sorted(paths):
            tar.add(paths[target], arcname=target, recursive=False)
        for name, data in (extra or {}).items():
            for directory in ("srv", "srv/app"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out


def build(workdir: Path, tag: str = "latest") -> Path:
    """Build the image as ``workdir/oci:tag`` (umoci gzips each layer); returns the layout."""
    layout = workdir / "oci"
    workdir.mkdir(parents=True, exist_ok=True)
    images.run("umoci", "init", "--layout", layout)
    image = f"{layout}:{tag}"
    images.run("umoci", "new", "--image", image)
    base = _package_paths(BASE)
    for name in _USR_LINKS:
        if os.path.islink(f"/{name}"):
            base[name] = f"/{name}"  # merged /usr: the host's own symlinks
    python = {k: v for k, v in _package_paths(PYTHON).items() if k not in base}
    app = {"srv/app/main.py": APP.encode()}
    for number, (paths, extra) in enumerate(((base, None), (python, None), ({}, app))):
        tar = _layer(paths, workdir / f"layer{number}.tar", extra)
        images.run("umoci", "raw", "add-layer", "--image", image, tar)
        tar.unlink()
    images.run(
        "umoci", "config", "--image", image, "--config.env", "PATH=/usr/bin:/bin",
        *[arg for part in COMMAND for arg in ("--config.cmd", part)],
    )  # fmt: skip
    return layout
