"""Test images built with real tools, in every form the providers read.

Layers are tars crafted here with ``tarfile`` so a test controls every entry
(whiteouts, opaque markers, hardlinks, device nodes, owners, nanosecond
mtimes, xattrs); ``umoci`` assembles them into an OCI layout and ``skopeo``
converts that into other forms. The forms no tool here writes (legacy
``docker save``, docker 25's OCI-plus-manifest.json save, zstd layers) are
built from the layout in Python.

``build_rich_image`` is the standard image that conformance tests unpack with
every backend and compare with ``umoci_unpack``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

# 2020-09-13T12:26:40.123456789Z: nanoseconds, so a backend that rounds shows.
BASE_MTIME_NS = 1_600_000_000_123_456_789
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


@dataclass(frozen=True)
class Entry:
    """One tar entry. ``kind``: file, dir, symlink, hardlink, char, block, fifo.

    ``mode`` is the permission bits including setuid/setgid/sticky; ``target``
    is the link target (a path in the layer for hardlinks).
    """

    path: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = BASE_MTIME_NS
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


def whiteout(path: str, mtime_ns: int = BASE_MTIME_NS) -> Entry:
    """The entry that hides ``path`` of lower layers."""
    parent, _, name = path.rpartition("/")
    return Entry(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mtime_ns=mtime_ns)


def opaque(directory: str, mtime_ns: int = BASE_MTIME_NS) -> Entry:
    """The entry that hides every lower child of ``directory``."""
    return Entry(f"{directory}/.wh..wh..opq", mtime_ns=mtime_ns)


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def write_layer(entries: Sequence[Entry], out: Path) -> Path:
    """Write ``entries`` as an uncompressed PAX tar."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.type = _TYPES[entry.kind]
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.linkname = entry.target
            info.devmajor, info.devminor = entry.rdev
            seconds, nanos = divmod(entry.mtime_ns, 1_000_000_000)
            info.mtime = seconds
            pax = {"mtime": f"{seconds}.{nanos:09d}"}
            for name, value in entry.xattrs.items():
                # tarfile writes str values back as their original bytes.
                pax[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
            info.pax_headers = pax
            data = entry.data if entry.kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def run(*args: str | Path) -> str:
    """Run a tool; on failure raise with its stderr, which is what explains it."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def build_oci_image(
    workdir: Path,
    layers: Sequence[Sequence[Entry]],
    tag: str = "latest",
    config: ImageConfig | None = None,
) -> Path:
    """Build image ``tag`` in the OCI layout ``workdir/oci`` (created if absent).

    Calling it again with another tag adds another image to the same layout.
    umoci gzips each layer as it adds it.
    """
    layout = workdir / "oci"
    if ":" in str(layout):
        raise ValueError(f"umoci and skopeo cannot name a layout path with ':' ({layout})")
    if not (layout / "oci-layout").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        run("umoci", "init", "--layout", layout)
    image = f"{layout}:{tag}"
    run("umoci", "new", "--image", image)
    for i, entries in enumerate(layers):
        tar = write_layer(entries, workdir / f"{tag}-layer{i}.tar")
        run("umoci", "raw", "add-layer", "--image", image, tar)
        tar.unlink()
    config = config or ImageConfig()
    args: list[str | Path] = ["umoci", "config", "--image", image]
    for flag, values in (
        ("--config.entrypoint", config.entrypoint),
        ("--config.cmd", config.cmd),
        ("--config.env", config.env),
    ):
        for value in values:
            args += [flag, value]
    if config.working_dir:
        args += ["--config.workingdir", config.working_dir]
    if config.user:
        args += ["--config.user", config.user]
    run(*args)
    return layout


def umoci_unpack(layout: Path, tag: str, dest: Path) -> Path:
    """Unpack ``layout:tag`` into the bundle ``dest`` as root; returns the rootfs."""
    run("umoci", "unpack", "--image", f"{layout}:{tag}", dest)
    return dest / "rootfs"


# --- exporters -----------------------------------------------------------------


def _skopeo_copy(layout: Path, tag: str, out: Path, transport: str, name: str) -> Path:
    """``skopeo copy`` the image to ``transport:out:name``.

    It writes to a ':'-free temporary path first: skopeo splits names on ':'.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lazyfs-image-") as tmp:
        staged = Path(tmp) / "image"
        run("skopeo", "copy", "-q", f"oci:{layout}:{tag}", f"{transport}:{staged}:{name}")
        shutil.move(staged, out)
    return out


def to_docker_archive(layout: Path, tag: str, out_tar: Path, name: str) -> Path:
    """A docker-archive tar (manifest.json form, uncompressed layers) tagged ``name:tag``."""
    return _skopeo_copy(layout, tag, out_tar, "docker-archive", f"{name}:{tag}")


def to_oci_archive(layout: Path, tag: str, out_tar: Path, ref_name: str | None = None) -> Path:
    """An OCI layout tar whose index names the image ``ref_name`` (default: ``tag``)."""
    return _skopeo_copy(layout, tag, out_tar, "oci-archive", ref_name or tag)


def to_oci_dir(layout: Path, tag: str, out_dir: Path, ref_name: str | None = None) -> Path:
    """An OCI layout directory holding only this image, named ``ref_name`` (default: ``tag``)."""
    return _skopeo_copy(layout, tag, out_dir, "oci", ref_name or tag)


@dataclass
class _Image:
    """One image of a layout, read by hand so the tooling does not test itself."""

    index_entry: dict[str, Any]
    manifest: dict[str, Any]
    config: bytes

    def layer_blobs(self, layout: Path) -> list[bytes]:
        return [_blob(layout, layer["digest"]) for layer in self.manifest["layers"]]


def layer_paths(layout: Path, tag: str) -> list[tuple[str, Path]]:
    """(digest, blob path) of each layer of image ``tag`` in ``layout``, bottom first."""
    return [
        (layer["digest"], layout / "blobs" / Path(*layer["digest"].split(":")))
        for layer in _read_image(layout, tag).manifest["layers"]
    ]


def _blob(layout: Path, digest: str) -> bytes:
    algo, hexpart = digest.split(":")
    return (layout / "blobs" / algo / hexpart).read_bytes()


def _read_image(layout: Path, tag: str) -> _Image:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(_blob(layout, entry["digest"]))
            return _Image(entry, manifest, _blob(layout, manifest["config"]["digest"]))
    raise KeyError(f"{layout} has no image {tag}")


def _put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    hexpart = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hexpart).write_bytes(data)
    return {"digest": f"sha256:{hexpart}", "size": len(data)}


