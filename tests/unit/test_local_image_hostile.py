"""Hostile local images: OCI layout directories with symlinks out, deep legacy
``docker save`` chains, and image tarballs with huge extended headers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from providers import oci_layout
from providers.digest import digest_bytes
from providers.docker_archive import resolve_legacy
from providers.errors import BadImage, NotFound
from providers.manifest import LAYER_LIMIT, OCI_LAYER_GZIP, OCI_MANIFEST
from providers.oci_layout import DirFiles, TarFiles, open_location, resolve_layout

REF = "docker.io/library/x:1"
# Stands for /etc/shadow: a file the layout's author cannot read. Its size is
# odd enough that finding it in a message means it leaked.
SECRET = b"root:$6$not-for-you:19000:0:99999:7:::\n" * 317
SECRET_SIZE = str(len(SECRET))
SECRET_DIGEST = digest_bytes(SECRET)


def _put(root: Path, data: bytes) -> dict[str, Any]:
    digest = digest_bytes(data)
    (root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _layout(root: Path, layer: bytes) -> dict[str, Any]:
    """A one-layer OCI layout at ``root``; returns the layer's descriptor."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layer_desc = {"mediaType": OCI_LAYER_GZIP, **_put(root, layer)}
    diff_id = digest_bytes(gzip.decompress(layer))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **_put(root, config),
            },
            "layers": [layer_desc],
        }
    ).encode()
    _index(root, {"mediaType": OCI_MANIFEST, **_put(root, manifest)})
    return layer_desc


def _index(root: Path, entry: dict[str, Any]) -> None:
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def _resolve(root: Path) -> Any:
    return resolve_layout(DirFiles(root), REF, REF, "1", None)


def _refused(root: Path) -> str:
    with pytest.raises(BadImage) as caught:
        _resolve(root)
    message = str(caught.value)
    assert SECRET_SIZE not in message
    assert SECRET_DIGEST.split(":")[1] not in message
    # The phrase, not the word: the test's own tmp_path has "symlink" in it.
    assert "is a symlink that leads out of the layout; its files must be in it" in message
    return message


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def test_a_plain_layout_resolves_and_its_layer_reads(tmp_path: Path) -> None:
    layer = gzip.compress(b"layer bytes")
    desc = _layout(tmp_path / "l", layer)
    image, blobs = _resolve(tmp_path / "l")
    assert [x.digest for x in image.layers] == [desc["digest"]]
    with open_location(blobs[desc["digest"]]) as stream:
        assert stream.read() == layer


def test_symlinks_that_stay_in_the_layout_are_followed(tmp_path: Path) -> None:
    # As debuerreotype writes a layout: blobs linked to files beside them.
    layer = gzip.compress(b"layer bytes")
    root = tmp_path / "l"
    desc = _layout(root, layer)
    blob = root / "blobs" / "sha256" / desc["digest"].split(":")[1]
    blob.rename(root / "rootfs.tar.gz")
    blob.symlink_to("../../rootfs.tar.gz")
    (root / "blobs" / "sha512").symlink_to("sha256")  # a directory link, also inside
    image, blobs = _resolve(root)
    assert [x.digest for x in image.layers] == [desc["digest"]]
    with open_location(blobs[desc["digest"]]) as stream:
        assert stream.read() == layer


