"""Reading an ACI archive: damage is refused, never read as a shorter archive."""

from __future__ import annotations

import io

import pytest

from providers.aci import read_aci
from providers.errors import BadImage
from tests.support.acis import aci_bytes, manifest_doc

BLOCK = 512
CHECKSUM = slice(148, 156)  # the ustar header's checksum field


def test_a_damaged_header_in_the_middle_is_refused() -> None:
    files = {"a": b"a", "b": b"b", "c": b"c"}
    aci = bytearray(aci_bytes(manifest_doc("example.com/app"), files, compression="none"))
    header = aci.index(b"rootfs/b\0")
    assert header % BLOCK == 0
    aci[header + CHECKSUM.start : header + CHECKSUM.stop] = b"0000000\0"
    with pytest.raises(BadImage, match="corrupt or truncated"):
        read_aci(io.BytesIO(bytes(aci)), io.BytesIO(), "damaged.aci")
