"""A store record that cannot be used is passed over, fetched again and replaced."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

import lazyfs.images.appc as appc_provider
import providers.appc_store as appc_store
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.aci import read_aci
from providers.appc_source import AppcRef, AppcStoreSource
from providers.appc_store import AppcStore
from providers.errors import NotFound
from tests.support.acis import aci_bytes, manifest_doc, put_aci

NAME = "example.com/web"
ACI = aci_bytes(manifest_doc(NAME), {"index.html": b"hello\n" * 1000}, compression="none")
IMAGE_ID = read_aci(io.BytesIO(ACI), io.BytesIO(), "test").image_id


def fetch(tmp_path: Path, appc: AppcStore, prefix: str, wanted: AppcRef) -> str:
    """Resolve ``wanted`` as a run does (store first, then discovery); the top image's id."""
    provider = appc_provider.AppcProvider(Store(tmp_path / "store"), appc, prefix)
    image = provider._fetch_blocking(wanted, cached=True, progress=Progress(enabled=False))
    return "sha512-" + image.digest.removeprefix("sha512:")


def mesos_record(appc: AppcStore) -> Path:
    """The image as Mesos' own store keeps it: the manifest and an extracted rootfs/."""
    home = appc.images / IMAGE_ID
    (home / "rootfs").mkdir(parents=True)
    (home / "rootfs" / "index.html").write_bytes(b"hello\n")
    info = read_aci(io.BytesIO(ACI), io.BytesIO(), "test")
    (home / "manifest").write_bytes(info.manifest_bytes)
    return home