def _uncompressed(blob: bytes) -> bytes:
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def to_zstd_oci_dir(layout: Path, tag: str, out_dir: Path) -> Path:
    """An OCI layout dir of the image with every layer recompressed as zstd.

    umoci 0.4.7 writes gzip only; the config's diff_ids stay as they are,
    since they are digests of the uncompressed tars.
    """
    to_oci_dir(layout, tag, out_dir)
    image = _read_image(out_dir, tag)
    old = {layer["digest"] for layer in image.manifest["layers"]}
    layers = []
    for blob in image.layer_blobs(out_dir):
        packed = zstandard.ZstdCompressor(level=3).compress(_uncompressed(blob))
        layers.append({"mediaType": OCI_LAYER_ZSTD, **_put_blob(out_dir, packed)})
    manifest = {**image.manifest, "layers": layers}
    entry = {**image.index_entry, **_put_blob(out_dir, json.dumps(manifest).encode())}
    index = {"schemaVersion": 2, "manifests": [entry]}
    (out_dir / "index.json").write_text(json.dumps(index))
    for digest in old | {image.index_entry["digest"]}:
        (out_dir / "blobs" / "sha256" / digest.split(":")[1]).unlink()
    return out_dir


def _add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = BASE_MTIME_NS // 1_000_000_000
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def to_legacy_docker_save(layout: Path, tag: str, out_tar: Path, name: str) -> Path:
    """A pre-1.10 ``docker save`` tar: ``repositories`` and an ``<id>/`` per layer.

    Only the top ``<id>/json`` carries the image's config; lower ones carry a
    different Cmd, so a puller that reads the wrong json is caught.
    """
    image = _read_image(layout, tag)
    config = json.loads(image.config)
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        parent = ""
        blobs = image.layer_blobs(layout)
        for i, blob in enumerate(blobs):
            layer = _uncompressed(blob)
            image_id = hashlib.sha256(
                f"{parent} {hashlib.sha256(layer).hexdigest()}".encode()
            ).hexdigest()
            top = i == len(blobs) - 1
            meta: dict[str, Any] = {
                "id": image_id,
                "created": config.get("created", "1970-01-01T00:00:00Z"),
                "container_config": {"Cmd": ["/bin/sh", "-c", f"#(nop) layer {i}"]},
                "config": config.get("config", {}) if top else {"Cmd": [f"lower-{i}"]},
                "os": "linux",
                "architecture": config.get("architecture", "amd64"),
            }
            if parent:
                meta["parent"] = parent
            _add(tar, f"{image_id}/", None)
            _add(tar, f"{image_id}/VERSION", b"1.0")
            _add(tar, f"{image_id}/json", json.dumps(meta).encode())
            _add(tar, f"{image_id}/layer.tar", layer)
            parent = image_id
        _add(tar, "repositories", json.dumps({name: {tag: parent}}).encode())
    return out_tar


