"""A named user is found where runc finds it: /etc/passwd, /etc/group or /etc a symlink.

runc (libcontainer's user lookup) opens the tables in the container, symlinks followed
from the container's root. ``resolve_user`` read them through no symlink at all, so in an
image whose /etc/passwd is a link to a file of the image ``lazyfs run -u app`` said "user
'app' is not in the image's /etc/passwd" where docker runs it. Followed now as runc
follows them, never out of the rootfs, and nothing but a regular file of the image read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lazyfs.provision import image_user
from lazyfs.provision.image_user import ImageUser, resolve_user
from lazyfs.provision.runtime import runc_mounts
from providers.errors import BadImage

PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:app\n"
APP = ImageUser(1000, 1001, (50,), "/srv")
# At the host path a naive join of a link's target would reach: never to be read.
CANARY = "canary:x:666:666::/:/bin/sh\napp:x:6666:6666::/canary:/bin/sh\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """tmp_path/box/rootfs: /etc/group, the passwd table at /usr/share/base/passwd."""
    root = tmp_path / "box" / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "share" / "base").mkdir(parents=True)
    (root / "usr" / "share" / "base" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def not_found(rootfs: Path, user: str, etc: Path | None = None) -> str:
    with pytest.raises(BadImage) as refused:
        resolve_user(rootfs, user, etc)
    assert "\n" not in str(refused.value)
    return str(refused.value)


@pytest.mark.parametrize(
    "target",
    [
        "../usr/share/base/passwd",
        "/usr/share/base/passwd",
        "/usr/share/../share/./base//passwd",
        # `..` past the root stops there, as in the container.
        "../../../../../usr/share/base/passwd",
        "/../../usr/share/base/passwd",
    ],
)
def test_a_passwd_that_is_a_symlink_in_the_image_is_followed(rootfs: Path, target: str) -> None:
    (rootfs / "etc" / "passwd").symlink_to(target)
    assert resolve_user(rootfs, "app") == APP


def test_a_chain_of_links_past_the_root_stays_in_it(rootfs: Path) -> None:
    (rootfs / "lib").mkdir()
    (rootfs / "lib" / "users").symlink_to("../../../../usr/share/base")
    # `..` after a link is taken from where it led (/usr/share), as the kernel takes it.
    (rootfs / "etc" / "passwd").symlink_to("../lib/users/../base/passwd")
    assert resolve_user(rootfs, "app") == APP


def test_a_link_out_of_the_rootfs_is_read_inside_it_never_on_the_host(rootfs: Path) -> None:
    # Joined to the rootfs' path, ../../../usr/share/base/passwd is tmp_path's.
    outside = rootfs.parent.parent / "usr" / "share" / "base"
    outside.mkdir(parents=True)
    (outside / "passwd").write_text(CANARY)
    (rootfs / "etc" / "passwd").symlink_to("../../../usr/share/base/passwd")
    assert resolve_user(rootfs, "app") == APP
    assert "'canary' is not in the image's /etc/passwd" in not_found(rootfs, "canary")


def test_a_group_that_is_a_symlink_is_followed(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").symlink_to("/usr/share/base/passwd")
    (rootfs / "usr" / "share" / "base" / "group").write_text(GROUP)
    (rootfs / "etc" / "group").unlink()
    (rootfs / "etc" / "group").symlink_to("../usr/share/base/group")
    assert resolve_user(rootfs, "app:staff") == ImageUser(1000, 50, (), "/srv")
    assert resolve_user(rootfs, "app") == APP


def test_an_etc_that_is_a_symlink_is_followed(rootfs: Path) -> None:
    (rootfs / "etc").rename(rootfs / "usr" / "etc")
    (rootfs / "usr" / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc").symlink_to("usr/etc")
    assert resolve_user(rootfs, "app") == APP
    # As `lazyfs run` gives it: the container's /etc found, its symlinks resolved.
    assert resolve_user(rootfs, "app", rootfs / "usr" / "etc") == APP


def test_a_link_in_a_volume_at_etc_leads_from_the_containers_root(
    rootfs: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "passwd").symlink_to("../usr/share/base/passwd")
    (volume / "group").symlink_to("/etc/group")  # the volume's own, a loop: no group
    assert resolve_user(rootfs, "app", volume) == ImageUser(1000, 1001, (), "/srv")
    # The rootfs' /etc is under the volume: its group is not the container's.
    assert "group 'staff' is not" in not_found(rootfs, "app:staff", volume)


@pytest.mark.parametrize("target", ["passwd", "/etc/passwd", "../etc/../etc/passwd"])
def test_a_loop_is_no_table(rootfs: Path, target: str) -> None:
    (rootfs / "etc" / "passwd").symlink_to(target)
    assert "user 'app' is not in the image's /etc/passwd" in not_found(rootfs, "app")
    assert resolve_user(rootfs, "1000") == ImageUser(1000, 0, (), "/")


def test_a_device_a_link_leads_to_is_not_read(rootfs: Path) -> None:
    # /dev/zero's numbers: read, it was a table larger than the bound. Needs root.
    os.mknod(rootfs / "usr" / "zero", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    (rootfs / "etc" / "passwd").symlink_to("/usr/zero")
    assert resolve_user(rootfs, "1000") == ImageUser(1000, 0, (), "/")


def test_runcs_own_filesystems_hold_no_table_of_the_image(rootfs: Path) -> None:
    # runc mounts its /proc over the image's: what the image put there is not read.
    (rootfs / "proc").mkdir()
    (rootfs / "proc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "passwd").symlink_to("../proc/passwd")
    assert "user 'app' is not" in not_found(rootfs, "app")


def test_runcs_own_filesystems_are_those_runtime_mounts() -> None:
    for mount in runc_mounts():
        parts = mount["destination"].split("/")
        assert any("/".join(parts[:n]) in image_user.RUNC_OWN for n in range(2, len(parts) + 1)), (
            mount
        )


def test_a_symlink_made_after_the_lookup_is_not_followed(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The image changes between the lookup and the open: its directory is now a link to
    # the host's (an absolute target, as a process outside the container would see it).
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "passwd").write_text(CANARY)
    (rootfs / "etc" / "passwd").symlink_to("/usr/share/base/passwd")
    follow = image_user._follow

    def then_swapped(*args: object) -> object:
        found = follow(*args)  # type: ignore[arg-type]
        base = rootfs / "usr" / "share" / "base"
        if not base.is_symlink():  # once: /etc/group is looked up after it
            base.rename(rootfs / "usr" / "share" / "old")
            base.symlink_to(outside)
        return found

    monkeypatch.setattr(image_user, "_follow", then_swapped)
    assert "user 'canary' is not" in not_found(rootfs, "canary")
