"""What ``ctr-remote image optimize --no-optimize --oci`` writes, read by
``lazyfs.index.estargz``: every layer's footer and TOC parse and verify,
every chunk inflates to the source image's bytes, the TOC's entries are the
source layer's entries plus eStargz's own, and a loopback registry serves
footer, TOC and chunks by range."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from lazyfs.index.estargz import (
    NO_PREFETCH_LANDMARK,
    SUGGESTED_TAIL_SIZE,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EntryType,
    Toc,
    inflate_chunk,
    is_stargz_own,
    parse_footer,
    prefetch_span,
    read_toc,
    toc_digest,
    toc_member,
)
from lazyfs.index.estargz_agree import Verdict, recorded
from lazyfs.index.estargz_footer import FOOTER_SIZE
from lazyfs.index.model import CHUNKS_NAME
from lazyfs.index.stored import ensure_index
from lazyfs.index.stored_remote import ensure_remote_index
from providers.digest import Digest, digest_bytes
from providers.layer_rules import RelPath
from providers.manifest import OCI_MANIFEST, TOC_DIGEST_ANNOTATION
from providers.manifest import Layer as Descriptor
from tests.support import images
from tests.support.blob_sources import MemoryBlobs
from tests.support.estargz_images import BIG_DATA, ESGZ_TAG, SOURCE_TAG, Converted
from tests.support.registry_servers import Registry

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_NS = 1_000_000_000
_TYPES = {
    tarfile.REGTYPE: EntryType.REG,
    tarfile.AREGTYPE: EntryType.REG,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


def _path(name: str) -> RelPath:
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _json(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / Path(*digest.split(":"))).read_bytes())


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest: dict[str, Any] = _json(layout, entry["digest"])
            return manifest
    raise KeyError(tag)


@dataclass(frozen=True)
class Layer:
    """One layer: its eStargz descriptor, blob and TOC, and the source layer's tar."""

    descriptor: dict[str, Any]
    blob: bytes
    toc: Toc
    members: list[tarfile.TarInfo]  # of the source layer
    files: dict[RelPath, bytes]  # its regular files' contents

    def content(self, path: RelPath) -> bytes:
        (entry,) = (e for e in self.toc.entries if e.path == path)
        return b"".join(
            inflate_chunk(c, self.blob[c.offset : c.end], layer="t", name=entry.name)
            for c in entry.chunks
        )


def _read_toc(blob: bytes, descriptor: dict[str, Any]) -> Toc:
    expected = toc_digest(descriptor.get("annotations", {}))
    assert expected is not None, descriptor
    tail = blob[-SUGGESTED_TAIL_SIZE:]
    found = parse_footer(tail, len(blob))
    assert found is not None and not found.legacy and found.size == FOOTER_SIZE
    member = toc_member(tail, len(blob), found)
    assert member is not None
    return read_toc(
        member, toc_offset=found.toc_offset, expected=expected, layer=descriptor["digest"]
    )


def _layers(image: Converted) -> list[Layer]:
    manifest = _manifest(image.layout, ESGZ_TAG)
    sources = [path.read_bytes() for _, path in images.layer_paths(image.source, SOURCE_TAG)]
    assert len(sources) == len(manifest["layers"])
    layers = []
    for descriptor, source in zip(manifest["layers"], sources, strict=True):
        blob = (image.layout / "blobs" / Path(*descriptor["digest"].split(":"))).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(source))) as tar:
            members = tar.getmembers()
            files = {_path(m.name): tar.extractfile(m).read() for m in members if m.isreg()}  # type: ignore[union-attr]
        layers.append(Layer(descriptor, blob, _read_toc(blob, descriptor), members, files))
    return layers


@pytest.fixture(scope="module", params=["rich", "big"])
def image(request: pytest.FixtureRequest, converted: dict[str, Converted]) -> Converted:
    return converted[request.param]


@pytest.fixture(scope="module")
def layers(image: Converted) -> list[Layer]:
    return _layers(image)


def test_every_layer_is_estargz(image: Converted, layers: list[Layer]) -> None:
    manifest = _manifest(image.layout, ESGZ_TAG)
    # ctr-remote 0.12 leaves the manifest's optional mediaType out.
    assert manifest.get("mediaType", OCI_MANIFEST) == OCI_MANIFEST
    for layer in layers:
        assert layer.descriptor["mediaType"] == OCI_LAYER_GZIP
        assert layer.descriptor["size"] == len(layer.blob)
        assert layer.descriptor["digest"] == digest_bytes(layer.blob)


def test_chunks_inflate_verify_and_are_the_source_files(layers: list[Layer]) -> None:
    for layer in layers:
        sources = layer.files
        regular = [e for e in layer.toc.entries if e.type is EntryType.REG]
        assert {e.path for e in regular if not is_stargz_own(e.path)} == set(sources)
        for entry in regular:
            data = layer.content(entry.path)
            assert len(data) == entry.size and digest_bytes(data) == entry.digest
            if not is_stargz_own(entry.path):
                assert data == sources[entry.path], entry.name


def _pax_ns(member: tarfile.TarInfo) -> int:
    seconds, _, fraction = member.pax_headers["mtime"].partition(".")
    return int(seconds) * _NS + int(fraction.ljust(9, "0"))


