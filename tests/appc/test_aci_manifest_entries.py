"""An ACI's manifest entry: one, within its bound, each refusal saying which."""

from __future__ import annotations

import io
import tarfile

import pytest

from providers.aci import MAX_MANIFEST_BYTES, read_aci
from providers.errors import BadImage
from tests.support.acis import aci_bytes, manifest_doc


def test_a_second_manifest_is_refused_as_such() -> None:
    # The last one read would have won, unsaid: an empty second one was reported as
    # "not valid JSON", the first being fine.
    second = tarfile.TarInfo("manifest")
    aci = aci_bytes(manifest_doc("example.com/two"), {"etc/x": b"x"}, extra=[second])
    with pytest.raises(BadImage, match="more than one manifest"):
        read_aci(io.BytesIO(aci), io.BytesIO(), "two.aci")


def test_a_manifest_past_the_bound_says_the_bound() -> None:
    aci = aci_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(BadImage, match=f"past the {MAX_MANIFEST_BYTES} taken"):
        read_aci(io.BytesIO(aci), io.BytesIO(), "big.aci")


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("/etc/shadow", "has an absolute hardlink target"),
        ("rootfs/../../etc/shadow", "has '..' in its hardlink target"),
        ("manifest", "links to 'manifest', outside rootfs/"),
    ],
)
def test_a_hardlink_out_of_rootfs_is_refused_naming_the_link(target: str, said: str) -> None:
    # "entry '/etc/shadow' has an absolute name" named the target as if it were an entry.
    link = tarfile.TarInfo("rootfs/hl")
    link.type = tarfile.LNKTYPE
    link.linkname = target
    aci = aci_bytes(manifest_doc("example.com/hl"), {"etc/x": b"x"}, extra=[link])
    with pytest.raises(BadImage) as refused:
        read_aci(io.BytesIO(aci), io.BytesIO(), "hl.aci")
    assert f"entry 'rootfs/hl' {said}" in str(refused.value)


def test_a_manifest_again_as_a_link_is_a_second_manifest() -> None:
    # An unpacked copy would read the link's target as the manifest: not the one judged.
    again = tarfile.TarInfo("manifest")
    again.type = tarfile.SYMTYPE
    again.linkname = "rootfs/etc/x"
    aci = aci_bytes(manifest_doc("example.com/two"), {"etc/x": b"{}"}, extra=[again])
    with pytest.raises(BadImage, match="more than one manifest"):
        read_aci(io.BytesIO(aci), io.BytesIO(), "two.aci")


@pytest.mark.parametrize("told", [False, True])
def test_a_bomb_says_which_compressed_bytes_it_was_judged_on(told: bool) -> None:
    # 80 MiB of zeros in some 80 KB: past the floor of 64 MiB, and 100 times the blob.
    aci = aci_bytes(manifest_doc("example.com/bomb"), {"zeros": bytes(80 << 20)})
    with pytest.raises(BadImage) as refused:
        read_aci(io.BytesIO(aci), io.BytesIO(), "bomb.aci", size=len(aci) if told else None)
    said = f"for its {len(aci)} compressed bytes" if told else "for the first "
    assert said in str(refused.value), refused.value
