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


@pytest.mark.parametrize("target", ["/etc/shadow", "rootfs/../../etc/shadow", "manifest"])
def test_a_hardlink_out_of_rootfs_is_named_with_its_target(target: str) -> None:
    # "entry '/etc/shadow' has an absolute name" named the target as if it were an entry.
    link = tarfile.TarInfo("rootfs/hl")
    link.type = tarfile.LNKTYPE
    link.linkname = target
    aci = aci_bytes(manifest_doc("example.com/hl"), {"etc/x": b"x"}, extra=[link])
    with pytest.raises(BadImage) as refused:
        read_aci(io.BytesIO(aci), io.BytesIO(), "hl.aci")
    assert f"entry 'rootfs/hl' links to {target!r}, outside rootfs/" in str(refused.value)


@pytest.mark.parametrize("told", [False, True])
def test_a_bomb_says_which_compressed_bytes_it_was_judged_on(told: bool) -> None:
    # 80 MiB of zeros in some 80 KB: past the floor of 64 MiB, and 100 times the blob.
    aci = aci_bytes(manifest_doc("example.com/bomb"), {"zeros": bytes(80 << 20)})
    with pytest.raises(BadImage) as refused:
        read_aci(io.BytesIO(aci), io.BytesIO(), "bomb.aci", size=len(aci) if told else None)
    said = f"for its {len(aci)} compressed bytes" if told else "for the first "
    assert said in str(refused.value), refused.value
