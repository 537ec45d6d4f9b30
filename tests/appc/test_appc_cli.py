"""The Appc provider through the real ``lazyfs`` command, on ACIs made with tarfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from providers.appc_store import host_arch
from tests.support.acis import (
    APP,
    aci_bytes,
    aci_file_name,
    manifest_doc,
    put_aci,
    rootfs_of,
)
from tests.support.lazyfs_cli import AppcLazyfs, one_line_error
from tests.support.tree import diff_trees, tree_digest

BUSYBOX = Path("/bin/busybox")


def provision(
    lazyfs: AppcLazyfs, cid: str, image: str, *args: str, prefix: str | None = None
) -> dict[str, object]:
    result = lazyfs("provision", cid, image, *args, prefix=prefix)
    info: dict[str, object] = json.loads(result.stdout)
    return info


@pytest.mark.parametrize("compression", ["none", "gzip", "bzip2", "xz"])
@pytest.mark.parametrize("backend", ["copy", "overlay", "bind"])
def test_an_aci_from_a_directory_provisions_its_rootfs(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, tmp_path: Path, compression: str, backend: str
) -> None:
    files: dict[str, bytes | str] = {"etc/hostname": b"appc\n", "bin/sh": "busybox"}
    aci = put_aci(
        aci_dir,
        "example.com/hello",
        aci_bytes(
            manifest_doc("example.com/hello", app=APP, version="1.0"),
            files,
            compression=compression,
        ),
        version="1.0",
    )
    info = provision(appc_lazyfs, "c1", "appc:example.com/hello,version=1.0", "--backend", backend)
    config = info["config"]
    assert isinstance(config, dict)
    # exec[0] runs, the rest its arguments: replaced by a run's own, as in Mesos.
    assert (config["entrypoint"], config["cmd"]) == (APP["exec"][:1], APP["exec"][1:])
    assert config["env"] == ["GREETING=hi"]
    assert config["user"] == "0:0"
    assert config["working_dir"] == "/"
    want = tree_digest(rootfs_of(aci, tmp_path / "want"), dir_mtimes=False)
    got = tree_digest(Path(str(info["rootfs"])), dir_mtimes=False)
    assert diff_trees(want, got) == []
    appc_lazyfs("destroy", "c1")


def test_dependencies_are_lower_layers_in_spec_order_with_the_whitelist(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    put_aci(
        aci_dir,
        "example.com/base",
        aci_bytes(
            manifest_doc("example.com/base", version="latest"),
            {"etc/os": b"base\n", "etc/shared": b"base\n", "etc/hidden": b"base\n"},
        ),
        version="latest",
    )
    put_aci(
        aci_dir,
        "example.com/mid",
        aci_bytes(
            manifest_doc(
                "example.com/mid",
                dependencies=[{"imageName": "example.com/base"}],
                version="2.0",
            ),
            {"etc/shared": b"mid\n", "etc/mid": b"mid\n"},
        ),
        version="2.0",
    )
    put_aci(
        aci_dir,
        "example.com/top",
        aci_bytes(
            manifest_doc(
                "example.com/top",
                app=APP,
                dependencies=[
                    {
                        "imageName": "example.com/mid",
                        "labels": [{"name": "version", "value": "2.0"}],
                    },
                    {"imageName": "example.com/base"},
                ],
                path_whitelist=["/etc/os", "/etc/shared", "/etc/mid", "/etc/top"],
                version="1.0",
            ),
            {"etc/top": b"top\n"},
        ),
        version="1.0",
    )
    info = provision(appc_lazyfs, "c1", "appc:example.com/top,version=1.0", "--backend", "copy")
    layers = info["image"]["layers"]  # type: ignore[index]
    assert len(layers) == 3  # base once, though both top and mid depend on it
    etc = Path(str(info["rootfs"])) / "etc"
    assert sorted(p.name for p in etc.iterdir()) == ["mid", "os", "shared", "top"]
    # top's later dependency, base, is above its earlier one, mid, though mid depends
    # on base: its file wins, as acbuild, the appc reference renderer and Mesos have it.
    assert (etc / "shared").read_text() == "base\n"
    overlay = provision(
        appc_lazyfs, "c2", "appc:example.com/top,version=1.0", "--backend", "overlay"
    )
    assert (
        diff_trees(
            tree_digest(Path(str(info["rootfs"])), dir_mtimes=False),
            tree_digest(Path(str(overlay["rootfs"])), dir_mtimes=False),
        )
        == []
    )


def test_an_aci_from_a_loopback_http_server(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, http_prefix: str
) -> None:
    put_aci(aci_dir, "example.com/web", aci_bytes(manifest_doc("example.com/web"), {"a": b"1"}))
    info = provision(appc_lazyfs, "c1", "appc:example.com/web", prefix=http_prefix)
    assert (Path(str(info["rootfs"])) / "a").read_bytes() == b"1"


def test_the_store_serves_without_discovery_and_cached_false_fetches_again(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, tmp_path: Path
) -> None:
    put_aci(aci_dir, "example.com/app", aci_bytes(manifest_doc("example.com/app"), {"v": b"1"}))
    first = provision(appc_lazyfs, "c1", "appc:example.com/app")
    image_id = "sha512-" + str(first["image"]["digest"]).removeprefix("sha512:")  # type: ignore[index]
    assert (appc_lazyfs.work_dir / "store" / "appc" / "images" / image_id / "manifest").is_file()
    put_aci(aci_dir, "example.com/app", aci_bytes(manifest_doc("example.com/app"), {"v": b"2"}))
    # No prefix: the store alone has it, by name and by id.
    again = provision(appc_lazyfs, "c2", "appc:example.com/app", prefix="")
    assert (Path(str(again["rootfs"])) / "v").read_bytes() == b"1"
    spec = tmp_path / "image.json"
    spec.write_text(
        json.dumps({"type": "APPC", "appc": {"name": "example.com/app", "id": image_id}})
    )
    by_id = provision(appc_lazyfs, "c3", "--image-file", str(spec), prefix="")
    assert (Path(str(by_id["rootfs"])) / "v").read_bytes() == b"1"
    spec.write_text(
        json.dumps({"type": "APPC", "appc": {"name": "example.com/app"}, "cached": False})
    )
    fresh = provision(appc_lazyfs, "c4", "--image-file", str(spec))
    assert (Path(str(fresh["rootfs"])) / "v").read_bytes() == b"2"


def test_run_runs_the_image_exec_under_runc(appc_lazyfs: AppcLazyfs, aci_dir: Path) -> None:
    files: dict[str, bytes | str] = {"bin/busybox": BUSYBOX.read_bytes(), "bin/sh": "busybox"}
    put_aci(
        aci_dir,
        "example.com/busybox",
        aci_bytes(manifest_doc("example.com/busybox", app=APP), files),
    )
    result = appc_lazyfs("run", "appc:example.com/busybox")
    assert result.stdout == "hello from appc\n"
    shell = {**APP, "exec": ["/bin/sh", "-c", "echo $GREETING in $PWD; exit 3"]}
    shell["workingDirectory"] = "/bin"
    put_aci(
        aci_dir,
        "example.com/shell",
        aci_bytes(manifest_doc("example.com/shell", app=shell), files),
    )
    result = appc_lazyfs("run", "appc:example.com/shell", check=False)
    assert (result.returncode, result.stdout) == (3, "hi in /bin\n")


def _escaping() -> tarfile.TarInfo:
    info = tarfile.TarInfo("rootfs/../../escape")
    return info


@pytest.mark.parametrize(
    ("aci", "message"),
    [
        (aci_bytes(None, {"a": b"1"}), "no manifest file"),
        (aci_bytes(b"{not json", {"a": b"1"}), "not valid JSON"),
        (aci_bytes({**manifest_doc("example.com/bad"), "acVersion": "x"}), "acVersion"),
        (aci_bytes({**manifest_doc("example.com/bad"), "acKind": "PodManifest"}), "acKind"),
        (aci_bytes(manifest_doc("example.com/bad"), extra=[_escaping()]), "unsafe layer"),
        (
            aci_bytes(
                manifest_doc("example.com/bad", dependencies=[{"imageName": "example.com/gone"}])
            ),
            "dependency example.com/gone",
        ),
        (aci_bytes(manifest_doc("example.com/other")), "is named"),
        (b"not an archive at all, just bytes" * 20, "corrupt"),
    ],
)
def test_bad_acis_give_one_clear_line(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, aci: bytes, message: str
) -> None:
    put_aci(aci_dir, "example.com/bad", aci)
    line = one_line_error(appc_lazyfs("provision", "c1", "appc:example.com/bad", check=False))
    assert message in line
    assert not (appc_lazyfs.work_dir / "provisioner" / "containers" / "c1").exists()


def test_an_id_that_does_not_match_is_an_error(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, tmp_path: Path
) -> None:
    put_aci(aci_dir, "example.com/app", aci_bytes(manifest_doc("example.com/app")))
    spec = tmp_path / "image.json"
    wrong = "sha512-" + "0" * 128
    spec.write_text(json.dumps({"type": "APPC", "appc": {"name": "example.com/app", "id": wrong}}))
    line = one_line_error(appc_lazyfs("provision", "c1", "--image-file", str(spec), check=False))
    assert f"expected {wrong}" in line


def test_a_hardlink_out_of_rootfs_is_refused(appc_lazyfs: AppcLazyfs, aci_dir: Path) -> None:
    link = tarfile.TarInfo("rootfs/passwd")
    link.type = tarfile.LNKTYPE
    link.linkname = "manifest"
    put_aci(aci_dir, "example.com/bad", aci_bytes(manifest_doc("example.com/bad"), extra=[link]))
    line = one_line_error(appc_lazyfs("provision", "c1", "appc:example.com/bad", check=False))
    assert "outside rootfs/" in line


def test_an_unknown_image_is_not_found(appc_lazyfs: AppcLazyfs) -> None:
    line = one_line_error(appc_lazyfs("provision", "c1", "appc:example.com/none", check=False))
    assert "not found" in line


@pytest.fixture(autouse=True)
def _tar_available() -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is needed to extract reference trees")


def test_an_aci_refused_for_its_name_is_not_kept_to_answer_for_that_name(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # Discovery of example.com/evil served an image named example.com/base. It was
    # refused, but kept in the store first: a later appc:example.com/base (a dependency
    # of another image, say) got it from the store without discovery.
    put_aci(
        aci_dir, "example.com/evil", aci_bytes(manifest_doc("example.com/base"), {"x": b"evil"})
    )
    line = one_line_error(appc_lazyfs("provision", "c1", "appc:example.com/evil", check=False))
    assert "is named 'example.com/base'" in line
    assert list((appc_lazyfs.work_dir / "store" / "appc" / "images").iterdir()) == []
    put_aci(
        aci_dir, "example.com/base", aci_bytes(manifest_doc("example.com/base"), {"x": b"good"})
    )
    base = provision(appc_lazyfs, "c2", "appc:example.com/base")
    assert (Path(str(base["rootfs"])) / "x").read_bytes() == b"good"


def test_long_and_non_ascii_names_land_where_they_are_under_rootfs(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # Their names travel in pax headers, which won over the name the layer gave them:
    # they landed under /rootfs/ in the container.
    long = "d" * 120
    files = {long: b"long", "café": b"accent", "sub/" + long: b"deep"}
    put_aci(aci_dir, "example.com/app", aci_bytes(manifest_doc("example.com/app"), files))
    rootfs = Path(str(provision(appc_lazyfs, "c1", "appc:example.com/app")["rootfs"]))
    assert (rootfs / long).read_bytes() == b"long" and (rootfs / "café").read_bytes() == b"accent"
    assert (rootfs / "sub" / long).read_bytes() == b"deep"
    assert not (rootfs / "rootfs").exists()


def test_an_aci_is_held_to_the_layer_limits(appc_lazyfs: AppcLazyfs, aci_dir: Path) -> None:
    # An ACI was copied unpacked into the store with no bound at all: a few MB of xz
    # filled the disk. It now unpacks as far as a layer may, and no further.
    big = {"zeros": bytes(3 << 20)}
    put_aci(aci_dir, "example.com/big", aci_bytes(manifest_doc("example.com/big"), big))
    flags = ("--max_layer_size", "1MiB", "provision", "c1", "appc:example.com/big")
    line = one_line_error(appc_lazyfs(*flags, check=False))
    assert "unpacks to more than 1048576 bytes" in line and "--max_layer_size" in line
    assert list((appc_lazyfs.work_dir / "store" / "appc" / "images").iterdir()) == []
    provision(appc_lazyfs, "c2", "appc:example.com/big")  # within the default limits


def test_a_discovery_prefix_with_credentials_is_shown_without_them(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, http_prefix: str
) -> None:
    secret = http_prefix.replace("http://", "http://ann:s3cret@")
    put_aci(aci_dir, "example.com/evil", aci_bytes(manifest_doc("example.com/base")))
    for image in ("example.com/gone", "example.com/evil"):  # a 404, a refusal
        result = appc_lazyfs("provision", "c1", f"appc:{image}", check=False, prefix=secret)
        line = one_line_error(result)
        assert "s3cret" not in line and "s3cret" not in result.stdout and http_prefix in line


def test_an_aci_that_compresses_well_early_is_judged_on_its_whole_size(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # 70 MiB of zeros first, then 2 MiB that do not compress: about 37 times its size,
    # so within the default 100. Judged on the bytes read so far, it was refused.
    files = {"zeros": bytes(70 << 20), "noise": os.urandom(2 << 20)}
    put_aci(aci_dir, "example.com/app", aci_bytes(manifest_doc("example.com/app"), files))
    rootfs = Path(str(provision(appc_lazyfs, "c1", "appc:example.com/app")["rootfs"]))
    assert (rootfs / "zeros").stat().st_size == 70 << 20
    # A bomb of the same zeros alone is more than 100 times its size.
    put_aci(
        aci_dir,
        "example.com/bomb",
        aci_bytes(manifest_doc("example.com/bomb"), {"zeros": bytes(70 << 20)}),
    )
    line = one_line_error(appc_lazyfs("provision", "c2", "appc:example.com/bomb", check=False))
    assert "unpacks to more than 67108864 bytes" in line and "--max_layer_ratio 100" in line


def test_a_sparse_file_of_a_gnu_tar_aci_is_whole_in_the_rootfs(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, tmp_path: Path
) -> None:
    # GNU tar's pax sparse records were copied into the layer with the file written
    # whole: its map then ran past the entry, and GNU.sparse.name kept rootfs/.
    made = tmp_path / "made"
    (made / "rootfs").mkdir(parents=True)
    (made / "manifest").write_text(json.dumps(manifest_doc("example.com/sparse")))
    with (made / "rootfs" / "sp").open("wb") as sparse:
        sparse.seek(1 << 20)
        sparse.write(b"end")
    aci = aci_dir / aci_file_name("example.com/sparse")
    aci.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--sparse",
            "--format=posix",
            "-C",
            str(made),
            "-cf",
            str(aci),
            "manifest",
            "rootfs",
        ],
        check=True,
    )
    rootfs = Path(str(provision(appc_lazyfs, "c1", "appc:example.com/sparse")["rootfs"]))
    data = (rootfs / "sp").read_bytes()
    assert len(data) == (1 << 20) + 3 and data.endswith(b"end") and not any(data[:-3])
    assert not (rootfs / "rootfs").exists()


def test_an_aci_whose_labels_are_not_those_asked_for_is_refused_and_not_kept(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    # Served where version 1.0 is looked for, an ACI labelled 2.0 was kept, and then
    # answered from the store for every later request of version 2.0.
    wrong = aci_bytes(manifest_doc("example.com/app", version="2.0"), {"v": b"2"})
    put_aci(aci_dir, "example.com/app", wrong, version="1.0")
    asked = "appc:example.com/app,version=1.0"
    line = one_line_error(appc_lazyfs("provision", "c1", asked, check=False))
    assert "has the label version='2.0', not '1.0'" in line
    assert list((appc_lazyfs.work_dir / "store" / "appc" / "images").iterdir()) == []


@pytest.mark.parametrize(
    ("version", "labels", "where", "said"),
    [
        # "#" ends the URL's path: it fetched example.com/dep-1.0, outside the template.
        ("1.0#", {"version": "1.0#"}, "dep-1.0", "cannot be spelled in a discovery location"),
        # "," read back as a second label the image chose: os=plan9.
        ("1.0,os=plan9", {"version": "1.0", "os": "plan9"}, "dep-1.0-plan9-{arch}.aci", "(ver"),
    ],
)
def test_a_dependency_label_cannot_choose_where_discovery_looks(
    appc_lazyfs: AppcLazyfs,
    aci_dir: Path,
    http_prefix: str,
    version: str,
    labels: dict[str, str],
    where: str,
    said: str,
) -> None:
    # A dependency's labels are the image's to choose, and discovery spells them into
    # its URL: unchecked, they named any path on the server, or labels never asked for.
    doc = manifest_doc("example.com/dep")
    doc["labels"] = [{"name": k, "value": v} for k, v in labels.items()]
    (aci_dir / "example.com").mkdir()
    (aci_dir / "example.com" / where.format(arch=host_arch())).write_bytes(
        aci_bytes(doc, {"d": b"dep"})
    )
    wants = [{"imageName": "example.com/dep", "labels": [{"name": "version", "value": version}]}]
    top = aci_bytes(manifest_doc("example.com/top", dependencies=wants), {"t": b"top"})
    put_aci(aci_dir, "example.com/top", top)
    result = appc_lazyfs("provision", "c1", "appc:example.com/top", check=False, prefix=http_prefix)
    line = one_line_error(result)
    assert "appc image example.com/dep" in line and said in line
    images = appc_lazyfs.work_dir / "store" / "appc" / "images"
    assert len(list(images.iterdir())) == 1  # the top image only: nothing fetched for dep


def test_the_progress_line_on_a_terminal_shows_the_prefix_without_credentials(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, http_prefix: str
) -> None:
    # Progress draws only on a terminal: stderr is a pty's here, read to its end.
    secret = http_prefix.replace("http://", "http://ann:s3cret@")
    put_aci(aci_dir, "example.com/web", aci_bytes(manifest_doc("example.com/web"), {"a": b"1"}))
    terminal, child_end = os.openpty()
    argv = appc_lazyfs.argv("provision", "c1", "appc:example.com/web", prefix=secret)
    run = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=child_end)
    os.close(child_end)
    drawn = b""
    try:
        while chunk := _read_terminal(terminal):
            drawn += chunk
    finally:
        os.close(terminal)
        out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, drawn
    assert json.loads(out)["rootfs"]
    assert f"fetching {http_prefix}example.com/web-latest-".encode() in drawn
    assert b"s3cret" not in drawn


def _read_terminal(fd: int) -> bytes:
    """What the other end wrote; b"" once it closed (a pty's master reads EIO then)."""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