@pytest.mark.parametrize("by_id", [False, True])
def test_a_record_without_its_aci_is_fetched_again(
    tmp_path: Path, by_id: bool, caplog: pytest.LogCaptureFixture
) -> None:
    appc = AppcStore(tmp_path / "appc")
    home = mesos_record(appc)
    put_aci(tmp_path / "acis", NAME, ACI)
    wanted = AppcRef(NAME, image_id=IMAGE_ID if by_id else "")
    with caplog.at_level(logging.WARNING, logger="providers.appc_store"):
        assert fetch(tmp_path, appc, str(tmp_path / "acis") + "/", wanted) == IMAGE_ID
    assert (home / "image.aci").read_bytes() == ACI
    assert not (home / "rootfs").exists()  # the whole record was replaced
    assert list(appc.tmp.iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(home) in warnings[0] and "no image.aci" in warnings[0]


def test_a_record_without_its_aci_and_no_discovery_is_not_in_the_store(tmp_path: Path) -> None:
    appc = AppcStore(tmp_path / "appc")
    mesos_record(appc)
    with pytest.raises(NotFound, match="is not in the store"):
        AppcStoreSource(appc).resolve(NAME)
    with pytest.raises(NotFound, match="is not in the store"):
        AppcStoreSource(appc).resolve(f"{NAME}@{IMAGE_ID}")


# Half the ACI (a broken archive), and all but its last block: a shorter archive
# that still reads, which only the id tells from the real one.
@pytest.mark.parametrize("cut", [len(ACI) // 2, len(ACI) - 512])
def test_a_truncated_aci_is_fetched_again(tmp_path: Path, cut: int) -> None:
    appc = AppcStore(tmp_path / "appc")
    appc.add(io.BytesIO(ACI), "test")
    stored = appc.aci_path(IMAGE_ID)
    stored.write_bytes(ACI[:cut])
    with pytest.raises(NotFound):
        AppcStoreSource(appc).resolve(NAME)
    put_aci(tmp_path / "acis", NAME, ACI)
    assert fetch(tmp_path, appc, str(tmp_path / "acis") + "/", AppcRef(NAME)) == IMAGE_ID
    assert stored.read_bytes() == ACI
    assert list(appc.tmp.iterdir()) == []


def test_a_broken_record_is_replaced_without_an_atomic_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kernels and file systems without renameat2's RENAME_EXCHANGE: moved aside, then in.
    monkeypatch.setattr(appc_store, "_exchange", lambda first, second: False)
    appc = AppcStore(tmp_path / "appc")
    home = mesos_record(appc)
    assert appc.add(io.BytesIO(ACI), "test").image_id == IMAGE_ID
    assert (home / "image.aci").read_bytes() == ACI
    assert AppcStoreSource(appc).resolve(NAME).layers[0].size == len(ACI)
    assert list(appc.tmp.iterdir()) == []


def test_adding_a_stored_image_again_keeps_one_whole_record(tmp_path: Path) -> None:
    appc = AppcStore(tmp_path / "appc")
    appc.add(io.BytesIO(ACI), "test")
    appc.add(io.BytesIO(ACI), "test")
    assert [p.name for p in appc.images.iterdir()] == [IMAGE_ID]
    assert appc.aci_path(IMAGE_ID).read_bytes() == ACI
    assert list(appc.tmp.iterdir()) == []


def test_a_stray_file_in_images_does_not_break_lookups(tmp_path: Path) -> None:
    appc = AppcStore(tmp_path / "appc")
    (appc.images / "broken.aci").write_bytes(b"not a record")
    appc.add(io.BytesIO(ACI), "test")
    (appc.images / "zz-unreadable").mkdir()
    (appc.images / "zz-unreadable" / "manifest").mkdir()  # reading it: IsADirectoryError
    assert appc.find(NAME, {}) == IMAGE_ID
    assert appc.find("example.com/other", {}) is None
    assert AppcStoreSource(appc).resolve(NAME).layers[0].size == len(ACI)


def test_an_aci_changed_in_place_is_hashed_again_though_size_and_mtime_stay(
    tmp_path: Path,
) -> None:
    # The record's note held size and mtime only: bytes changed in place and the
    # mtime put back (utime, cp -a) were trusted by every later process.
    appc = AppcStore(tmp_path / "appc")
    appc.add(io.BytesIO(ACI), "test")
    aci = appc.aci_path(IMAGE_ID)
    before = aci.stat()
    with aci.open("r+b") as file:
        file.seek(len(ACI) - 2000)
        file.write(b"XXXXX")
    os.utime(aci, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert AppcStore(tmp_path / "appc").manifest(IMAGE_ID) is None  # a later process's look
    assert appc.manifest(IMAGE_ID) is None  # and this one's, which hashed it as it wrote it


def test_a_lookup_by_name_hashes_no_other_images_aci(tmp_path: Path) -> None:
    appc = AppcStore(tmp_path / "appc")
    other = aci_bytes(manifest_doc("example.com/other"), {"a": b"1"}, compression="none")
    other_id = appc.add(io.BytesIO(other), "test").image_id
    appc.add(io.BytesIO(ACI), "test")
    for image_id in (other_id, IMAGE_ID):  # as a store filled by hand: neither hashed yet
        (appc.images / image_id / appc_store.VERIFIED).unlink()
    # Looked for: the one a walk of images/ meets last, after the other.
    first, last = sorted((other_id, IMAGE_ID))
    name = {other_id: "example.com/other", IMAGE_ID: NAME}[last]
    assert AppcStore(tmp_path / "appc").find(name, {}) == last
    assert (appc.images / last / appc_store.VERIFIED).exists()  # the candidate, checked
    assert not (appc.images / first / appc_store.VERIFIED).exists()  # the other, not hashed


def test_a_stray_file_where_a_record_goes_is_replaced_and_leaves_nothing(tmp_path: Path) -> None:
    appc = AppcStore(tmp_path / "appc")
    (appc.images / IMAGE_ID).write_bytes(b"not a record")
    appc.add(io.BytesIO(ACI), "test")
    assert appc.aci_path(IMAGE_ID).read_bytes() == ACI
    assert list(appc.tmp.iterdir()) == []  # the file exchanged out went too
