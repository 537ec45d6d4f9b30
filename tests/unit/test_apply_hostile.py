"""Hostile and damaged layers: refused, and nothing written outside the rootfs.

Every hostile entry aims at a file named PROBE outside the rootfs (relative
escapes land next to it, in the test's tmp_path; absolute ones at the host's
root), and the test checks that no PROBE appeared anywhere it could reach
and that the sentinel directory beside the rootfs is unchanged.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import apply as apply_module
from backends.apply import LayerFile, apply_layer, apply_layers
from providers import tar_stream
from providers.digest import digest_bytes
from providers.errors import BadImage, UnsafeLayer
from tests.support.hostile_layers import HOSTILE, PROBE, Hostile, outside_state
from tests.support.tar_members import apply_all, layer, reg, sym, tree


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def _truncations() -> Iterator[tuple[str, bytes]]:
    whole = layer(reg("a", b"x" * 5000), reg("b", b"y" * 10)).getvalue()
    yield "in-data", whole[:1500]
    second = 512 + 5120  # a's header and its data, in whole blocks
    yield "in-header", whole[: second + 100]
    yield "in-end-marker", whole[: second + 1024 + 100]
    garbled = bytearray(whole)
    garbled[second + 3 : second + 40] = b"\xff" * 37
    yield "garbled-header", bytes(garbled)
    yield "not-a-tar", b"hello" * 300


@pytest.mark.parametrize(
    ("what", "data"), list(_truncations()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_damaged_tar_is_a_bad_image(root: Path, what: str, data: bytes) -> None:
    with pytest.raises(BadImage, match="layer0"):
        apply_layer(root, io.BytesIO(data), layer="layer0")


def test_damaged_gzip_is_a_bad_image(root: Path, tmp_path: Path) -> None:
    data = gzip.compress(layer(reg("a", b"x" * 100_000)).getvalue())
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage):
        apply_layers(root, [LayerFile(digest_bytes(data), corrupt)])
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF  # the CRC trailer: only a read to the end notices
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(BadImage):
        apply_layers(root, [LayerFile(digest_bytes(data), corrupt)])


def test_entry_count_is_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apply_module, "MAX_ENTRIES", 3)
    with pytest.raises(BadImage, match="more than 3 entries"):
        apply_all(root, layer(*(reg(f"f{index}") for index in range(4))))


def test_extended_headers_are_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tar_stream, "MAX_HEADER_BYTES", 1000)
    with pytest.raises(BadImage):
        apply_all(root, layer(reg("f", pax_headers={"comment": "x" * 2000})))


# --- hostile layers -------------------------------------------------------


@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
def test_hostile_layers_are_refused(root: Path, tmp_path: Path, case: Hostile, split: bool) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("secret")
    before = outside_state(tmp_path)
    members = list(case.members)
    layers = [layer(*members[:-1]), layer(members[-1])] if split else [layer(*members)]
    with pytest.raises(UnsafeLayer) as caught:
        apply_all(root, *layers)
    assert str(caught.value).startswith("unsafe layer layer")
    assert outside_state(tmp_path) == before
    for place in (Path("/"), Path("/tmp"), tmp_path.parent, Path.cwd()):
        assert not (place / PROBE).exists()


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
@pytest.mark.parametrize("target", ["../outside/secret", "ABSOLUTE"])
def test_writing_over_a_symlink_replaces_it(
    root: Path, tmp_path: Path, split: bool, target: str
) -> None:
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside/secret"
    secret.write_text("secret")
    link = sym("evil", str(secret) if target == "ABSOLUTE" else target)
    write = reg("evil", b"mine", mode=0o666)
    apply_all(root, *([layer(link), layer(write)] if split else [layer(link, write)]))
    assert tree(root) == {"evil": "file:mine"}
    assert secret.read_text() == "secret"
    assert stat.S_IMODE(secret.stat().st_mode) != 0o666


def test_absolute_symlink_parent_stays_inside_the_rootfs(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    apply_all(root, layer(sym("evil", str(outside))), layer(reg("evil/x", b"in")))
    assert list(outside.iterdir()) == []
    inside = root / str(outside).lstrip("/") / "x"
    assert inside.read_bytes() == b"in"