def test_a_relative_symlink_that_climbs_out_is_refused(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "l"
    _layout(root, gzip.compress(b"x"))
    fake = "0" * 64
    # From blobs/sha256: up three is tmp_path, where the secret's directory is.
    (root / "blobs" / "sha256" / fake).symlink_to("../../../outside/shadow")
    _index(root, {"mediaType": OCI_MANIFEST, "digest": f"sha256:{fake}", "size": 1})
    assert f"blobs/sha256/{fake} is a symlink" in _refused(root)


def test_a_blob_symlinked_out_is_refused_and_tells_nothing_of_its_target(
    tmp_path: Path, secret: Path
) -> None:
    # The author guesses digest and size; the old code answered with the real ones.
    root = tmp_path / "l"
    _layout(root, gzip.compress(b"x"))
    fake = "0" * 64
    (root / "blobs" / "sha256" / fake).symlink_to(secret)
    _index(root, {"mediaType": OCI_MANIFEST, "digest": f"sha256:{fake}", "size": 1})
    assert f"blobs/sha256/{fake} is a symlink" in _refused(root)


def test_the_blobs_dir_symlinked_out_is_refused(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "l"
    _layout(root, gzip.compress(b"x"))
    fake = "0" * 64
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sha256").mkdir(parents=True)
    (elsewhere / "sha256" / fake).symlink_to(secret)
    os.rename(root / "blobs", tmp_path / "old-blobs")
    (root / "blobs").symlink_to(elsewhere)
    _index(root, {"mediaType": OCI_MANIFEST, "digest": f"sha256:{fake}", "size": 1})
    assert f"{root}/blobs is a symlink" in _refused(root)


@pytest.mark.parametrize("name", ["index.json", "oci-layout"])
def test_metadata_symlinked_out_is_refused(tmp_path: Path, secret: Path, name: str) -> None:
    root = tmp_path / "l"
    _layout(root, gzip.compress(b"x"))
    (root / name).unlink()
    (root / name).symlink_to(secret)
    _refused(root)


def test_a_layer_symlinked_to_a_file_of_known_digest_is_refused(tmp_path: Path) -> None:
    # Knowing the digest of a file it cannot read, the author made it a layer.
    layer = gzip.compress(b"a root-only tar")
    outside = tmp_path / "root-only.tar.gz"
    outside.write_bytes(layer)
    root = tmp_path / "l"
    desc = _layout(root, layer)
    blob = root / "blobs" / "sha256" / desc["digest"].split(":")[1]
    blob.unlink()
    blob.symlink_to(outside)
    _refused(root)


def test_a_symlink_put_in_after_resolve_is_not_followed(tmp_path: Path, secret: Path) -> None:
    layer = gzip.compress(b"layer bytes")
    root = tmp_path / "l"
    desc = _layout(root, layer)
    _, blobs = _resolve(root)
    blob = root / "blobs" / "sha256" / desc["digest"].split(":")[1]
    blob.unlink()
    blob.symlink_to(secret)
    with pytest.raises(BadImage, match="is a symlink"), open_location(blobs[desc["digest"]]) as s:
        s.read()
    blob.unlink()
    with pytest.raises(NotFound), open_location(blobs[desc["digest"]]) as s:
        s.read()


def test_a_fifo_blob_is_missing_not_a_hang(tmp_path: Path) -> None:
    root = tmp_path / "l"
    desc = _layout(root, gzip.compress(b"x"))
    blob = root / "blobs" / "sha256" / desc["digest"].split(":")[1]
    blob.unlink()
    os.mkfifo(blob)
    with pytest.raises(BadImage, match="is missing"):
        _resolve(root)


# --- legacy docker save ----------------------------------------------------------


def _legacy(path: Path, depth: int) -> Path:
    """A legacy ``docker save`` tar with a ``depth``-long parent chain.

    Every ``<id>/layer.tar`` is a hardlink to one empty tar, so each layer
    costs two headers and a tiny JSON file.
    """
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(depth)]
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("repositories", json.dumps({"x": {"1": ids[-1]}}).encode())
        add("base/layer.tar", empty.getvalue())
        for i, image_id in enumerate(ids):
            add(f"{image_id}/json", json.dumps({"parent": ids[i - 1]} if i else {}).encode())
            link = tarfile.TarInfo(f"{image_id}/layer.tar")
            link.type = tarfile.LNKTYPE
            link.linkname = "base/layer.tar"
            tar.addfile(link)
    return path


def test_a_legacy_chain_at_the_limit_resolves(tmp_path: Path) -> None:
    files = TarFiles(_legacy(tmp_path / "x.tar", LAYER_LIMIT))
    image, blobs = resolve_legacy(files, REF, REF, "1")
    assert len(image.layers) == LAYER_LIMIT
    assert len(blobs) == 1


def test_a_deep_legacy_chain_is_refused_after_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = TarFiles(_legacy(tmp_path / "x.tar", 20_000))
    read: list[str] = []
    real_read = oci_layout.read_file

    def counted(files: Any, name: str, *args: Any, **kwargs: Any) -> bytes:
        read.append(name)
        return real_read(files, name, *args, **kwargs)

    monkeypatch.setattr("providers.docker_archive.read_file", counted)
    with pytest.raises(BadImage, match=f"more than {LAYER_LIMIT} layers"):
        resolve_legacy(files, REF, REF, "1")
    # Work by count, not by time: the walk stopped at the limit, not at the base.
    assert len([n for n in read if n.endswith("/json")]) == LAYER_LIMIT


# --- image tarballs --------------------------------------------------------------


def test_a_huge_pax_header_is_refused_without_reading_it(tmp_path: Path) -> None:
    size = 64 << 20
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = size
    path = tmp_path / "pax.tar"
    with path.open("wb") as out:
        out.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        out.truncate(512 + size + 1024)  # a hole: no disk used
    tracemalloc.start()
    try:
        with pytest.raises(BadImage, match="not a readable tar"):
            TarFiles(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_tar_files_still_index_an_ordinary_archive(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
        info.pax_headers = {"comment": "x" * 1000}
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    where = TarFiles(path).location("blobs/sha256/" + "a" * 64)
    assert where is not None
    with oci_layout.open_location(where) as stream:
        assert stream.read() == b"abc"
