"""`lazyfs ps`'s table names which of a container's mounts is in a bad state, as
``ps --json`` does, instead of giving the whole container its volume's state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.cli_ps import ps


def _image(reference: str) -> dict[str, object]:
    return {"reference": reference, "platform": "linux/amd64", "digest": "", "layers": []}


def _provisioned(work: Path, container_id: str, volumes: dict[str, bool]) -> None:
    """A copy-backend container with a volume per path, its directory there or not: the
    copy backend's state (``directory`` or ``missing``) needs no mount to be real."""
    home = work / "provisioner" / "containers" / container_id
    rootfses = home / "backends" / "copy" / "rootfses"
    rootfs = rootfses / "root"
    rootfs.mkdir(parents=True)
    recorded = []
    for number, (path, there) in enumerate(volumes.items()):
        volume_rootfs = rootfses / f"volume{number}"
        if there:
            volume_rootfs.mkdir()
        recorded.append({"container_path": path, "mode": "ro", "rootfs": str(volume_rootfs),
                         "writable": False, "image": _image("data")})  # fmt: skip
    record = {"container_id": container_id, "backend": "copy", "rootfs": str(rootfs),
              "writable": True, "image": _image("busybox"), "volumes": recorded}  # fmt: skip
    (home / "info.json").write_text(json.dumps(record))


def _mount_cells(work: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert ps(work, as_json=False) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    start = header.index("MOUNT")
    return {row.split()[0]: row[start:] for row in rows}


def test_a_missing_volume_is_named_not_taken_for_the_rootfs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _provisioned(tmp_path, "c1", {"/data": False, "/etc/conf": True})
    _provisioned(tmp_path, "c2", {"/data": True})
    assert _mount_cells(tmp_path, capsys) == {
        "c1": "directory, volume /data missing",
        "c2": "directory",
    }
    # The same as --json says: the rootfs is there, the volume is not.
    assert ps(tmp_path, as_json=True) == 0
    c1, _ = json.loads(capsys.readouterr().out)
    assert (c1["mount"], c1["rootfs_mount"]) == ("missing", "directory")
    assert [v["mount"] for v in c1["volumes"]] == ["missing", "directory"]
