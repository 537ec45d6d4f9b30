"""The local puller on small archives written here byte by byte (no tools needed)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from providers import oci_layout
from providers.digest import Digest, VerifyingReader, digest_bytes, digest_stream
from providers.docker_archive import normalize_repository, split_tag
from providers.docker_local import LocalName, LocalPuller, local_name
from providers.errors import BadImage, DigestMismatch, InvalidReference, NotFound
from providers.manifest import (
    DOCKER_LAYER_GZIP,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
)
from providers.oci_layout import TarFiles

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("docker.io/library/busybox:latest", LocalName("busybox", "latest", None)),
        ("busybox", LocalName("busybox", "latest", None)),
        ("docker.io/foo/bar:1.0", LocalName("foo/bar", "1.0", None)),
        ("localhost:5000/foo/bar:1.0", LocalName("localhost:5000/foo/bar", "1.0", None)),
        ("localhost:5000/foo/bar", LocalName("localhost:5000/foo/bar", "latest", None)),
        (f"busybox@{SHA}", LocalName("busybox", None, Digest(SHA))),
        (f"docker.io/library/busybox:1@{SHA}", LocalName("busybox", "1", Digest(SHA))),
        ("quay.io/library/x:2", LocalName("quay.io/library/x", "2", None)),
    ],
)
def test_local_name(reference: str, expected: LocalName) -> None:
    assert local_name(reference) == expected


@pytest.mark.parametrize(
    "reference",
    ["../etc:1", "foo/../../x", "/abs:1", "a//b", "busybox:bad/tag", "busybox@sha256:12", "x:"],
)
def test_local_name_rejects(reference: str) -> None:
    with pytest.raises(InvalidReference):
        local_name(reference)


def test_candidates_in_mesos_order(tmp_path: Path) -> None:
    assert local_name("foo/bar").candidates(tmp_path) == [
        tmp_path / "foo/bar:latest.tar",
        tmp_path / "foo/bar.tar",
        tmp_path / "foo/bar:latest",
    ]
    assert local_name("x:1").candidates(tmp_path) == [tmp_path / "x:1.tar", tmp_path / "x:1"]
    assert local_name(f"x@{SHA}").candidates(tmp_path) == [
        tmp_path / f"x@{SHA}.tar",
        tmp_path / f"x@{SHA}",
    ]


@pytest.mark.parametrize(
    ("name", "repo", "tag", "normalized"),
    [
        ("busybox:latest", "busybox", "latest", "docker.io/library/busybox"),
        ("foo/bar", "foo/bar", None, "docker.io/foo/bar"),
        ("localhost:5000/a:1", "localhost:5000/a", "1", "localhost:5000/a"),
        ("localhost/a", "localhost/a", None, "localhost/a"),
        ("docker.io/library/x:2", "docker.io/library/x", "2", "docker.io/library/x"),
    ],
)
def test_split_and_normalize(name: str, repo: str, tag: str | None, normalized: str) -> None:
    assert split_tag(name) == (repo, tag)
    assert normalize_repository(repo) == normalized


def _tar(path: Path, members: dict[str, bytes | tuple[str, str]]) -> Path:
    """A tar of regular files (bytes) and links (("sym" | "hard", target))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, value in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                info.type = tarfile.SYMTYPE if value[0] == "sym" else tarfile.LNKTYPE
                info.linkname = value[1]
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return path


def test_tar_files_follow_links_inside_the_tar(tmp_path: Path) -> None:
    files = TarFiles(
        _tar(
            tmp_path / "a.tar",
            {
                "./blob.tar": b"payload",
                "id/layer.tar": ("sym", "../blob.tar"),
                "hard": ("hard", "blob.tar"),
                "loop": ("sym", "loop"),
                "out": ("sym", "/../../etc/passwd"),
            },
        )
    )
    for name in ("blob.tar", "/blob.tar", "id/layer.tar", "hard"):
        where = files.location(name)
        assert where is not None and where.size == 7
        with oci_layout.open_location(where) as stream:
            assert stream.read() == b"payload"
    assert files.location("out") is None
    assert files.location("missing") is None
    with pytest.raises(BadImage, match="loop"):
        files.location("loop")


