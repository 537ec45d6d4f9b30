"""The cache daemon is started while a command resolves its image, and handed over.

``wants_daemon`` decides from the command line alone; ``hand_over`` lets go
of the start lock once the daemon holds its cache, so that a mount then
waits for that daemon rather than start a second one.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from lazyfs import cli_parser
from lazyfs.cache.spawn import DaemonSpec, start_daemon
from lazyfs.cli import build_parser
from lazyfs.cli_early import wants_daemon, wants_mount_server
from lazyfs.images.spec import parse_image
from tests.support.processes import reaped

HOST = "127.0.0.1:5000"
LOCAL = f"http://{HOST}"


def _args(*argv: str) -> object:
    return cli_parser.parse_command_line(build_parser(environ={}), list(argv))


@pytest.mark.parametrize(
    ("flags", "image", "backend", "wanted"),
    [
        (["--docker_registry", LOCAL], "docker:" + HOST + "/a:b", "fuse", True),
        (["--docker_registry", "https://r.example"], "docker:r.example/a:b", "fuse", True),
        (["--docker_registry", LOCAL], "docker:" + HOST + "/a:b", None, False),
        (["--docker_registry", LOCAL], "docker:" + HOST + "/a", "overlay", False),
        # Images of a directory or a local archive are pulled: no daemon reads them.
        (["--docker_registry", "/srv/images"], "docker:a:b", "fuse", False),
        (["--docker_registry", LOCAL], "docker:oci:/srv/layout:a", "fuse", False),
        (["--docker_registry", LOCAL], "appc:example.com/a", "fuse", False),
        (["--image_providers", "appc", "--docker_registry", LOCAL], "docker:h/a", "fuse", False),
    ],
)
def test_wants_the_daemon_for_registry_images_on_the_fuse_backend(
    flags: list[str], image: str, backend: str | None, wanted: bool
) -> None:
    args = _args(*flags, "images")
    assert wants_daemon(args, parse_image(image), backend) is wanted  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backend", "lazy", "env", "wanted"),
    [
        ("fuse", False, None, True),
        ("fuse", False, "1", True),
        ("fuse", False, "0", False),
        # A lazy mount is exec'd beside the daemon's start: no server importing beside them.
        ("fuse", True, None, False),
        ("overlay", False, None, False),
        (None, False, None, False),
    ],
)
def test_the_mount_server_is_started_ahead_of_a_fuse_mount_that_is_not_lazy(
    backend: str | None,
    lazy: bool,
    env: str | None,
    wanted: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env is None:
        monkeypatch.delenv("LAZYFS_MOUNT_SERVER", raising=False)
    else:
        monkeypatch.setenv("LAZYFS_MOUNT_SERVER", env)
    assert wants_mount_server(backend, lazy) is wanted


def test_not_for_an_image_with_credentials_of_its_own() -> None:
    args = _args("--docker_registry", LOCAL, "images")
    image = parse_image("docker:" + HOST + "/a:b")
    image.docker.config = '{"auths": {}}'
    assert not wants_daemon(args, image, "fuse")  # type: ignore[arg-type]


# A "daemon" that takes the cache's lock as the real one does, then idles until killed.
_OWNER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(os.path.join(sys.argv[1], 'lock'), os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "time.sleep(600)\n"
)


def test_a_handed_over_start_is_waited_for_not_started_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = DaemonSpec(cache, (sys.executable, "-c", _OWNER, str(cache)), timeout=60.0)
    starting = start_daemon(spec)
    assert starting is not None and starting.pid is not None
    pid = starting.pid
    try:
        starting.hand_over()
        # The next caller finds the cache owned: it waits for that daemon, spawns none.
        again = start_daemon(spec)
        assert again is not None and again.pid is None
        again.release()
    finally:
        os.kill(pid, signal.SIGKILL)
    assert reaped(pid), "the daemon started here was not reaped"


def test_a_daemon_that_exits_at_start_frees_the_lock_for_the_next_start(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = DaemonSpec(cache, (sys.executable, "-c", "raise SystemExit(3)"), timeout=60.0)
    starting = start_daemon(spec)
    assert starting is not None and starting.pid is not None
    pid = starting.pid
    starting.hand_over()
    assert starting.pid is None  # reaped there
    assert reaped(pid)
    # The lock is free: the next caller starts a daemon of its own.
    again = start_daemon(spec)
    assert again is not None and again.pid is not None
    again.release()
