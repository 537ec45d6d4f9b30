"""Hostile ACIs and stores: sparse bombs, dependency floods, a store that cannot keep an image."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

import lazyfs.images.appc as appc_provider
from backends.apply import apply_layer
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.aci import read_aci, write_layer
from providers.appc_manifest import parse_aci_manifest
from providers.appc_source import AppcRef
from providers.appc_store import AppcStore
from providers.errors import BadImage
from providers.layer_limits import MAX_ENTRY_SIZE
from providers.tar_sparse import stored_chunks
from providers.tar_stream import CheckedTarInfo, file_layout
from tests.support.acis import aci_bytes, manifest_doc

TiB = 1 << 40
MiB = 1 << 20


def sparse_aci(size: int, extents: list[tuple[int, bytes]]) -> bytes:
    """An uncompressed ACI whose ``rootfs/big`` is a PAX 0.1 sparse file of ``size`` bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest_doc("example.com/bomb")).encode()
        info = tarfile.TarInfo("manifest")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        root = tarfile.TarInfo("rootfs")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        stored = b"".join(chunk for _, chunk in extents)
        big = tarfile.TarInfo("rootfs/big")
        big.size = len(stored)
        big.pax_headers = {
            "GNU.sparse.map": ",".join(f"{start},{len(chunk)}" for start, chunk in extents),
            "GNU.sparse.numblocks": str(len(extents)),
            "GNU.sparse.size": str(size),
        }
        tar.addfile(big, io.BytesIO(stored))
    return buffer.getvalue()


class Bounded:
    """A sink that fails the test once more than ``most`` bytes are written to it."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.data = io.BytesIO()

    def write(self, data: bytes) -> int:
        if self.data.tell() + len(data) > self.most:
            raise AssertionError(f"more than {self.most} bytes written")
        return self.data.write(data)

    def flush(self) -> None:
        pass


def layer_of(aci: bytes) -> bytes:
    checked = io.BytesIO()
    read_aci(io.BytesIO(aci), checked, "bomb.aci", size=len(aci))
    out = Bounded(64 * MiB)
    write_layer(io.BytesIO(checked.getvalue()), out, (), "bomb")  # type: ignore[arg-type]
    return out.data.getvalue()


def files_of(layer: bytes) -> dict[str, tuple[int, dict[int, bytes]]]:
    """Each regular file of ``layer`` as layer readers see it: size, stored bytes by offset."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:", tarinfo=CheckedTarInfo) as tar:
        for member in tar:
            if member.isreg():
                layout = file_layout(member, layer="layer")
                chunks = dict(stored_chunks(io.BytesIO(layer), layout, MiB))
                found[member.name] = (layout.size, chunks)
    return found


def test_a_sparse_entry_claiming_a_tib_stays_sparse_in_its_layer() -> None:
    # A 10 KiB ACI made write_layer write its 1 TiB of holes as zeros.
    aci = sparse_aci(TiB, [(TiB - 1, b"x")])
    assert len(aci) < 16 << 10
    layer = layer_of(aci)  # Bounded fails past 64 MiB
    assert len(layer) < 64 << 10
    assert files_of(layer) == {"big": (TiB, {TiB - 1: b"x"})}


def test_a_sparse_file_keeps_its_bytes_and_holes(tmp_path: Path) -> None:
    extents = [(0, b"head"), (MiB, b"middle" * 100), (5 * MiB, b"tail")]
    layer = layer_of(sparse_aci(8 * MiB, extents))
    size, chunks = files_of(layer)["big"]
    assert size == 8 * MiB
    assert b"".join(chunks.values()) == b"".join(chunk for _, chunk in extents)
    assert sorted(chunks) == [start for start, _ in extents]
    # And as the appliers write it: holes read as zeros, the size whole.
    apply_layer(tmp_path, io.BytesIO(layer), layer="layer0")
    expected = bytearray(8 * MiB)
    for start, chunk in extents:
        expected[start : start + len(chunk)] = chunk
    assert (tmp_path / "big").read_bytes() == expected


