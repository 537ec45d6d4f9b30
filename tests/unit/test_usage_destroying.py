"""A container whose destroy began, as its records read (lazyfs.provision.usage): being
destroyed, never provisioned, and still using its images until it is gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.provision.teardown import mark_destroying
from lazyfs.provision.usage import BeingDestroyed, containers, read_record, used_images

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def _home(work: Path, cid: str, layer: str | None) -> Path:
    """A provisioned container's directory (one of image ``layer``), or, for None, that
    of a provision that died before its record."""
    home = work / "provisioner" / "containers" / cid
    home.mkdir(parents=True)
    if layer is not None:
        image = {"reference": cid, "platform": "linux/amd64", "digest": "", "layers": [layer]}
        record = {"container_id": cid, "rootfs": f"/r/{cid}", "backend": "copy",
                  "writable": False, "image": image}  # fmt: skip
        (home / "info.json").write_text(json.dumps(record))
    else:
        (home / "provisioning").write_text("1\n")
    return home


def test_a_container_marked_as_being_destroyed_is_no_provisioned_one(tmp_path: Path) -> None:
    home = _home(tmp_path, "c1", A)
    _home(tmp_path, "c2", B)
    assert read_record(home) is not None
    mark_destroying(home)
    mark_destroying(home)  # a destroy again, after one that stopped: the same
    with pytest.raises(BeingDestroyed, match="being destroyed"):
        read_record(home)
    listed = {c.container_id: c for c in containers(tmp_path)}
    assert listed["c1"].destroying and not listed["c2"].destroying
    assert listed["c1"].problem.startswith("being destroyed")
    # What is left of it may still be mounted over its image: image GC keeps that.
    record = listed["c1"].record
    assert record is not None and record.image.layers == (A,)
    usage = used_images(tmp_path)
    assert usage.layers == {A, B} and usage.unknown == ()


def test_a_half_provisioned_container_marked_as_being_destroyed(tmp_path: Path) -> None:
    home = _home(tmp_path, "half", None)
    mark_destroying(home)
    (listed,) = containers(tmp_path)
    assert listed.destroying and listed.record is None
    assert listed.problem.startswith("being destroyed")
    # Its images are not known, as an incomplete container's are not.
    usage = used_images(tmp_path)
    assert usage.images == () and usage.unknown == ("half",)