def to_docker25_save(layout: Path, tag: str, out_tar: Path, name: str) -> Path:
    """What ``docker save`` writes since docker 25: an OCI layout with
    uncompressed layers, plus ``manifest.json`` and ``repositories`` pointing
    into its blobs, and containerd's image name annotation in the index.
    """
    image = _read_image(layout, tag)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        config = _put_blob(root, image.config)
        layers = [
            {"mediaType": OCI_LAYER_TAR, **_put_blob(root, _uncompressed(blob))}
            for blob in image.layer_blobs(layout)
        ]
        manifest = {**image.manifest, "layers": layers}
        manifest_desc = _put_blob(root, json.dumps(manifest).encode())
        full = name if "/" in name else f"library/{name}"
        annotations = {
            "io.containerd.image.name": f"docker.io/{full}:{tag}",
            "org.opencontainers.image.ref.name": tag,
        }
        entry = {
            "mediaType": image.index_entry["mediaType"],
            **manifest_desc,
            "annotations": annotations,
        }
        (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        blob_path = "blobs/sha256/{}".format
        saved = [
            {
                "Config": blob_path(config["digest"].split(":")[1]),
                "RepoTags": [f"{name}:{tag}"],
                "Layers": [blob_path(layer["digest"].split(":")[1]) for layer in layers],
            }
        ]
        (root / "manifest.json").write_text(json.dumps(saved))
        (root / "repositories").write_text(
            json.dumps({name: {tag: config["digest"].split(":")[1]}})
        )
        out_tar.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out_tar, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return out_tar


# --- the rich image -------------------------------------------------------------

# security.capability v2 (VFS_CAP_REVISION_2 | effective): cap_net_bind_service.
CAP_NET_BIND_SERVICE = bytes.fromhex("0100000200040000000000000000000000000000")
RICH_CONFIG = ImageConfig(
    entrypoint=("/bin/tool",),
    cmd=("--flag", "value with space"),
    env=("PATH=/usr/bin:/bin", "RICH=1"),
    working_dir="/home/user",
    user="1000:1000",
)


def _t(n: int) -> int:
    """Distinct mtimes with nanoseconds, one per entry that sets one."""
    return BASE_MTIME_NS + n * 86_400_000_000_001


def _dir(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, n: int = 0) -> Entry:
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid, mtime_ns=_t(n))


