"""An ACI whose layers no backend applies is refused when it is fetched, naming it.

It was recorded and listed by ``lazyfs images`` as a usable image, and
refused later by the backend, naming a ``sha256:`` layer digest the user
never sees: an entry through a symlink above root, say, the symlink maybe a
dependency's.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tests.support.acis import aci_bytes, manifest_doc, put_aci
from tests.support.lazyfs_cli import AppcLazyfs, one_line_error


def _references(lazyfs: AppcLazyfs) -> list[str]:
    return sorted(item["reference"] for item in json.loads(lazyfs("images", "--json").stdout))


def _through_symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("rootfs/evil/pwned")
    info.size = 0
    return info


def test_an_aci_no_backend_applies_is_refused_naming_it_and_not_listed(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    doc = manifest_doc("example.com/evil", version="1.0")
    files: dict[str, bytes | str] = {"evil": "../../../../../../tmp/x"}
    put_aci(aci_dir, "example.com/evil", aci_bytes(doc, files, extra=[_through_symlink()]), "1.0")
    result = appc_lazyfs("provision", "c", "appc:example.com/evil,version=1.0", check=False)
    line = one_line_error(result)
    assert "appc image example.com/evil,version=1.0" in line
    assert "entry 'evil/pwned' goes through a symlink above root" in line
    assert "sha256:" not in line
    assert _references(appc_lazyfs) == []


def test_an_unsafe_entry_over_a_dependency_names_the_image_that_has_it(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # The symlink is the dependency's, harmless alone; the entry through it the image's.
    base = manifest_doc("example.com/base")
    put_aci(aci_dir, "example.com/base", aci_bytes(base, {"evil": "../../../../tmp/x"}))
    doc = manifest_doc("example.com/top", dependencies=[{"imageName": "example.com/base"}])
    put_aci(aci_dir, "example.com/top", aci_bytes(doc, {"ok": b"1"}, extra=[_through_symlink()]))
    line = one_line_error(appc_lazyfs("provision", "c", "appc:example.com/top", check=False))
    assert "of appc image example.com/top: entry 'evil/pwned' goes through" in line
    assert _references(appc_lazyfs) == []


def test_a_stored_image_is_not_checked_again_at_each_start(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # The check indexes and merges every layer: for a large ACI, seconds at each start
    # of a backend that reads no index. Done once, when the image is recorded.
    put_aci(aci_dir, "example.com/ok", aci_bytes(manifest_doc("example.com/ok", version="1.0"),
                                                  {"etc/hello": b"hi\n"}), "1.0")  # fmt: skip
    image = "appc:example.com/ok,version=1.0"
    appc_lazyfs("provision", "a", image, "--backend", "copy")
    layers = appc_lazyfs.work_dir / "store" / "docker" / "layers"
    indexes = sorted(layers.rglob("index*"))
    assert indexes, "the first start indexed its layers"
    for index in indexes:
        index.unlink()
    appc_lazyfs("provision", "b", image, "--backend", "copy")
    assert sorted(layers.rglob("index*")) == []
    for container in ("a", "b"):
        appc_lazyfs("destroy", container)
