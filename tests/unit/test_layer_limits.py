"""How far a layer may unpack: compression bombs and oversized layers refused, by apply and index.

The bomb is a gzip (or zstd) layer of one file of zeros, 1000 times (zstd:
far more) smaller than its tar: past the default ratio.  Refusals are one
line naming the flag that raises the bound, and leave nothing in the store.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard

from backends.apply import LayerFile, apply_layers
from lazyfs.index import stored as stored_index
from lazyfs.index.formats import build_index
from lazyfs.index.stored import ensure_index
from providers.digest import digest_bytes
from providers.errors import BadImage
from providers.tar_stream import RATIO_FLOOR, LayerLimits

MiB = 1 << 20
ZEROS = 100 * MiB  # past the 64 MiB a layer may always unpack to


def _zeros_tar(size: int) -> bytes:
    """A tar of one file, ``zeros``, of ``size`` zero bytes."""
    head = io.BytesIO()
    info = tarfile.TarInfo("zeros")
    info.size = size
    head.write(info.tobuf(format=tarfile.PAX_FORMAT))
    return head.getvalue()


def bomb(kind: str, size: int = ZEROS) -> bytes:
    """A ``kind`` layer blob whose tar holds ``size`` zero bytes, compressed as it is made."""
    header = _zeros_tar(size)
    padding = bytes(-size % 512) + bytes(1024)
    chunk = bytes(MiB)
    if kind == "gzip":
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        parts = [packer.compress(header)]
        for start in range(0, size, MiB):
            parts.append(packer.compress(chunk[: min(MiB, size - start)]))
        parts += [packer.compress(padding), packer.flush()]
        return b"".join(parts)
    writer = zstandard.ZstdCompressor().compressobj()
    parts = [writer.compress(header)]
    for start in range(0, size, MiB):
        parts.append(writer.compress(chunk[: min(MiB, size - start)]))
    parts += [writer.compress(padding), writer.flush()]
    return b"".join(parts)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {kind: bomb(kind) for kind in ("gzip", "zstd")}


def layer_file(tmp_path: Path, data: bytes) -> LayerFile:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return LayerFile(digest_bytes(data), path)


def store(tmp_path: Path) -> tuple[Path, Path]:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    return layers, tmp


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_apply_refuses_a_compression_bomb(
    bombs: dict[str, bytes], kind: str, tmp_path: Path
) -> None:
    layer = layer_file(tmp_path, bombs[kind])
    assert len(bombs[kind]) * 100 < RATIO_FLOOR < ZEROS
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(BadImage) as caught:
        apply_layers(root, [layer])
    message = one_line(caught.value)
    assert message.startswith(f"bad layer {layer.digest}: unpacks to more than {RATIO_FLOOR}")
    assert "--max_layer_ratio" in message
    # It stopped at the bound, not at the end of the bomb.
    assert (root / "zeros").stat().st_size <= RATIO_FLOOR


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_the_index_refuses_a_compression_bomb_and_stores_nothing(
    bombs: dict[str, bytes], kind: str, tmp_path: Path
) -> None:
    layer = layer_file(tmp_path, bombs[kind])
    layers, tmp = store(tmp_path)
    with pytest.raises(BadImage) as caught:
        ensure_index(layers, tmp, layer.digest, layer.path)
    assert "--max_layer_ratio" in one_line(caught.value)
    home = stored_index.index_path(layers, layer.digest).parent
    assert [p.name for p in home.iterdir()] == ["lock"]
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_raised_ratio_lets_the_layer_through(
    bombs: dict[str, bytes], kind: str, tmp_path: Path
) -> None:
    layer = layer_file(tmp_path, bombs[kind])
    limits = LayerLimits(max_ratio=1_000_000)
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(root, [layer], limits=limits)
    assert (root / "zeros").stat().st_size == ZEROS
    layers, tmp = store(tmp_path)
    index = ensure_index(layers, tmp, layer.digest, layer.path, limits=limits)
    assert [(e.path, e.size) for e in index.entries] == [(("zeros",), ZEROS)]


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_the_absolute_cap(kind: str, tmp_path: Path) -> None:
    data = _zeros_tar(3 * MiB) + os.urandom(3 * MiB) + bytes(1024)
    blob = {"none": data, "gzip": gzip.compress(data, 1)}.get(kind)
    if blob is None:
        blob = zstandard.ZstdCompressor().compress(data)
    layer = layer_file(tmp_path, blob)
    limits = LayerLimits(max_size=2 * MiB)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(BadImage) as caught:
        apply_layers(root, [layer], limits=limits)
    assert one_line(caught.value).endswith(
        f"more than {2 * MiB} bytes, the most any layer may have, see --max_layer_size"
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(BadImage, match="--max_layer_size"):
        build_index(layer.digest, layer.path, scratch, limits=limits)
    # Under the default limits the same layer is fine.
    scratch = tmp_path / "scratch2"
    scratch.mkdir()
    assert len(build_index(layer.digest, layer.path, scratch).entries) == 1


def test_the_bound_of_a_layer() -> None:
    limits = LayerLimits(max_size=1 << 40, max_ratio=100)
    by_size = "the most any layer may have, see --max_layer_size"
    assert limits.bound(None) == (1 << 40, by_size)
    # Tiny layers may always unpack a little.
    assert limits.bound(10) == (
        RATIO_FLOOR,
        "the most for its 10 compressed bytes at --max_layer_ratio 100",
    )
    assert limits.bound(10 * MiB) == (
        1000 * MiB,
        f"the most for its {10 * MiB} compressed bytes at --max_layer_ratio 100",
    )
    assert LayerLimits(max_size=5 * MiB).bound(10 * MiB) == (5 * MiB, by_size)