RICH_LAYERS: list[list[Entry]] = [
    [  # base
        *(_dir(d, n=i) for i, d in enumerate(["bin", "etc", "usr", "usr/bin", "dev", "srv"])),
        _dir("usr/local", 0o2775, 0, 50, n=7),
        _dir("tmp", 0o1777, n=8),
        _dir("home", n=9),
        _dir("home/user", 0o755, 1000, 1000, n=10),
        _dir("data", n=11),
        _dir("data/dir", n=12),
        _dir("opaque", n=13),
        _dir("opaque/sub", n=14),
        _dir("srv/www", n=15),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mtime_ns=_t(20)),
        Entry("etc/shadow", data=b"root:*:1::::::\n", mode=0o640, gid=42, mtime_ns=_t(21)),
        Entry("etc/hostname", data=b"rich\n", xattrs={"user.origin": b"layer1"}, mtime_ns=_t(22)),
        Entry("etc/remove-me", data=b"hidden by layer 2\n"),
        Entry("etc/also-remove", data=b"hidden by layer 3\n"),
        Entry("etc/recreated", data=b"old\n"),
        Entry("etc/abs", "symlink", target="/etc/passwd", mtime_ns=_t(23)),
        Entry("etc/dangling", "symlink", target="/nonexistent", mtime_ns=_t(24)),
        Entry(
            "bin/tool",
            data=b"#!/bin/sh\necho tool\n",
            mode=0o4755,
            xattrs={"security.capability": CAP_NET_BIND_SERVICE},
            mtime_ns=_t(25),
        ),
        Entry("bin/sh", "symlink", target="tool", mtime_ns=_t(26)),
        Entry("usr/bin/prog", data=b"prog\n" * 1000, mode=0o755, mtime_ns=_t(27)),
        Entry("usr/bin/prog-link", "hardlink", target="usr/bin/prog"),
        Entry("bin/prog2", "hardlink", target="usr/bin/prog"),
        Entry("usr/bin/up", "symlink", target="../../bin/tool"),
        Entry("dev/null", "char", mode=0o666, rdev=(1, 3), mtime_ns=_t(28)),
        Entry("dev/sda", "block", mode=0o660, gid=6, rdev=(8, 0)),
        Entry("dev/fifo", "fifo", mode=0o600, mtime_ns=_t(29)),
        Entry("data/file", data=b"a file, then a directory\n"),
        Entry("data/dir/inner", data=b"in a directory, then a file\n"),
        Entry("opaque/a", data=b"hidden by the opaque marker\n"),
        Entry("opaque/sub/c", data=b"hidden too\n"),
        Entry("srv/www/index.html", data=b"<p>gone</p>\n"),
        Entry("home/user/.profile", data=b"export X=1\n", mode=0o600, uid=1000, gid=1000),
    ],
    [  # middle: whiteouts, an opaque dir, type changes
        _dir("opaque", 0o750, n=30),
        opaque("opaque"),
        Entry("opaque/new", data=b"only child left\n", mtime_ns=_t(31)),
        whiteout("etc/remove-me"),
        whiteout("etc/recreated"),
        whiteout("srv/www"),
        _dir("data/file", 0o711, n=32),
        Entry("data/file/child", data=b"child\n", uid=2000, gid=3000, mtime_ns=_t(33)),
        Entry("data/dir", data=b"now a file\n", mode=0o600, mtime_ns=_t(34)),
        Entry(
            "etc/passwd",
            data=b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            mtime_ns=_t(35),
        ),
        Entry("usr/bin/tool2", data=b"tool2\n", mode=0o755, uid=1000, gid=1000, mtime_ns=_t(36)),
        Entry("usr/bin/tool2-hl", "hardlink", target="usr/bin/tool2"),
    ],
    [  # top
        Entry("etc/recreated", data=b"new\n", mtime_ns=_t(40)),
        whiteout("etc/also-remove"),
        _dir("home/user", 0o700, 1001, 1001, n=41),
        Entry(
            "etc/hostname",
            data=b"rich-top\n",
            xattrs={"user.origin": b"layer3", "user.binary": b"\x00\x01\xff"},
            mtime_ns=_t(42),
        ),
        Entry("bin/sh", data=b"#!/bin/tool\n", mode=0o755, mtime_ns=_t(43)),
    ],
]


def build_rich_image(workdir: Path, tag: str = "latest") -> Path:
    """The standard rich image (``RICH_LAYERS``, ``RICH_CONFIG``) as an OCI layout."""
    return build_oci_image(workdir, RICH_LAYERS, tag, RICH_CONFIG)
