"""The local puller against images that umoci and skopeo really wrote.

The rich image is saved once per session in every form (see conftest); each
form must resolve to the same layers (by diff_id) and config, and every
layer blob must stream back with exactly the digest and size promised.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from providers.compression import decompressed
from providers.digest import Digest, VerifyingReader, digest_bytes, parse_digest
from providers.docker_local import LocalPuller
from providers.errors import BadImage, DigestMismatch, InvalidReference, NotFound
from providers.manifest import (
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    ImageManifest,
    parse_image_config,
)
from tests.support import images
from tests.support.rich_image import RICH_TAG
from tests.support.tree import Node, tree_digest

pytestmark = pytest.mark.integration

# reference -> the layer media type that form stores
FORMS = {
    "docker.io/library/legacy:1.0": OCI_LAYER_TAR,
    "docker.io/library/archive:1.0": OCI_LAYER_TAR,
    "docker.io/library/ociarchive:1.0": OCI_LAYER_GZIP,
    "docker.io/library/ocidir:1.0": OCI_LAYER_GZIP,
    "docker.io/library/zstd:1.0": OCI_LAYER_ZSTD,
    "docker.io/library/docker25:1.0": OCI_LAYER_TAR,
    "docker.io/library/plain:latest": OCI_LAYER_TAR,
    "docker.io/foo/bar:1.0": OCI_LAYER_TAR,
    "localhost:5000/foo/bar:2.0": OCI_LAYER_GZIP,
}


def _index_digest(layout: Path, tag: str) -> Digest:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == tag:
            return parse_digest(entry["digest"])
    raise KeyError(tag)


@pytest.fixture(scope="module")
def diff_ids(rich_layout: Path) -> tuple[Digest, ...]:
    manifest_digest = _index_digest(rich_layout, RICH_TAG)
    blobs = rich_layout / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.split(":")[1]).read_bytes())
    config = (blobs / manifest["config"]["digest"].split(":")[1]).read_bytes()
    return parse_image_config(config)[1]


def _stream_all(puller: LocalPuller, image: ImageManifest) -> list[Digest]:
    """Stream every layer through VerifyingReader; returns uncompressed digests."""
    uncompressed = []
    for layer in image.layers:
        reader = VerifyingReader(puller.open(layer.digest), layer.digest, layer.size, "layer")
        stream = decompressed(reader)  # type: ignore[arg-type]
        hasher = hashlib.sha256()
        while chunk := stream.read(1 << 16):
            hasher.update(chunk)
        reader.verify()
        stream.close()
        uncompressed.append(Digest(f"sha256:{hasher.hexdigest()}"))
    return uncompressed


@pytest.mark.parametrize("reference", FORMS)
def test_every_form_resolves_to_the_rich_image(
    image_dir: Path, reference: str, diff_ids: tuple[Digest, ...]
) -> None:
    puller = LocalPuller(image_dir)
    image = puller.resolve(reference)
    assert image.reference == reference
    assert len(image.layers) == len(images.RICH_LAYERS)
    config = images.RICH_CONFIG
    assert image.config.entrypoint == config.entrypoint
    assert image.config.cmd == config.cmd
    assert image.config.env == config.env
    assert image.config.working_dir == config.working_dir
    assert image.config.user == config.user
    assert {layer.media_type for layer in image.layers} == {FORMS[reference]}
    assert tuple(layer.diff_id for layer in image.layers) == diff_ids
    assert tuple(_stream_all(puller, image)) == diff_ids
    assert puller.resolve(reference) == image


def test_image_digests(image_dir: Path, rich_layout: Path) -> None:
    puller = LocalPuller(f"file://{image_dir}")
    manifest_digest = _index_digest(rich_layout, RICH_TAG)
    assert puller.resolve("docker.io/library/ocidir:1.0").digest == manifest_digest
    assert puller.resolve("docker.io/library/ociarchive:1.0").digest == manifest_digest
    # docker-archive keeps no manifest: the image is named by its config.
    archive = puller.resolve("docker.io/library/archive:1.0")
    with tarfile.open(image_dir / "archive:1.0.tar") as tar:
        saved = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert archive.digest == f"sha256:{saved[0]['Config'].removesuffix('.json')}"
    # docker 25 saves both: the OCI index wins, so its manifest names the image.
    docker25 = puller.resolve("docker.io/library/docker25:1.0")
    index = json.loads(_member(image_dir / "docker25:1.0.tar", "index.json"))
    assert docker25.digest == index["manifests"][0]["digest"]


def test_pinned_digests(image_dir: Path, rich_layout: Path) -> None:
    puller = LocalPuller(image_dir)
    digest = _index_digest(rich_layout, RICH_TAG)
    assert puller.resolve(f"docker.io/library/ocidir:1.0@{digest}").digest == digest
    archive = puller.resolve("docker.io/library/archive:1.0")
    assert puller.resolve(f"archive:1.0@{archive.digest}") == puller.resolve(
        f"archive:1.0@{archive.digest}"
    )
    wrong = digest_bytes(b"another image")
    with pytest.raises(DigestMismatch):
        puller.resolve(f"docker.io/library/ocidir:1.0@{wrong}")
    with pytest.raises(DigestMismatch):
        puller.resolve(f"docker.io/library/archive:1.0@{wrong}")
    with pytest.raises(NotFound, match="archive@sha256"):
        puller.resolve(f"docker.io/library/archive@{wrong}")


def test_not_found_names_the_paths_tried(image_dir: Path) -> None:
    puller = LocalPuller(image_dir)
    with pytest.raises(NotFound) as info:
        puller.resolve("docker.io/library/missing:2.0")
    message = str(info.value)
    assert "missing:2.0" in message
    assert str(image_dir / "missing:2.0.tar") in message
    assert str(image_dir / "missing:2.0") in message
    # NAME.tar stands for NAME:latest only.
    with pytest.raises(NotFound):
        puller.resolve("docker.io/library/plain:1.0")
    with pytest.raises(NotFound):
        puller.open(digest_bytes(b"never resolved"))
    with pytest.raises(InvalidReference):
        puller.resolve("docker.io/library/../../etc:1.0")


def _member(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def _flip_in_tar(src: Path, dst: Path, member: str, at: int = 100) -> None:
    with tarfile.open(src) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + min(at, info.size - 1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("name", ["archive", "ociarchive", "docker25"])
def test_a_corrupted_layer_fails_the_stream(image_dir: Path, tmp_path: Path, name: str) -> None:
    src = image_dir / f"{name}:1.0.tar"
    layer = LocalPuller(image_dir).resolve(f"{name}:1.0").layers[0]
    with tarfile.open(src) as tar:
        hexpart = layer.digest.split(":")[1]
        [member] = [m.name for m in tar.getmembers() if m.isreg() and hexpart in m.name]
    _flip_in_tar(src, tmp_path / src.name, member)
    puller = LocalPuller(tmp_path)
    # Layer bytes are not read at resolve: the stream is where it shows.
    image = puller.resolve(f"{name}:1.0")
    assert image.layers[0] == layer
    with pytest.raises(DigestMismatch):
        _stream_all(puller, image)


def test_corrupted_metadata_fails_resolve(image_dir: Path, tmp_path: Path) -> None:
    config = json.loads(_member(image_dir / "archive:1.0.tar", "manifest.json"))[0]["Config"]
    _flip_in_tar(image_dir / "archive:1.0.tar", tmp_path / "archive:1.0.tar", config, at=5)
    ocidir = shutil.copytree(image_dir / "ocidir:1.0", tmp_path / "ocidir:1.0")
    manifest = ocidir / "blobs" / "sha256" / _index_digest(ocidir, "1.0").split(":")[1]
    manifest.write_bytes(manifest.read_bytes().replace(b"schemaVersion", b"schemaVersioN"))
    puller = LocalPuller(tmp_path)
    with pytest.raises(DigestMismatch, match="config"):
        puller.resolve("archive:1.0")
    with pytest.raises(DigestMismatch, match="manifest"):
        puller.resolve("ocidir:1.0")


@pytest.mark.parametrize("name", ["manifest.json", "repositories", "index.json"])
def test_unparsable_json_is_a_bad_image(image_dir: Path, tmp_path: Path, name: str) -> None:
    source = {"manifest.json": "archive", "repositories": "legacy", "index.json": "ociarchive"}
    src = image_dir / f"{source[name]}:1.0.tar"
    with tarfile.open(src) as tar, tarfile.open(tmp_path / "broken:1.0.tar", "w") as out:
        for member in tar.getmembers():
            data = tar.extractfile(member) if member.isreg() else None
            if member.name == name:
                member.size = len(b"{not json")
                out.addfile(member, io.BytesIO(b"{not json"))
            else:
                out.addfile(member, data)
    with pytest.raises(BadImage, match="not valid JSON"):
        LocalPuller(tmp_path).resolve("broken:1.0")


def test_garbage_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "garbage:1.0.tar").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "empty:1.0.tar").write_bytes(b"")
    with tarfile.open(tmp_path / "nothing:1.0.tar", "w"):
        pass
    puller = LocalPuller(tmp_path)
    for name in ("garbage", "empty", "nothing"):
        with pytest.raises(BadImage):
            puller.resolve(f"{name}:1.0")


def test_umoci_unpacks_the_rich_image_as_intended(rich_layout: Path, tmp_path: Path) -> None:
    tree = tree_digest(images.umoci_unpack(rich_layout, RICH_TAG, tmp_path / "bundle"))
    for hidden in ("etc/remove-me", "etc/also-remove", "opaque/a", "opaque/sub", "srv/www"):
        assert hidden not in tree
    assert not [p for p in tree if ".wh." in p]
    assert tree["etc/recreated"].size == 4
    assert tree["data/file"].kind == "dir" and tree["data/file/child"].uid == 2000
    assert tree["data/dir"].kind == "file"
    assert tree["bin/tool"].mode == 0o104755
    assert dict(tree["bin/tool"].xattrs) == {"security.capability": images.CAP_NET_BIND_SERVICE}
    assert dict(tree["etc/hostname"].xattrs)["user.binary"] == b"\x00\x01\xff"
    assert tree["dev/null"].rdev == (1, 3)
    assert tree["dev/fifo"].kind == "fifo"
    assert tree["usr/bin/prog"].hardlinks == ("bin/prog2", "usr/bin/prog", "usr/bin/prog-link")
    assert (tree["home/user"].mode, tree["home/user"].uid) == (0o40700, 1001)
    by_path = {e.path: e for layer in images.RICH_LAYERS for e in layer}
    # umoci restores directory mtimes after later layers change their children.
    for path in ("etc", "usr/bin", "srv", "home/user", "opaque"):
        assert tree[path].mtime_ns == by_path[path].mtime_ns, path
    assert tree["etc/abs"] == Node(
        "symlink",
        0o120777,
        0,
        0,
        11,
        None,
        "/etc/passwd",
        None,
        by_path["etc/abs"].mtime_ns,
        (),
        (),
    )
