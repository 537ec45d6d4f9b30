"""How an Appc image renders: whitelists as the reference renderer applies them,
``app.exec`` as entrypoint and arguments, and names a layer would take for whiteouts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from providers.aci import write_layer
from providers.appc_manifest import parse_aci_manifest
from providers.errors import BadEntry
from tests.support.acis import APP, aci_bytes, manifest_doc, put_aci
from tests.support.lazyfs_cli import AppcLazyfs, one_line_error

BUSYBOX = Path("/bin/busybox")


def provision(lazyfs: AppcLazyfs, cid: str, image: str) -> dict[str, object]:
    result = lazyfs("provision", cid, image, "--backend", "copy")
    info: dict[str, object] = json.loads(result.stdout)
    return info


def files_in(rootfs: Path) -> list[str]:
    return sorted(str(path.relative_to(rootfs)) for path in rootfs.rglob("*") if not path.is_dir())


# -- pathWhitelist ----------------------------------------------------------------


def test_an_image_reached_directly_shows_whole_whatever_the_dependency_order(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # base: a shell and a passwd; mid2 keeps only busybox of it.
    base: dict[str, bytes | str] = {
        "bin/busybox": b"busybox",
        "bin/sh": "busybox",
        "etc/passwd": b"root\n",
    }
    put_aci(aci_dir, "example.com/base", aci_bytes(manifest_doc("example.com/base"), base))
    mid2 = manifest_doc(
        "example.com/mid2",
        dependencies=[{"imageName": "example.com/base"}],
        path_whitelist=["/mid2", "/bin/busybox"],
    )
    put_aci(aci_dir, "example.com/mid2", aci_bytes(mid2, {"mid2": b"m\n"}))
    for name, deps in [("app2", ["mid2", "base"]), ("app3", ["base", "mid2"])]:
        doc = manifest_doc(
            f"example.com/{name}",
            dependencies=[{"imageName": f"example.com/{dep}"} for dep in deps],
        )
        put_aci(aci_dir, f"example.com/{name}", aci_bytes(doc, {name: b"a\n"}))
    for name in ("app2", "app3"):
        info = provision(appc_lazyfs, name, f"appc:example.com/{name}")
        # Both reach base directly, without a whitelist: all of it shows.
        assert files_in(Path(str(info["rootfs"]))) == [
            name,
            "bin/busybox",
            "bin/sh",
            "etc/passwd",
            "mid2",
        ], name
    # mid2 alone still limits base to its whitelist.
    info = provision(appc_lazyfs, "mid2", "appc:example.com/mid2")
    assert files_in(Path(str(info["rootfs"]))) == ["bin/busybox", "mid2"]


def test_the_topmost_whitelist_of_a_branch_decides_and_its_own_keeps_directories(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    base = {"x": b"x\n", "y": b"y\n", "z": b"z\n"}
    put_aci(aci_dir, "example.com/base", aci_bytes(manifest_doc("example.com/base"), base))
    # mid's whitelist leaves x out, but top's, above it, lists x: the reference
    # renderer (getUpperPWLM) takes the topmost whitelist, not their intersection.
    mid = manifest_doc(
        "example.com/mid",
        dependencies=[{"imageName": "example.com/base"}],
        path_whitelist=["/y", "/m"],
    )
    put_aci(aci_dir, "example.com/mid", aci_bytes(mid, {"m": b"m\n", "n": b"n\n"}))
    top = manifest_doc(
        "example.com/top",
        dependencies=[{"imageName": "example.com/mid"}],
        path_whitelist=["/x", "/m", "/n", "/top"],
    )
    empty = tarfile.TarInfo("rootfs/tmp")
    empty.type, empty.mode = tarfile.DIRTYPE, 0o1777
    put_aci(aci_dir, "example.com/top", aci_bytes(top, {"top": b"t\n"}, extra=[empty]))
    info = provision(appc_lazyfs, "c1", "appc:example.com/top")
    rootfs = Path(str(info["rootfs"]))
    # x from base (top lists it), m from mid (both list it); n is mid's own file
    # and mid's own whitelist drops it, whatever top lists.
    assert files_in(rootfs) == ["m", "top", "x"]
    # An image's own whitelist drops files, never its directories.
    assert (rootfs / "tmp").is_dir()


# -- app.exec ---------------------------------------------------------------------


def test_exec_is_the_entrypoint_and_its_default_arguments() -> None:
    doc = manifest_doc("example.com/app", app={**APP, "exec": ["/bin/sh", "-c", "true"]})
    config = parse_aci_manifest(json.dumps(doc).encode()).config
    assert (config.entrypoint, config.cmd) == (("/bin/sh",), ("-c", "true"))
    alone = manifest_doc("example.com/app", app={**APP, "exec": ["/bin/true"]})
    config = parse_aci_manifest(json.dumps(alone).encode()).config
    assert (config.entrypoint, config.cmd) == (("/bin/true",), ())


def test_run_arguments_replace_exec_arguments_and_keep_its_program(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    files: dict[str, bytes | str] = {"bin/busybox": BUSYBOX.read_bytes(), "bin/sh": "busybox"}
    put_aci(aci_dir, "example.com/bb", aci_bytes(manifest_doc("example.com/bb", app=APP), files))
    info = json.loads(appc_lazyfs("provision", "c1", "appc:example.com/bb").stdout)
    assert info["config"]["entrypoint"] == APP["exec"][:1]
    assert info["config"]["cmd"] == APP["exec"][1:]
    appc_lazyfs("destroy", "c1")
    # Without arguments: exec whole.
    assert appc_lazyfs("run", "appc:example.com/bb").stdout == "hello from appc\n"
    # With some: exec[0] with them, as Mesos runs an appc task's arguments.
    replaced = appc_lazyfs("run", "appc:example.com/bb", "--", "echo", "replaced")
    assert replaced.stdout == "replaced\n"


# -- whiteout names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "entry"),
    [("etc/.wh.passwd", "rootfs/etc/.wh.passwd"), ("bin/.wh..wh..opq", "rootfs/bin/.wh..wh..opq")],
)
def test_a_file_named_like_a_whiteout_is_refused_and_deletes_nothing(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, name: str, entry: str
) -> None:
    base = {"etc/passwd": b"root\n", "bin/true": b"t"}
    put_aci(aci_dir, "example.com/base", aci_bytes(manifest_doc("example.com/base"), base))
    doc = manifest_doc("example.com/top", dependencies=[{"imageName": "example.com/base"}])
    put_aci(aci_dir, "example.com/top", aci_bytes(doc, {name: b""}))
    result = appc_lazyfs(
        "provision", "c1", "appc:example.com/top", "--backend", "copy", check=False
    )
    line = one_line_error(result)
    assert repr(entry) in line
    assert "whiteout" in line
    assert not (appc_lazyfs.work_dir / "provisioner" / "containers" / "c1").exists()


def test_a_layer_is_never_written_with_a_whiteout_name() -> None:
    # An ACI kept before read_aci refused such names reaches write_layer as it is.
    aci = aci_bytes(manifest_doc("example.com/top"), {"etc/.wh.passwd": b""}, compression="none")
    with pytest.raises(BadEntry, match=r"'rootfs/etc/\.wh\.passwd'"):
        write_layer(io.BytesIO(aci), io.BytesIO(), (), "top")