@pytest.mark.parametrize(
    "form",
    [
        ["--format=gnu"],
        ["--format=posix", "--sparse-version=0.0"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=posix", "--sparse-version=1.0"],
    ],
    ids=["old-gnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)
@pytest.mark.parametrize("ends_in_a_hole", [True, False], ids=["hole-at-end", "data-at-end"])
def test_a_sparse_file_gnu_tar_wrote_keeps_its_bytes(
    tmp_path: Path, form: list[str], ends_in_a_hole: bool
) -> None:
    source = tmp_path / "source"
    (source / "rootfs").mkdir(parents=True)
    (source / "manifest").write_text(json.dumps(manifest_doc("example.com/sparse")))
    big = source / "rootfs" / "big"
    with open(big, "wb") as out:
        out.seek(MiB)
        out.write(b"middle" * 100)
        if ends_in_a_hole:
            out.truncate(4 * MiB)
        else:
            out.seek(3 * MiB)
            out.write(b"end")
    aci = tmp_path / "sparse.aci"
    argv = ["tar", *form, "--sparse", "-C", str(source), "-cf", str(aci), "manifest", "rootfs"]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    layer = layer_of(aci.read_bytes())
    (tmp_path / "root").mkdir()
    apply_layer(tmp_path / "root", io.BytesIO(layer), layer="layer0")
    assert (tmp_path / "root" / "big").read_bytes() == big.read_bytes()


def test_an_entry_claiming_more_than_any_layer_entry_may_is_refused() -> None:
    aci = sparse_aci(MAX_ENTRY_SIZE + 1, [(MAX_ENTRY_SIZE, b"x")])
    with pytest.raises(BadImage, match="claims"):
        read_aci(io.BytesIO(aci), io.BytesIO(), "bomb.aci", size=len(aci))


# -- dependencies ---------------------------------------------------------------


def self_dependent(count: int) -> bytes:
    """An ACI depending ``count`` times on itself, each with another subset of its labels."""
    labels = [{"name": f"l{i}", "value": "v"} for i in range(12)]
    subsets = (subset for r in range(1, 13) for subset in combinations(labels, r))
    dependencies = [
        {"imageName": "example.com/self", "labels": list(subset)}
        for subset, _ in zip(subsets, range(count), strict=False)
    ]
    doc: dict[str, Any] = {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": "example.com/self",
        "labels": labels,
        "dependencies": dependencies,
    }
    return aci_bytes(doc, {"f": b"f"}, compression="none")


def fetch(tmp_path: Path, acis: list[bytes]) -> Callable[[], Any]:
    appc = AppcStore(tmp_path / "appc")
    for number, aci in enumerate(acis):
        appc.add(io.BytesIO(aci), f"{number}.aci")
    provider = appc_provider.AppcProvider(Store(tmp_path / "store"), appc)
    progress = Progress(enabled=False)
    return lambda: provider._fetch_blocking(
        AppcRef("example.com/self"), cached=True, progress=progress
    )


def test_each_stored_manifest_is_parsed_once_per_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each dependency's lookup parsed every stored manifest, three times over.
    others = [
        aci_bytes(manifest_doc(f"example.com/other{i}"), compression="none") for i in range(3)
    ]
    run = fetch(tmp_path, [self_dependent(100), *others])
    parsed = []

    def counted(data: bytes) -> Any:
        parsed.append(data)
        return parse_aci_manifest(data)

    monkeypatch.setattr("providers.appc_store.parse_aci_manifest", counted)
    manifest = run()
    assert len(manifest.layers) == 1  # itself, once
    assert len(parsed) <= 4  # the stored images


def test_a_manifest_with_too_many_dependencies_is_refused(tmp_path: Path) -> None:
    most = appc_provider.MAX_DEPENDENCIES
    run = fetch(tmp_path, [self_dependent(most + 1)])
    with pytest.raises(BadImage, match=f"more than {most} dependencies"):
        run()


# -- keeping an image -----------------------------------------------------------


def test_a_store_that_cannot_keep_an_image_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failed rename was suppressed: add said the image was kept, and it was not.
    store = AppcStore(tmp_path / "appc")

    def refused(src: object, dst: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("os.rename", refused)
    aci = aci_bytes(manifest_doc("example.com/app"), {"f": b"f"})
    with pytest.raises(OSError, match=r"cannot keep app\.aci: Permission denied") as raised:
        store.add(io.BytesIO(aci), "app.aci")
    assert raised.value.errno == errno.EACCES
    assert "\n" not in str(raised.value)
    assert list(store.images.iterdir()) == []


def test_an_image_another_process_kept_first_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AppcStore(tmp_path / "appc")
    real = os.rename

    def raced(src: str, dst: str) -> None:
        real(src, dst)  # the other process's copy lands first
        raise OSError(errno.ENOTEMPTY, "Directory not empty")

    monkeypatch.setattr("os.rename", raced)
    aci = aci_bytes(manifest_doc("example.com/app"), {"f": b"f"})
    info = store.add(io.BytesIO(aci), "app.aci")
    assert store.manifest(info.image_id) is not None
    assert store.aci_path(info.image_id).is_file()
