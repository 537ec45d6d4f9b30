"""skopeo's transports where an image is named: ``oci:``, ``oci-archive:``,
``docker-archive:`` and ``docker://``, through the real ``lazyfs`` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.rich_image import need_tools

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Forms:
    """One two-tag image (``/etc/motd`` says which tag) in skopeo's local forms."""

    layout: Path  # OCI layout with tags 1.0 and 2.0
    oci_dir: Path  # OCI layout holding 1.0 only
    oci_archive: Path  # OCI layout tar holding 2.0 only
    docker_archive: Path  # docker-archive of 1.0, tagged app:1.0


def motd_layers(text: str) -> list[list[images.Entry]]:
    return [[images.Entry("etc", "dir", mode=0o755), images.Entry("etc/motd", data=text.encode())]]


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> Forms:
    need_tools()
    root = tmp_path_factory.mktemp("transports")
    config = images.ImageConfig(cmd=("/bin/sh",))
    layout = images.build_oci_image(root / "src", motd_layers("one\n"), "1.0", config)
    images.build_oci_image(root / "src", motd_layers("two\n"), "2.0", config)
    return Forms(
        layout,
        images.to_oci_dir(layout, "1.0", root / "single"),
        images.to_oci_archive(layout, "2.0", root / "two.tar"),
        images.to_docker_archive(layout, "1.0", root / "app.tar", "app"),
    )


def motd(lazyfs: Lazyfs, container: str, image: str, **run: object) -> str:
    """Provision ``image`` with the copy backend; its /etc/motd."""
    result = subprocess.run(
        lazyfs.argv("provision", container, image, "--backend", "copy"),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        **run,  # type: ignore[call-overload]
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    return (Path(out["rootfs"]) / "etc/motd").read_text()


def test_each_transport_provisions_its_image(lazyfs: Lazyfs, forms: Forms) -> None:
    assert motd(lazyfs, "a", f"oci:{forms.layout}:1.0") == "one\n"
    assert motd(lazyfs, "b", f"oci:{forms.layout}:2.0") == "two\n"
    assert motd(lazyfs, "c", f"oci:{forms.oci_dir}") == "one\n"
    assert motd(lazyfs, "d", f"oci-archive:{forms.oci_archive}") == "two\n"
    assert motd(lazyfs, "e", f"oci-archive:{forms.oci_archive}:2.0") == "two\n"
    assert motd(lazyfs, "f", f"docker-archive:{forms.docker_archive}") == "one\n"
    assert motd(lazyfs, "g", f"docker-archive:{forms.docker_archive}:app:1.0") == "one\n"


def test_a_relative_path_is_taken_from_where_lazyfs_runs(lazyfs: Lazyfs, forms: Forms) -> None:
    where = forms.oci_archive.parent
    image = f"oci-archive:{forms.oci_archive.name}"
    assert motd(lazyfs, "rel", image, cwd=where) == "two\n"
    pulled = subprocess.run(
        lazyfs.argv("pull", image), capture_output=True, text=True, cwd=where, check=True
    )
    # Recorded by its absolute path: the store outlives the directory it was named in.
    assert json.loads(pulled.stdout)["reference"] == f"oci-archive:{forms.oci_archive}"
    listing = lazyfs("images").stdout
    assert f"oci-archive:{forms.oci_archive}" in listing


def test_a_file_is_read_again_when_it_changes(lazyfs: Lazyfs, forms: Forms, tmp_path: Path) -> None:
    archive = tmp_path / "changing.tar"
    images.to_oci_archive(forms.layout, "1.0", archive, "latest")
    assert motd(lazyfs, "before", f"oci-archive:{archive}") == "one\n"
    archive.unlink()
    images.to_oci_archive(forms.layout, "2.0", archive, "latest")
    assert motd(lazyfs, "after", f"oci-archive:{archive}") == "two\n"


def test_docker_scheme_names_a_registry_image(lazyfs: Lazyfs) -> None:
    # The e2e image directory stands in for the registry: docker:// is a reference.
    out = json.loads(lazyfs("pull", "docker://busybox").stdout)
    assert out["reference"] == "docker.io/library/busybox:latest"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("oci:{layout}", "holds several images (1.0, 2.0); name one as oci:{layout}:REF"),
        ("oci:{layout}:3.0", "no image for 3.0 (has 1.0, 2.0)"),
        ("oci:{archive}", "is a file; for a tar, write oci-archive:{archive}"),
        ("oci-archive:{layout}", "is a directory; for one, write oci:{layout}"),
        ("docker-archive:{missing}", "{missing} does not exist"),
        ("docker-archive:{docker_archive}:other:1.0", "no image for"),
        ("containers-storage:busybox", "skopeo's containers-storage: transport is not supported"),
    ],
)
def test_a_wrong_transport_is_one_line(
    lazyfs: Lazyfs, forms: Forms, tmp_path: Path, image: str, expected: str
) -> None:
    names = {
        "layout": forms.layout,
        "archive": forms.oci_archive,
        "docker_archive": forms.docker_archive,
        "missing": tmp_path / "missing.tar",
    }
    error = one_line_error(lazyfs("provision", "x", image.format(**names), check=False))
    assert expected.format(**names) in error
    assert not (lazyfs.work_dir / "provisioner" / "containers" / "x").exists()


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("docker://registry.example", "give the registry as https://registry.example"),
        ("oci:/srv/layout", "a skopeo transport names one image, not a registry"),
        ("oci-archive:/srv/x.tar", "a skopeo transport names one image, not a registry"),
        ("", "--docker_registry is empty"),
    ],
)
def test_a_transport_given_to_docker_registry_names_the_flag(
    lazyfs: Lazyfs, registry: str, expected: str
) -> None:
    # Given again after the fixture's own: the last one counts.
    result = lazyfs("--docker_registry", registry, "pull", "busybox", check=False)
    error = one_line_error(result)
    assert "--docker_registry" in error
    assert expected in error


def test_a_corrupt_layer_in_a_local_archive_is_one_line(lazyfs: Lazyfs, tmp_path: Path) -> None:
    # Read again from its start, a local file gives the same bytes: no warning line before.
    images = tmp_path / "corrupt-images"
    images.mkdir()
    archive = images / "busybox:latest.tar"
    shutil.copyfile(lazyfs.image_dir / "busybox:latest.tar", archive)
    with tarfile.open(archive) as tar:
        layer = max(tar.getmembers(), key=lambda member: member.size)
    with open(archive, "r+b") as raw:
        raw.seek(layer.offset_data + layer.size // 2)
        byte = raw.read(1)
        raw.seek(-1, os.SEEK_CUR)
        raw.write(bytes([byte[0] ^ 0xFF]))
    corrupt = Lazyfs(lazyfs.work_dir, images)
    line = one_line_error(corrupt("pull", "busybox", check=False))
    assert ": blob sha256:" in line and ", got sha256:" in line
    assert corrupt("images").stdout.splitlines()[1:] == []
