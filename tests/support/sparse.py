"""Sparse files and the GNU tar layers that hold them, made and unpacked by GNU tar itself.

``make_tree`` writes a tree of sparse files (holes at the start, the middle
and the end, a file that is all hole, one of many extents so that old GNU
headers need extension blocks and a PAX 1.0 map more than one block) and,
right after the sparse ``etc/public``, a private ``etc/shadow``: a reader
that serves a sparse entry as raw tar bytes leaks it.  ``gnu_tar`` archives
it with ``tar --sparse`` in each of GNU tar's four sparse forms;
``gnu_extract`` unpacks a layer as GNU tar does, the reference every backend
is compared with.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import images

# GNU tar's sparse forms: old GNU 'S' headers, and the three PAX encodings.
FORMS = ("gnu", "0.0", "0.1", "1.0")
MiB = 1 << 20
SECRET = b"root:$6$very-secret-hash:19000:0:99999:7:::\n"
# A few of the files, by path: apparent size and (offset, data) written.
FILES: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    "etc/public": (3 * MiB, [(0, b"public\n" * 700), (MiB + 123, b"middle")]),
    "var/log/lastlog": (16 * MiB, [(10 * MiB, b"\x01" * 292)]),  # ends in a hole
    "var/lib/empty-start": (2 * MiB, [(2 * MiB - 5, b"tail!")]),  # starts with one
    "var/lib/all-hole": (3 * MiB, []),
    "var/lib/many": (
        200 * 16 * 1024,
        [(i * 16 * 1024 + 7, b"%04d" % i * 300) for i in range(200)],
    ),
}


def make_tree(root: Path) -> Path:
    """Write the sparse tree under ``root`` (made here) and return it."""
    for path, (size, writes) in FILES.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for offset, data in writes:
                os.pwrite(fd, data, offset)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    (root / "etc" / "shadow").write_bytes(SECRET)
    os.chmod(root / "etc" / "shadow", 0o600)
    (root / "etc" / "plain").write_bytes(b"not sparse\n" * 100)
    for directory in (root, *(p for p in root.rglob("*") if p.is_dir())):
        os.utime(directory, (1_600_000_000, 1_600_000_000))
    for file in (p for p in root.rglob("*") if p.is_file()):
        os.utime(file, (1_600_000_000, 1_600_000_000))
    return root


def expected(path: str) -> bytes:
    """What ``FILES[path]`` reads as."""
    size, writes = FILES[path]
    data = bytearray(size)
    for offset, chunk in writes:
        data[offset : offset + len(chunk)] = chunk
    return bytes(data)


def gnu_tar(tree: Path, out: Path, form: str) -> Path:
    """``tree``'s contents as a tar in the sparse ``form`` of ``FORMS``, entries in a fixed order.

    etc/public comes right before etc/shadow, so a reader that runs past
    etc/public's stored bytes reads etc/shadow's.
    """
    names = ["etc", "etc/public", "etc/shadow", "etc/plain", "var"]
    fmt = ["--format=gnu"] if form == "gnu" else ["--format=posix", f"--sparse-version={form}"]
    subprocess.run(
        [
            *("tar", "-C", str(tree), "-c", "--sparse", *fmt, "--numeric-owner"),
            *("-f", str(out), "--no-recursion", *names[:4], "--recursion", *names[4:]),
        ],
        check=True,
        capture_output=True,
    )
    return out


def gnu_extract(tar: Path, dest: Path) -> Path:
    """``tar`` unpacked by GNU tar into ``dest`` (made here), as root would."""
    dest.mkdir(parents=True)
    subprocess.run(
        ["tar", "-C", str(dest), "-x", "--numeric-owner", "-p", "-f", str(tar)],
        check=True,
        capture_output=True,
    )
    return dest


def regular_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def allocated(path: Path) -> int:
    """Bytes the file takes on disk."""
    return os.stat(path).st_blocks * 512


BIG = "var/big"  # in ``image_dir``'s image: 1 GiB apparent, 4 KiB of data in its middle
GiB = 1 << 30


def image_dir(work: Path) -> Path:
    """An image directory in ``work`` with sparse:latest: ``make_tree`` and ``BIG``, one
    layer made by GNU tar (kept as ``work/layer.tar``, the directory is ``work/images``)."""
    tree = make_tree(work / "tree")
    with (tree / BIG).open("wb") as big:
        big.seek(GiB // 2)
        big.write(b"b" * 4096)
        big.truncate(GiB)
    tar = gnu_tar(tree, work / "layer.tar", "1.0")
    layout = work / "oci"
    images.run("umoci", "init", "--layout", layout)
    images.run("umoci", "new", "--image", f"{layout}:latest")
    images.run("umoci", "raw", "add-layer", "--image", f"{layout}:latest", tar)
    directory = work / "images"
    images.to_oci_dir(layout, "latest", directory / "sparse:latest")
    return directory
