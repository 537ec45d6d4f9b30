"""A ``lazyfs run`` volume at /etc/hosts or /etc/hostname is the container's, as in docker.

lazyfs mounts files of its own over those two (``etc_files``); docker leaves its own
out where the user mounts something at that path, and so does lazyfs: the volume is
what the container sees there, and no file is made for lazyfs' mount first (runc
would make it in the image's rootfs, then fail to mount the volume, a directory, on
it). A volume at /etc is the container's /etc whole.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

RUN_ID = re.compile(r"run-[0-9a-f]{12}")
BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module")
def empty_etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ``oci:`` image with /bin/busybox and an /etc with neither hosts nor hostname."""
    work = tmp_path_factory.mktemp("empty-etc-image")
    layer = [images.Entry(path, "dir", mode=0o755) for path in ("bin", "proc", "sys", "dev", "etc")]
    layer.append(images.Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


@pytest.fixture(scope="module")
def volume_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ``oci:`` image holding /hello alone, to mount as a volume."""
    work = tmp_path_factory.mktemp("etc-volume-image")
    layer = [images.Entry("hello", data=b"from the volume\n")]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


@pytest.mark.parametrize("backend", ["overlay", "copy"])
@pytest.mark.parametrize("name", ["hosts", "hostname"])
def test_a_volume_at_an_etc_file_is_what_the_container_sees(
    lazyfs: Lazyfs, empty_etc: str, volume_image: str, name: str, backend: str
) -> None:
    script = f"hostname; cat /etc/{name}/hello; ls /etc"
    volume = f"/etc/{name}:{volume_image}"
    run = ("--backend", backend, "-v", volume, empty_etc, "--", "/bin/busybox", "sh", "-c", script)
    result = lazyfs("run", *run, check=False)
    assert result.returncode == 0, result.stderr
    said = result.stdout.splitlines()
    assert RUN_ID.fullmatch(said[0]), said  # the hostname is still the container's
    assert said[1] == "from the volume"
    other = "hostname" if name == "hosts" else "hosts"
    assert sorted(said[2:]) == sorted([name, other])  # lazyfs' own file for the other one


def test_a_volume_at_etc_is_the_containers_etc_whole(
    lazyfs: Lazyfs, empty_etc: str, volume_image: str
) -> None:
    script = "hostname; ls /etc"
    run = ("-v", f"/etc:{volume_image}:rw", empty_etc, "--", "/bin/busybox", "sh", "-c", script)
    result = lazyfs("run", *run, check=False)
    assert result.returncode == 0, result.stderr
    said = result.stdout.splitlines()
    assert RUN_ID.fullmatch(said[0]), said
    assert said[1:] == ["hello"]  # nothing of lazyfs' made or mounted in it