def test_compressed_archives_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x:1.tar").write_bytes(gzip.compress(b"\0" * 1024))
    with pytest.raises(BadImage, match="compressed"):
        LocalPuller(tmp_path).resolve("x:1")


def test_range_reads(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(100)))
    where = oci_layout.BlobLocation(path, 10, 20)
    with oci_layout.open_location(where) as stream:
        assert stream.read(5) == bytes(range(10, 15))
        assert stream.read() == bytes(range(15, 30))
        assert stream.read() == b""


# --- OCI layouts written by hand --------------------------------------------------


class Layout:
    """A tiny OCI layout directory: put blobs, then write index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = digest_bytes(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(self, layers: list[bytes], cmd: str = "x", **extra: Any) -> dict[str, Any]:
        layer_descs = [self.blob(gzip.compress(data), OCI_LAYER_GZIP) for data in layers]
        config = {
            "config": {"Cmd": [cmd]},
            "rootfs": {"type": "layers", "diff_ids": [digest_bytes(d) for d in layers]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.blob(
                json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
            ),
            "layers": layer_descs,
        }
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST, **extra)

    def index(self, entries: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        doc = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
        return self.blob(doc, OCI_INDEX, **extra)

    def write(self, entries: list[dict[str, Any]]) -> None:
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": entries})
        )


def _platform(os_name: str, arch: str) -> dict[str, Any]:
    return {"platform": {"os": os_name, "architecture": arch}}


def test_multi_platform_index_picks_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    layout = Layout(tmp_path / "multi:1")
    amd = layout.image([b"amd"], "amd", **_platform("linux", "amd64"))
    arm = layout.image([b"arm"], "arm", **_platform("linux", "arm64"))
    attestation = layout.image([b"att"], "att", **_platform("unknown", "unknown"))
    top = layout.index([attestation, amd, arm], annotations={oci_layout.REF_NAME: "1"})
    layout.write([top])
    puller = LocalPuller(tmp_path)
    image = puller.resolve("multi:1")
    assert image.config.cmd == ("arm",) and image.digest == arm["digest"]
    assert puller.resolve(f"multi:1@{top['digest']}").digest == arm["digest"]
    assert puller.resolve(f"multi:1@{amd['digest']}").config.cmd == ("amd",)
    monkeypatch.setattr("platform.machine", lambda: "s390x")
    with pytest.raises(NotFound, match="linux/s390x"):
        puller.resolve("multi:1")
    # One image without a platform, next to a buildkit attestation, is the image.
    bare = layout.image([b"bare"], "bare")
    marked = {k: v for k, v in attestation.items() if k != "platform"}
    marked["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
    layout.write([layout.index([marked, bare], annotations={oci_layout.REF_NAME: "1"})])
    assert puller.resolve("multi:1").config.cmd == ("bare",)


def test_multi_platform_index_honours_the_platform_asked_for(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "multi:1")
    amd = layout.image([b"amd"], "amd", **_platform("linux", "amd64"))
    arm = layout.image([b"arm"], "arm", **_platform("linux", "arm64"))
    layout.write([layout.index([amd, arm], annotations={oci_layout.REF_NAME: "1"})])
    for arch, cmd in (("amd64", "amd"), ("arm64", "arm")):
        puller = LocalPuller(tmp_path, oci_layout.Platform("linux", arch))
        assert puller.resolve("multi:1").config.cmd == (cmd,)


def test_index_entries_by_name(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "x:2")
    one = layout.image([b"1"], "one", annotations={oci_layout.REF_NAME: "1"})
    two = layout.image([b"2"], "two", annotations={oci_layout.REF_NAME: "2"})
    named = layout.image(
        [b"3"], "three", annotations={oci_layout.CONTAINERD_NAME: "docker.io/library/x:2"}
    )
    layout.write([one, two, named])
    assert LocalPuller(tmp_path).resolve("x:2").config.cmd == ("three",)
    layout.write([one, two])
    assert LocalPuller(tmp_path).resolve("x:2").config.cmd == ("two",)
    layout.write([one])
    assert LocalPuller(tmp_path).resolve("x:2").config.cmd == ("one",)
    layout.write([{**one, "annotations": {oci_layout.REF_NAME: "2"}}, two])
    with pytest.raises(BadImage, match="different images"):
        LocalPuller(tmp_path).resolve("x:2")
    layout.write([one, {**two, "annotations": {oci_layout.REF_NAME: "3"}}])
    with pytest.raises(NotFound, match="has 1, 3"):
        LocalPuller(tmp_path).resolve("x:2")


@pytest.mark.parametrize("damage", ["missing-blob", "size", "diff-ids", "no-layout", "deep"])
def test_broken_layouts(tmp_path: Path, damage: str) -> None:
    layout = Layout(tmp_path / "x:1")
    entry = layout.image([b"a", b"b"])
    blobs = layout.root / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    expected: type[Exception] = BadImage
    if damage == "missing-blob":
        (blobs / manifest["layers"][1]["digest"].split(":")[1]).unlink()
    elif damage == "size":
        entry = {**entry, "size": entry["size"] + 1}
        expected = DigestMismatch
    elif damage == "diff-ids":
        manifest["layers"].pop()
        entry = layout.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
    elif damage == "no-layout":
        (layout.root / "oci-layout").unlink()
    elif damage == "deep":
        for _ in range(oci_layout.INDEX_DEPTH_LIMIT + 1):
            entry = layout.index([{**entry, **_platform("linux", oci_layout.host_arch())}])
    layout.write([entry])
    with pytest.raises(expected):
        LocalPuller(tmp_path).resolve("x:1")


def test_blobs_stream_verified(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "x:1")
    layout.write([layout.image([b"a" * 5000, b"b"])])
    puller = LocalPuller(f"file://{tmp_path}")
    image = puller.resolve("x:1")
    for layer in image.layers:
        assert layer.media_type == OCI_LAYER_GZIP
        reader = VerifyingReader(puller.open(layer.digest), layer.digest, layer.size, "layer")
        assert digest_stream(reader)[0] == layer.digest  # type: ignore[arg-type]
        assert puller.read_range(layer.digest, 1, 3) == puller.open(layer.digest).read(4)[1:]


# --- docker save forms written by hand ---------------------------------------------


def _config(diff_ids: list[str], cmd: str = "top") -> bytes:
    return json.dumps({"config": {"Cmd": [cmd]}, "rootfs": {"diff_ids": diff_ids}}).encode()


def test_manifest_json_layers_named_or_hashed(tmp_path: Path) -> None:
    plain, packed_tar = b"plain layer", b"packed layer"
    packed = gzip.compress(packed_tar)
    config = _config([digest_bytes(plain), digest_bytes(packed_tar)])
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    plain_name = f"{hashlib.sha256(plain).hexdigest()}.tar"
    entry = {"Config": config_name, "RepoTags": ["x:1"], "Layers": [plain_name, "id/layer.tar"]}
    other = {**entry, "RepoTags": ["y:1"], "Layers": ["missing.tar", "id/layer.tar"]}
    members: dict[str, bytes | tuple[str, str]] = {
        "manifest.json": json.dumps([other, entry]).encode(),
        config_name: config,
        plain_name: plain,
        "id/layer.tar": packed,
    }
    _tar(tmp_path / "x:1.tar", members)
    image = LocalPuller(tmp_path).resolve("x:1")
    assert [(la.media_type, la.digest, la.diff_id) for la in image.layers] == [
        (OCI_LAYER_TAR, digest_bytes(plain), digest_bytes(plain)),
        (DOCKER_LAYER_GZIP, digest_bytes(packed), digest_bytes(packed_tar)),
    ]
    assert image.digest == digest_bytes(config) and image.config.cmd == ("top",)
    # An uncompressed layer that is not what the config's diff_id says.
    wrong = _config([digest_bytes(b"other"), digest_bytes(packed_tar)])
    wrong_name = f"{hashlib.sha256(wrong).hexdigest()}.json"
    _tar(
        tmp_path / "x:2.tar",
        {
            **members,
            wrong_name: wrong,
            "manifest.json": json.dumps([{**entry, "Config": wrong_name}]).encode(),
        },
    )
    with pytest.raises(DigestMismatch, match="diff_id"):
        LocalPuller(tmp_path).resolve("x:2")


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        ("config-name", DigestMismatch),
        ("not-list", BadImage),
        ("layers-count", BadImage),
        ("bzip2", BadImage),
        ("missing-layer", BadImage),
    ],
)
def test_broken_manifest_json(tmp_path: Path, damage: str, error: type[Exception]) -> None:
    layer = b"layer"
    config = _config([digest_bytes(layer)])
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    entry: dict[str, Any] = {"Config": config_name, "RepoTags": None, "Layers": ["l.tar"]}
    members: dict[str, bytes | tuple[str, str]] = {config_name: config, "l.tar": layer}
    if damage == "config-name":
        entry["Config"] = "b" * 64 + ".json"
        members[entry["Config"]] = config
    elif damage == "layers-count":
        entry["Layers"] = ["l.tar", "l.tar"]
    elif damage == "bzip2":
        members["l.tar"] = bz2.compress(layer)
    elif damage == "missing-layer":
        del members["l.tar"]
    members["manifest.json"] = json.dumps(entry if damage == "not-list" else [entry]).encode()
    _tar(tmp_path / "x:1.tar", members)
    with pytest.raises(error):
        LocalPuller(tmp_path).resolve("x:1")


def _legacy(
    chain: list[tuple[str, str | None]], layer: bytes = b"l"
) -> dict[str, bytes | tuple[str, str]]:
    members: dict[str, bytes | tuple[str, str]] = {}
    for image_id, parent in chain:
        meta: dict[str, Any] = {"id": image_id, "config": {"Cmd": [image_id[:1]]}}
        if parent:
            meta["parent"] = parent
        members[f"{image_id}/json"] = json.dumps(meta).encode()
        members[f"{image_id}/layer.tar"] = layer + image_id[:1].encode()
    members["repositories"] = json.dumps({"x": {"1": chain[0][0]}}).encode()
    return members


def test_legacy_parent_chain(tmp_path: Path) -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    _tar(tmp_path / "x:1.tar", _legacy([(c, b), (b, a), (a, None)]))
    image = LocalPuller(tmp_path).resolve("docker.io/library/x:1")
    assert [la.digest for la in image.layers] == [digest_bytes(b"l" + x.encode()) for x in "abc"]
    assert image.config.cmd == ("c",)
    _tar(tmp_path / "y:1.tar", _legacy([(b, a), (a, b)]))
    with pytest.raises(BadImage, match="ancestor"):
        LocalPuller(tmp_path).resolve("y:1")
    _tar(tmp_path / "z:1.tar", _legacy([(a, "../../etc")]))
    with pytest.raises(BadImage, match="not an image id"):
        LocalPuller(tmp_path).resolve("z:1")


def test_oci_index_wins_over_manifest_json(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "build")
    entry = layout.image([b"a"], "from-index", annotations={oci_layout.REF_NAME: "1"})
    layout.write([entry])
    members: dict[str, bytes | tuple[str, str]] = {
        str(p.relative_to(layout.root)): p.read_bytes()
        for p in layout.root.rglob("*")
        if p.is_file()
    }
    members["manifest.json"] = b"[]"
    _tar(tmp_path / "x:1.tar", members)
    assert LocalPuller(tmp_path).resolve("x:1").config.cmd == ("from-index",)


def test_a_layout_blob_made_a_symlink_after_resolve_is_not_read_by_range(tmp_path: Path) -> None:
    # A lazy read asks ranges of the blob, never checked whole: the range too must
    # be opened inside the layout, not through a link put there since.
    images = tmp_path / "images"
    layout = Layout(images / "x:1")
    layout.write([layout.image([b"a" * 5000])])
    puller = LocalPuller(images)
    (layer,) = puller.resolve("x:1").layers
    outside = tmp_path / "secret"
    outside.write_bytes(b"not the layout's")
    blob = images / "x:1" / "blobs" / "sha256" / layer.digest.split(":")[1]
    blob.unlink()
    blob.symlink_to(outside)
    with pytest.raises(BadImage, match="is a symlink"):
        puller.read_range(layer.digest, 0, 8)


def test_a_directory_that_is_not_there_is_named_as_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as missing:
        LocalPuller(tmp_path / "nonexistent").resolve("busybox:1")
    assert str(missing.value) == (
        f"image busybox:1 not found: the directory {tmp_path}/nonexistent does not exist"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFound) as missing:
        LocalPuller(tmp_path / "file").resolve("busybox:1")
    assert str(missing.value) == (
        f"image busybox:1 not found: the directory {tmp_path}/file is not a directory"
    )