def test_entries_are_the_source_layers_entries(layers: list[Layer]) -> None:
    for layer in layers:
        ours = [e for e in layer.toc.entries if not is_stargz_own(e.path)]
        members = layer.members
        assert [e.path for e in ours] == [_path(m.name) for m in members]
        for entry, member in zip(ours, members, strict=True):
            assert entry.type is _TYPES[member.type], entry.name
            assert (entry.mode, entry.uid, entry.gid) == (member.mode, member.uid, member.gid)
            assert entry.size == (member.size if member.isreg() else 0)
            assert entry.link_name == member.linkname
            if member.ischr() or member.isblk():
                assert entry.devices == (member.devmajor, member.devminor)
            xattrs = {
                key.removeprefix("SCHILY.xattr."): value.encode("utf-8", "surrogateescape")
                for key, value in member.pax_headers.items()
                if key.startswith("SCHILY.xattr.")
            }
            assert dict(entry.xattrs) == xattrs, entry.name
            # ctr-remote 0.12 writes modtime to the second: the nanoseconds
            # of the source survive only in the blob's tar headers.
            assert entry.mtime_ns == _pax_ns(member) // _NS * _NS, entry.name


def test_the_blob_is_the_source_tar_plus_stargz_entries(layers: list[Layer]) -> None:
    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.blob))) as tar:
            converted = tar.getmembers()
        source = {_path(m.name): m for m in layer.members}
        added = [_path(m.name) for m in converted if _path(m.name) not in source]
        assert added == [(NO_PREFETCH_LANDMARK,), ("stargz.index.json",)]
        assert all(is_stargz_own(path) for path in added)
        assert not any(is_stargz_own(path) for path in source)
        assert converted[-1].name == "stargz.index.json"
        for member in converted:
            if _path(member.name) in source:
                # The tar headers keep what the TOC rounds away.
                assert _pax_ns(member) == _pax_ns(source[_path(member.name)]), member.name


def test_no_prefetch_without_optimizing(layers: list[Layer]) -> None:
    for layer in layers:
        assert layer.toc.entries[0].path == (NO_PREFETCH_LANDMARK,)
        assert prefetch_span(layer.toc) is None


def test_config_diff_ids_are_of_the_estargz_tars(image: Converted, layers: list[Layer]) -> None:
    manifest = _manifest(image.layout, ESGZ_TAG)
    config = _json(image.layout, manifest["config"]["digest"])
    for diff_id, layer in zip(config["rootfs"]["diff_ids"], layers, strict=True):
        tar = gzip.decompress(layer.blob)
        assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert layer.descriptor["annotations"][UNCOMPRESSED_SIZE_ANNOTATION] == str(len(tar))


def test_large_files_are_chunked(converted: dict[str, Converted]) -> None:
    layer = _layers(converted["big"])[0]
    (big,) = (e for e in layer.toc.entries if e.path == ("opt", "big"))
    four_mib = 4 << 20
    assert [(c.chunk_offset, c.chunk_size) for c in big.chunks] == [
        (0, four_mib), (four_mib, four_mib), (2 * four_mib, len(BIG_DATA) - 2 * four_mib),
    ]  # fmt: skip
    assert layer.content(("opt", "big")) == BIG_DATA
    assert len({c.offset for c in big.chunks}) == 3


def test_every_layer_s_toc_agrees_with_its_tar_once_local(
    layers: list[Layer], tmp_path: Path
) -> None:
    # Read remotely first, then its blob whole in the store: the TOC's index
    # stays its own (no gzip index built at the next start), checked so.
    store, scratch = tmp_path / "layers", tmp_path / "tmp"
    store.mkdir()
    scratch.mkdir()
    for number, layer in enumerate(layers):
        toc = layer.descriptor["annotations"][TOC_DIGEST_ANNOTATION]
        digest = Digest(layer.descriptor["digest"])
        described = Descriptor(
            digest, OCI_LAYER_GZIP, len(layer.blob), None, ((TOC_DIGEST_ANNOTATION, toc),)
        )
        remote = ensure_remote_index(store, scratch, described, MemoryBlobs({digest: layer.blob}))
        assert remote is not None
        blob = tmp_path / f"{number}.gz"
        blob.write_bytes(layer.blob)
        assert ensure_index(store, scratch, digest, blob, own_toc=True) == remote
        home = store / digest.removeprefix("sha256:")
        assert recorded(home, home / CHUNKS_NAME) == Verdict(True)
        assert ensure_index(store, scratch, digest, blob) == remote


def _range(registry: Registry, name: str, digest: str, start: int, end: int) -> bytes:
    response = requests.get(
        f"{registry.url}/v2/{name}/blobs/{digest}",
        headers={"Range": f"bytes={start}-{end - 1}"},
        timeout=30,
    )
    assert response.status_code == 206, response.status_code
    return response.content


def test_registry_serves_footer_toc_and_chunks_by_range(
    estargz_registry: Registry, converted: dict[str, Converted]
) -> None:
    for image in converted.values():
        response = requests.get(
            f"{estargz_registry.url}/v2/{image.name}/manifests/{ESGZ_TAG}",
            headers={"Accept": OCI_MANIFEST},
            timeout=10,
        )
        response.raise_for_status()
        assert response.headers["Content-Type"] == OCI_MANIFEST
        for descriptor in response.json()["layers"]:
            digest, size = descriptor["digest"], descriptor["size"]
            expected = toc_digest(descriptor["annotations"])
            assert expected is not None
            # Two range requests: the footer, then the TOC member it points at.
            tail = _range(estargz_registry, image.name, digest, size - FOOTER_SIZE, size)
            found = parse_footer(tail, size)
            assert found is not None and toc_member(tail, size, found) is None
            member = _range(estargz_registry, image.name, digest, found.toc_offset, found.toc_end)
            toc = read_toc(
                member, toc_offset=found.toc_offset, expected=Digest(expected), layer=digest
            )
            for entry in toc.entries:
                for chunk in entry.chunks:
                    data = _range(estargz_registry, image.name, digest, chunk.offset, chunk.end)
                    inflate_chunk(chunk, data, layer=digest, name=entry.name)
