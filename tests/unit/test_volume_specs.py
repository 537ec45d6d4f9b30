"""Image volume specs: --volume, a ContainerInfo's volumes, and run's mounts for them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cli import build_parser
from lazyfs.cli_parser import parse_command_line
from lazyfs.cli_volumes import container_view, volume_mounts
from lazyfs.images.spec import parse_image
from lazyfs.provision.records import ProvisionInfo, VolumeInfo
from lazyfs.provision.volumes import (
    check_container_path,
    container_from_json,
    parse_volume,
    with_volumes,
)
from providers.digest import Digest
from providers.errors import UsageError
from providers.image_pb2 import Image
from providers.manifest import ImageManifest, RuntimeConfig


@pytest.mark.parametrize(
    ("text", "path", "name", "mode"),
    [
        ("/data:busybox", "/data", "busybox", "ro"),
        ("/data:busybox:rw", "/data", "busybox", "rw"),
        ("/data:busybox:RO", "/data", "busybox", "ro"),
        ("/data:busybox:1.36", "/data", "busybox:1.36", "ro"),
        ("/data:busybox:1.36:rw", "/data", "busybox:1.36", "rw"),
        ("/data:busybox:ro:ro", "/data", "busybox:ro", "ro"),
        ("/data:registry:5000/app:v1", "/data", "registry:5000/app:v1", "ro"),
        ("/data:docker://busybox:rw", "/data", "busybox", "rw"),
        ("//a/./b/:busybox", "/a/b", "busybox", "ro"),
    ],
)
def test_parse_volume(text: str, path: str, name: str, mode: str) -> None:
    volume = parse_volume(text)
    assert (volume.container_path, volume.image.docker.name, volume.mode) == (path, name, mode)
    assert volume.writable == (mode == "rw")


def test_parse_volume_takes_every_image_form() -> None:
    volume = parse_volume("/v:appc:example.com/app,version=1.0:rw")
    assert volume.image.type == Image.APPC and volume.image.appc.name == "example.com/app"
    assert volume.mode == "rw"
    volume = parse_volume("/v:oci:/some/layout:tag")
    assert volume.image.docker.name == "oci:/some/layout:tag"


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "image", "mode"),
    [
        # An appc image's labels hold "," and "=": no mode, not a mistyped one.
        ("/v:appc:example.com/hello,version=1.0", "appc:example.com/hello,version=1.0", "ro"),
        ("/v:appc:example.com/hello,version=1.0:rw", "appc:example.com/hello,version=1.0", "rw"),
        (
            "/v:appc:example.com/a,version=1.0,os=linux:RO",
            "appc:example.com/a,version=1.0,os=linux",
            "ro",
        ),
        ("/v:appc:example.com/hello", "appc:example.com/hello", "ro"),
        ("/v:appc:example.com/hello:rw", "appc:example.com/hello", "rw"),
        # After the prefix alone comes the image, whatever it is called.
        ("/v:appc:shared", "appc:shared", "ro"),
        ("/v:docker:bind", "docker:bind", "ro"),
        # A label value with a colon: written with the mode after it.
        ("/v:appc:example.com/hello,key=a:b:ro", "appc:example.com/hello,key=a:b", "ro"),
        ("/v:docker:busybox", "docker:busybox", "ro"),
        ("/v:docker:busybox:1.36:rw", "docker:busybox:1.36", "rw"),
        ("/v:docker://registry:5000/app:v1", "docker://registry:5000/app:v1", "ro"),
        (f"/v:docker:busybox@{DIGEST}", f"docker:busybox@{DIGEST}", "ro"),
        (f"/v:busybox:1.36@{DIGEST}:rw", f"busybox:1.36@{DIGEST}", "rw"),
        ("/v:oci:/some/layout", "oci:/some/layout", "ro"),
        ("/v:oci:/some/layout:tag", "oci:/some/layout:tag", "ro"),
        ("/v:oci:/some/layout:tag:rw", "oci:/some/layout:tag", "rw"),
        # A path may hold "," and "=".
        ("/v:oci:/some/a,b=c", "oci:/some/a,b=c", "ro"),
        ("/v:oci-archive:/some/x=1.tar:1.0:rw", "oci-archive:/some/x=1.tar:1.0", "rw"),
        (
            "/v:docker-archive:/some/x.tar:busybox:1.36",
            "docker-archive:/some/x.tar:busybox:1.36",
            "ro",
        ),
        ("/v:docker-archive:/some/x.tar:busybox:rw", "docker-archive:/some/x.tar:busybox", "rw"),
    ],
)
def test_every_image_form_is_a_volume_with_and_without_a_mode(
    text: str, image: str, mode: str
) -> None:
    volume = parse_volume(text)
    assert (volume.container_path, volume.image, volume.mode) == ("/v", parse_image(image), mode)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "want CONTAINER_PATH:IMAGE[:ro|rw]"),
        ("/data", "no image"),
        ("/data:", "no image"),
        ("/data::rw", "no image"),
        ("data:busybox", "container path 'data' is not absolute"),
        (":busybox", "no container path"),
        ("/a/../b:busybox", "has a '..' component"),
        ("/..:busybox", "has a '..' component"),
        ("/:busybox", "is the root"),
        ("/./:busybox", "is the root"),
        ("/data:busybox:ro,z", "unknown mode 'ro,z': use ro or rw"),
        ("/data:busybox:readonly", "unknown mode 'readonly'"),
        ("/data:busybox:Z", "unknown mode 'Z'"),
        ("/data:busybox:mode=ro", "unknown mode 'mode=ro'"),
        # After an appc image (its name holds no colon), any other word is a mode.
        ("/v:appc:example.com/hello,version=1.0:r0", "unknown mode 'r0': use ro or rw"),
        ("/v:appc:example.com/hello,version=1.0:read-only", "unknown mode 'read-only'"),
        ("/v:appc:example.com/hello,version=1.0:rw,z", "unknown mode 'rw,z': use ro or rw"),
        ("/v:appc:example.com/hello:mode=rw", "unknown mode 'mode=rw'"),
        ("/v:oci:/some/layout:ro,z", "unknown mode 'ro,z'"),
        ("/v:docker://busybox:mode=ro", "unknown mode 'mode=ro'"),
        ("/v:docker-archive:/x.tar:busybox:1.36:rw,z", "unknown mode 'rw,z'"),
        ("/v:oci:/some/layout:tag:readonly", "unknown mode 'readonly'"),
        ("/data:Busybox", "--volume '/data:Busybox': "),
        ("/data:appc:Bad", "invalid appc image name"),
        # docker's HOST:CONTAINER order: said so, not an invalid image reference.
        ("/data:/tmp/x", "/tmp/x is a path, not an image: lazyfs mounts image volumes only"),
        ("/data:/tmp/x:ro", "/tmp/x is a path, not an image"),
    ],
)
def test_a_bad_volume_is_a_usage_error(text: str, error: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_volume(text)
    assert error in str(caught.value)
    assert "\n" not in str(caught.value)


@given(st.text(alphabet="/.ab\0", max_size=12))
def test_a_container_path_is_normal_and_never_climbs(path: str) -> None:
    try:
        normal = check_container_path(path)
    except UsageError:
        return
    parts = normal.split("/")
    assert parts[0] == "" and all(p not in ("", ".", "..") for p in parts[1:])
    assert "\0" not in normal
    assert normal == check_container_path(normal)


BUSYBOX = {"type": "DOCKER", "docker": {"name": "busybox"}}


def test_a_container_info_in_protobufs_json_form() -> None:
    spec = container_from_json(
        {
            "type": "MESOS",
            "mesos": {"image": BUSYBOX},
            "volumes": [
                {"container_path": "/a", "mode": "RW", "image": BUSYBOX},
                {"containerPath": "/b/", "mode": 2, "image": BUSYBOX},
            ],
        },
        "spec",
    )
    assert spec.image.docker.name == "busybox"
    assert [(v.container_path, v.mode) for v in spec.volumes] == [("/a", "rw"), ("/b", "ro")]
    more = with_volumes(spec, [parse_volume("/c:busybox")])
    assert [v.container_path for v in more.volumes] == ["/a", "/b", "/c"]
    with pytest.raises(UsageError, match="two volumes at /a"):
        with_volumes(spec, [parse_volume("/a/.:busybox")])


def _manifest() -> ImageManifest:
    return ImageManifest("r", Digest("sha256:" + "0" * 64), (), RuntimeConfig())


def _info(rootfs: Path, writable: bool, *paths: tuple[str, str]) -> ProvisionInfo:
    volumes = tuple(
        VolumeInfo(p, mode, rootfs.parent / f"v{i}", mode == "rw", _manifest())
        for i, (p, mode) in enumerate(paths)
    )
    return ProvisionInfo("c", rootfs, "overlay", writable, _manifest(), (), volumes)


def test_run_mounts_outer_volumes_first_read_only_unless_rw(tmp_path: Path) -> None:
    info = _info(tmp_path / "r", True, ("/a/b/c", "ro"), ("/z", "rw"), ("/a", "ro"), ("/a/b", "ro"))
    # runc makes no mount point in a read-only volume: /a and /a/b have theirs.
    (tmp_path / "v2" / "b").mkdir(parents=True)
    (tmp_path / "v3" / "c").mkdir(parents=True)
    mounts = volume_mounts(info)
    assert [m["destination"] for m in mounts] == ["/a", "/z", "/a/b", "/a/b/c"]
    assert [m["options"][-1] for m in mounts] == ["ro", "rw", "ro", "ro"]
    assert all(m["type"] == "bind" and "rbind" in m["options"] for m in mounts)
    assert mounts[1]["source"] == str(tmp_path / "v1")


def test_a_read_only_rootfs_needs_the_mount_point(tmp_path: Path) -> None:
    rootfs = tmp_path / "r"
    (rootfs / "there").mkdir(parents=True)
    (rootfs / "link").symlink_to("/there")  # resolved inside the rootfs, as runc does
    # Both at /there: the second would hide the first.
    with pytest.raises(UsageError, match="it leads to /there, where it would hide volume /link"):
        container_view(_info(rootfs, False, ("/there", "ro"), ("/link", "ro")))
    with pytest.raises(UsageError, match=r"the read-only rootfs has no /missing .*--read-only"):
        container_view(_info(rootfs, False, ("/missing", "ro")))
    assert len(container_view(_info(rootfs, True, ("/missing", "ro"))).mounts) == 1
    # A bind rootfs is read-only whatever run is told: "without --read-only" cannot help.
    bind = replace(_info(rootfs, False, ("/missing", "ro")), backend="bind")
    with pytest.raises(UsageError) as refused:
        container_view(bind)
    assert str(refused.value) == (
        "volume /missing: the read-only rootfs has no /missing to mount it on (make it in"
        " the image, or run with --backend copy, overlay or fuse)"
    )


@pytest.mark.parametrize(
    ("argv", "image", "volumes", "command"),
    [
        (["run", "-v", "/d:x", "busybox", "ls"], "busybox", ["/d:x"], ["ls"]),
        (["run", "busybox", "--volume", "/d:x", "ls"], "busybox", ["/d:x"], ["ls"]),
        (["run", "--volume=/d:x", "busybox", "--", "ls"], "busybox", ["/d:x"], ["ls"]),
        (["run", "--container-info", "f.json", "ls", "-l"], None, [], ["ls", "-l"]),
        (["run", "--container_info", "f.json", "-v", "/e:y", "ls"], None, ["/e:y"], ["ls"]),
    ],
)
def test_run_sets_its_volume_flags_apart_from_the_command(
    argv: list[str], image: str | None, volumes: list[str], command: list[str]
) -> None:
    args = parse_command_line(build_parser({}), argv)
    assert (args.image, args.volume, args.command_args) == (image, volumes, command)
