"""The benchmark's images, built once with real tools and kept in the cache.

``debian``: a Debian bookworm minbase (debootstrap), then python3 installed
with apt in a chroot, then /usr/share/doc removed and a small app added: three
layers, about 250 MB unpacked, the shape of a typical application image.

``synthetic``: many small files in nested directories over two layers, the
shape that stresses per-file costs (metadata, lookups, opens).

Each image is written as a docker-archive ``NAME:TAG.tar`` in the cache's
image directory, which is what lazyfs' local puller reads, and as an OCI
layout with uncompressed layers for ``umoci unpack`` (so the peer does not pay
a gunzip that lazyfs does not).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchlib.util import mounted, run, scratch_dir

Log = Callable[[str], None]
MIRROR = "http://deb.debian.org/debian"
APP = 'print("hello from the lazyfs benchmark app")\n'


@dataclass(frozen=True)
class BenchImage:
    """An image the harness built: where lazyfs and the peers find it."""

    name: str  # NAME in NAME:TAG
    tag: str
    image_dir: Path  # holds NAME:TAG.tar for lazyfs' local puller
    oci_layout: Path  # the same image with uncompressed layers, for umoci
    command: tuple[str, ...]  # what the start measurement runs
    expect: str  # the line the command prints

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.tag}"


# Bumped when an image's recipe changes, so a cache built by an older harness is rebuilt.
RECIPES = {"debian": "1", "synthetic": "2"}


def _done_marker(cache: Path, name: str) -> Path:
    return cache / "images" / f".{name}.done"


def _built(cache: Path, name: str) -> bool:
    try:
        return _done_marker(cache, name).read_text().strip() == f"recipe {RECIPES[name]}"
    except FileNotFoundError:
        return False


def _export(layout: Path, tag: str, cache: Path, name: str) -> BenchImage:
    """docker-archive for lazyfs, plain OCI layout for umoci; then the done marker."""
    images = cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    plain = cache / "oci" / name
    shutil.rmtree(plain, ignore_errors=True)
    plain.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(cache, "export-") as tmp:
        # skopeo splits transport arguments on ':', so write without one, then move.
        staged = tmp / "image.tar"
        run(
            ["skopeo", "copy", "-q", f"oci:{layout}:{tag}", f"docker-archive:{staged}:{name}:{tag}"]
        )
        # From the docker-archive, skopeo keeps the layers uncompressed.
        run(["skopeo", "copy", "-q", f"docker-archive:{staged}", f"oci:{plain}:{tag}"])
        shutil.move(staged, images / f"{name}:{tag}.tar")
    _done_marker(cache, name).write_text(f"recipe {RECIPES[name]}\n")
    return _image(cache, name, tag)


GZIP_TAG = "gzip"


def gzip_reference(cache: Path, image: BenchImage) -> str:
    """``image`` with gzip layers, as registries serve them, for lazyfs' local puller.

    An OCI layout directory ``NAME:gzip`` beside the image's tar, made once
    from the plain layout with ``skopeo copy --dest-compress``.
    """
    target = image.image_dir / f"{image.name}:{GZIP_TAG}"
    marker = image.image_dir / f".{image.name}.{GZIP_TAG}.done"
    if not (marker.is_file() and marker.read_text() == _done_marker(cache, image.name).read_text()):
        shutil.rmtree(target, ignore_errors=True)
        with scratch_dir(cache, "gzip-") as tmp:
            staged = tmp / "layout"  # skopeo splits its arguments on ':'
            run(
                [
                    "skopeo", "copy", "-q", "--dest-compress",
                    f"oci:{image.oci_layout}:{image.tag}", f"oci:{staged}:{image.tag}",
                ]
            )  # fmt: skip
            shutil.move(staged, target)
        marker.write_text(_done_marker(cache, image.name).read_text())
    return f"{image.name}:{GZIP_TAG}"


def _image(cache: Path, name: str, tag: str) -> BenchImage:
    if name == "debian":
        command: tuple[str, ...] = ("python3", "/srv/app/main.py")
        expect = "hello from the lazyfs benchmark app"
    else:
        command = ("/bin/busybox", "echo", "ready")
        expect = "ready"
    return BenchImage(name, tag, cache / "images", cache / "oci" / name, command, expect)


@contextlib.contextmanager
def _umoci_image(work: Path, tag: str) -> Iterator[tuple[Path, Path]]:
    """A new empty image in ``work/layout`` and its unpacked bundle."""
    layout = work / "layout"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    bundle = work / "bundle"
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle])
    yield layout, bundle


def _repack(layout: Path, tag: str, bundle: Path) -> None:
    # --refresh-bundle: the next layer is diffed against this one, not the first.
    run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle])


def debian_image(cache: Path, log: Log) -> BenchImage:
    """The three-layer Debian + python3 image; built on first use (minutes, needs the mirror)."""
    name, tag = "debian", "bench"
    if _built(cache, name):
        return _image(cache, name, tag)
    log(f"building the debian image (debootstrap from {MIRROR}; a few minutes, once)")
    with scratch_dir(cache, "build-debian-") as work, _umoci_image(work, tag) as (layout, bundle):
        rootfs = bundle / "rootfs"
        run(["debootstrap", "--variant=minbase", "bookworm", rootfs, MIRROR])
        _repack(layout, tag, bundle)
        log("debian image: layer 1 (minbase) done; installing python3")
        # apt in the chroot needs /proc; it is unmounted again, also on failure,
        # before repack (which must not archive it).
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C",
        }
        with mounted("proc", rootfs / "proc", "proc"):
            run(["chroot", rootfs, "apt-get", "update", "-q"], env=env)
            run(
                [
                    "chroot",
                    rootfs,
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "python3",
                ],
                env=env,
            )
            run(["chroot", rootfs, "apt-get", "clean"], env=env)
        _repack(layout, tag, bundle)
        log("debian image: layer 2 (python3) done; adding the app")
        shutil.rmtree(rootfs / "usr/share/doc")
        app = rootfs / "srv/app"
        app.mkdir(parents=True, exist_ok=True)
        (app / "main.py").write_text(APP)
        _repack(layout, tag, bundle)
        run(
            [
                "umoci",
                "config",
                "--image",
                f"{layout}:{tag}",
                "--config.cmd",
                "python3",
                "--config.cmd",
                "/srv/app/main.py",
                "--config.env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--config.workingdir",
                "/srv/app",
            ]
        )
        return _export(layout, tag, cache, name)


def synthetic_image(cache: Path, log: Log, files: int = 20_000) -> BenchImage:
    """Two layers of small files (1-4 KiB) in nested directories, plus busybox to run.

    Recipe 2 added the empty /proc, /sys and /dev.

    Layer 1 holds 75% of the files; layer 2 adds the rest, rewrites some of
    layer 1's and deletes others (whiteouts), so the union has work to do.
    """
    name, tag = "synthetic", "bench"
    if _built(cache, name):
        return _image(cache, name, tag)
    log(f"building the synthetic image ({files} small files)")
    rng = random.Random(5)  # fixed seed: the same image on every machine
    with (
        scratch_dir(cache, "build-synthetic-") as work,
        _umoci_image(work, tag) as (layout, bundle),
    ):
        rootfs = bundle / "rootfs"
        # The mount points every real image has: runc needs them on a read-only rootfs.
        for directory in ("bin", "proc", "sys", "dev"):
            (rootfs / directory).mkdir(parents=True)
        shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
        (rootfs / "bin/sh").symlink_to("busybox")
        first = files * 3 // 4
        paths = [_nested_path(i) for i in range(files)]
        for path in paths[:first]:
            _write_small(rootfs / path, rng)
        _repack(layout, tag, bundle)
        for path in paths[first:]:
            _write_small(rootfs / path, rng)
        for path in rng.sample(paths[:first], files // 20):
            _write_small(rootfs / path, rng)  # rewritten: a new copy in layer 2
        for path in rng.sample(paths[:first], files // 40):
            with contextlib.suppress(FileNotFoundError):
                (rootfs / path).unlink()  # a whiteout in layer 2
        _repack(layout, tag, bundle)
        run(["umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", "/bin/sh"])
        return _export(layout, tag, cache, name)


def _nested_path(i: int) -> str:
    # 20 top dirs x 10 subdirs x ~100 files: deep enough to cost lookups.
    return f"data/d{i % 20:02d}/s{(i // 20) % 10}/f{i:06d}.dat"


def _write_small(path: Path, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(rng.randint(1024, 4096)))


def image_layers(image: BenchImage) -> list[Path]:
    """The layer tars of the plain OCI layout, bottom first (uncompressed)."""
    index = json.loads((image.oci_layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(_blob(image.oci_layout, manifest_digest).read_text())
    return [_blob(image.oci_layout, layer["digest"]) for layer in manifest["layers"]]


def _blob(layout: Path, digest: str) -> Path:
    algo, hexpart = digest.split(":", 1)
    return layout / "blobs" / algo / hexpart
