"""What provisioned containers use, read from their records (lazyfs.provision.usage)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lazyfs.provision.usage import containers, used_images, used_layers

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def _image(reference: str, *layers: str) -> dict[str, object]:
    return {"reference": reference, "platform": "linux/amd64", "digest": "", "layers": list(layers)}


def _write(work: Path, cid: str, record: dict[str, object] | None, *, half: bool = False) -> None:
    home = work / "provisioner" / "containers" / cid
    home.mkdir(parents=True)
    if record is not None:
        (home / "info.json").write_text(json.dumps(record))
    if half:
        (home / "provisioning").write_text(f"{os.getpid()}\n")


def _record(cid: str, image: dict[str, object], **extra: object) -> dict[str, object]:
    return {
        "container_id": cid,
        "rootfs": f"/r/{cid}",
        "backend": "copy",
        "writable": False,
        "image": image,
        **extra,
    }


def test_an_old_record_without_volumes_loads_and_counts(tmp_path: Path) -> None:
    # As lazyfs wrote info.json before volumes: no "volumes" key, no platform.
    old = _record("old", {"reference": "busybox", "digest": "sha256:x", "layers": [A]})
    _write(tmp_path, "old", old)
    (listed,) = containers(tmp_path)
    assert listed.record is not None
    assert listed.record.volumes == ()
    assert listed.record.image.platform == ""
    assert used_layers(tmp_path) == {A}


def test_volumes_count_as_the_containers(tmp_path: Path) -> None:
    volume = {
        "container_path": "/data",
        "mode": "ro",
        "rootfs": "/r/v",
        "writable": False,
        "image": _image("data", B, C),
    }
    _write(tmp_path, "c1", _record("c1", _image("busybox", A), volumes=[volume]))
    usage = used_images(tmp_path)
    assert usage.layers == {A, B, C}
    assert usage.references == {("busybox", "linux/amd64"), ("data", "linux/amd64")}
    assert [(u.container_id, u.container_path) for u in usage.images] == [
        ("c1", None),
        ("c1", "/data"),
    ]
    assert usage.unknown == ()


def test_half_done_and_damaged_containers_are_unknown(tmp_path: Path) -> None:
    _write(tmp_path, "busy", _record("busy", _image("busybox", A)), half=True)
    _write(tmp_path, "none", None)
    _write(tmp_path, "torn", {"container_id": "torn"})
    usage = used_images(tmp_path)
    assert usage.images == ()
    assert usage.unknown == ("busy", "none", "torn")
    problems = {listed.container_id: listed.problem for listed in containers(tmp_path)}
    assert problems["torn"].startswith("unreadable record")
    assert problems["busy"].startswith("incomplete")


def test_nothing_is_created_for_a_work_dir_that_is_not_there(tmp_path: Path) -> None:
    work = tmp_path / "absent"
    assert used_images(work).images == ()
    assert not work.exists()


def test_lazyfs_mounts_count_and_a_mount_without_its_image_is_unknown(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    (mounts / "k1").mkdir(parents=True)
    (mounts / "k1" / "image.json").write_text(json.dumps(_image("busybox", A, B)))
    (mounts / "k2").mkdir()  # a mount starting, or one an older lazyfs made
    _write(tmp_path, "c1", _record("c1", _image("other", C)))
    usage = used_images(tmp_path)
    assert usage.layers == {A, B, C}
    assert ("busybox", "linux/amd64") in usage.references
    assert [path.name for path, _ in usage.mounts] == ["k1"]
    assert usage.unknown == (f"mount:{mounts / 'k2'}",)
