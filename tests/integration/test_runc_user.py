"""The user runc runs a container's command as: groups and HOME as ``docker run`` gives them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lazyfs.provision import runtime
from providers.manifest import RuntimeConfig

pytestmark = pytest.mark.integration

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n"
GROUP = "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for directory in ("bin", "etc", "proc", "dev", "sys", "srv"):
        (root / directory).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "id"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.mark.parametrize(
    ("user", "env", "said"),
    [
        # Docker's: the groups /etc/group lists the user in, HOME from its row.
        ("app", (), "/srv 1001 10 50"),
        ("", (), "/root 0 10"),
        ("app:staff", (), "/srv 50"),  # a group given: that one alone
        ("4242", (), "/ 0"),  # no row: no name to be listed, no home
        ("app", ("HOME=/home/set",), "/home/set 1001 10 50"),  # the image's own wins
    ],
)
def test_the_command_runs_in_the_users_groups_with_its_home(
    rootfs: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    user: str,
    env: tuple[str, ...],
    said: str,
) -> None:
    config = RuntimeConfig(user=user, env=env)
    bundle_config = runtime.bundle_config(
        rootfs,
        config,
        ["/bin/sh", "-c", 'echo "$HOME" $(id -G)'],
        readonly=True,
        cgroups_path=f"lazyfs-test/user-{os.getpid()}",
    )
    bundle = tmp_path / "bundle"
    runtime.write_bundle(bundle, bundle_config)
    assert runtime.run_bundle(bundle, f"lazyfs-user-{os.getpid()}", tmp_path / "runc") == 0
    assert capfd.readouterr().out == said + "\n"
