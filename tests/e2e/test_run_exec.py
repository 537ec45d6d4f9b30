"""``lazyfs run``: a command that cannot be executed exits 127 or 126 with one
line, as a shell says it; ``-t`` gives the command a terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lazyfs.cli_exec import NOT_EXECUTABLE, NOT_FOUND, ContainerView, exec_problem, in_root
from tests.support.lazyfs_cli import Lazyfs, in_terminal, one_line_error

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


@pytest.mark.parametrize(
    ("command", "status", "expected"),
    [
        (["nosuch"], 127, "lazyfs: nosuch: command not found in the container (PATH="),
        (["/no/such"], 127, "lazyfs: /no/such: no such file in the container"),
        # busybox is a file: the kernel finds no .. in it (ENOTDIR), runc said so in a log line.
        (["/bin/busybox/../sh"], 127, "lazyfs: /bin/busybox/../sh: no such file in the container"),
        (["/etc/motd"], 126, "lazyfs: /etc/motd: cannot be executed in the container: it has no"),
        (["/etc"], 126, "lazyfs: /etc: cannot be executed in the container: it is a directory"),
    ],
)
def test_a_command_that_cannot_run_exits_as_a_shell_says(
    lazyfs: Lazyfs, command: list[str], status: int, expected: str
) -> None:
    result = lazyfs("run", "busybox", "--", *command, check=False)
    assert result.returncode == status
    assert one_line_error(result).startswith(expected)
    assert containers(lazyfs.work_dir) == []


def test_a_command_found_through_path_and_links_runs(lazyfs: Lazyfs) -> None:
    # sh is /bin/sh -> /bin/busybox inside the image.
    assert lazyfs("run", "busybox", "--", "sh", "-c", "exit 0").returncode == 0
    assert lazyfs("run", "busybox", "--", "../../bin/sh", "-c", "exit 0").returncode == 0


def test_run_t_gives_the_command_a_terminal(lazyfs: Lazyfs) -> None:
    probe = ["sh", "-c", "tty; exit 5"]
    result = in_terminal(lazyfs.argv("run", "-t", "busybox", "--", *probe))
    assert result.returncode == 5, result.stdout
    assert "/dev/pts/" in result.stdout
    result = in_terminal(lazyfs.argv("run", "busybox", "--", *probe))
    assert "not a tty" in result.stdout
    result = in_terminal(lazyfs.argv("run", "-it", "busybox", "--", *probe))  # docker's idiom
    assert result.returncode == 5 and "/dev/pts/" in result.stdout, result.stdout
    assert containers(lazyfs.work_dir) == []


def test_run_t_without_a_terminal_is_one_line(lazyfs: Lazyfs) -> None:
    result = lazyfs("run", "-t", "busybox", "--", "tty", check=False)
    assert "run -t: stdin is not a terminal" in one_line_error(result)
    assert not (lazyfs.work_dir / "provisioner").exists() or containers(lazyfs.work_dir) == []


# -- the lookup itself, on a rootfs of our own ------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for directory in ("bin", "opt/real", "usr/bin", "data"):
        (root / directory).mkdir(parents=True)
    tool = root / "opt/real/tool"
    tool.write_text("#!/opt/real/sh\n")  # an interpreter the kernel would find
    tool.chmod(0o755)
    shutil.copy("/bin/busybox", root / "opt/real/sh")  # static: needs no loader
    (root / "data/plain").write_text("")
    # Absolute and relative links, meant inside the rootfs, not on the host.
    (root / "bin/tool").symlink_to("/opt/real/tool")
    (root / "usr/bin/up").symlink_to("../../../../../opt/real/tool")
    (root / "bin/loop").symlink_to("/bin/loop")
    (root / "bin/plain").symlink_to("/data/plain")
    return root


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/bin/tool", "opt/real/tool"),
        ("/usr/bin/up", "opt/real/tool"),
        ("/../../bin/tool", "opt/real/tool"),
        ("/bin/loop", None),
        ("/bin/none", None),
        ("/data/plain/x", None),
        ("/data/plain/../plain", None),
        ("/bin/plain/../plain", None),  # /bin/plain -> /data/plain, a file: .. after it
    ],
)
def test_paths_resolve_inside_the_rootfs(rootfs: Path, path: str, where: str | None) -> None:
    assert in_root(rootfs, path) == (rootfs / where if where else None)


@pytest.mark.parametrize(
    ("args", "env", "cwd", "status"),
    [
        (["tool"], ["PATH=/usr/bin:/bin"], "/", None),
        (["tool"], ["PATH=/usr/bin"], "/", NOT_FOUND),
        (["tool"], ["PATH=/usr/bin", "PATH=/bin"], "/", None),  # the last holds, as in runc
        (["tool"], ["PATH=/bin", "PATH=/usr/bin"], "/", NOT_FOUND),
        # A non-executable file in PATH is passed over, as Go's LookPath does.
        (["plain"], ["PATH=/bin"], "/", NOT_FOUND),
        (["./tool"], [], "/bin", None),
        (["real/tool"], [], "/opt", None),
        (["/bin/plain"], [], "/", NOT_EXECUTABLE),
        (["/bin/loop"], [], "/", NOT_FOUND),
        ([], [], "/", None),
        # An image's config may hold a NUL (it is JSON); exec(2) takes none, lstat raised.
        (["tool\0x"], ["PATH=/bin"], "/", NOT_EXECUTABLE),
        (["/bin/tool"], ["PATH=/bin\0"], "/", NOT_EXECUTABLE),
        (["tool"], ["PATH=/bin"], "/\0", NOT_EXECUTABLE),
    ],
)
def test_exec_problem(
    rootfs: Path, args: list[str], env: list[str], cwd: str, status: int | None
) -> None:
    problem = exec_problem(rootfs, args, env, cwd)
    assert (problem[1] if problem else None) == status


# -- the same through a container's view: a volume over the rootfs ---------------


@pytest.fixture
def view(tmp_path: Path) -> ContainerView:
    """A rootfs with a volume mounted at /opt/vol (the rootfs has no /opt), read-only."""
    rootfs, volume = tmp_path / "rootfs", tmp_path / "volume"
    for directory in (rootfs / "bin", rootfs / "data", volume / "deep", volume / "sub"):
        directory.mkdir(parents=True)
    (rootfs / "bin/sh").write_text("")
    (rootfs / "into").symlink_to("/opt/vol/sub")  # from the rootfs into the volume
    (volume / "deep/out").symlink_to("../../../bin/sh")  # climbs out of the volume
    (volume / "abs").symlink_to("/bin/sh")  # from the container's root
    (volume / "file").write_text("")
    view = ContainerView(rootfs, writable=True)
    place = view.find("/opt/vol", past_missing=True)
    assert place is not None and place.there == 0  # runc makes /opt/vol
    return view.mounted(place, volume, writable=False, name="/opt/vol")


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/opt/vol/sub", "volume/sub"),
        ("/into", "volume/sub"),
        ("/opt/vol/deep/out", "rootfs/bin/sh"),
        ("/opt/vol/abs", "rootfs/bin/sh"),
        ("/opt/vol/../vol/file", "volume/file"),
        ("/opt/vol/sh", None),
        ("/opt/vol/file/x", None),
    ],
)
def test_a_path_resolves_in_the_containers_view(
    view: ContainerView, tmp_path: Path, path: str, where: str | None
) -> None:
    assert in_root(view, path) == (tmp_path / where if where else None)


def test_what_runc_can_make_and_a_mount_over_another(view: ContainerView, tmp_path: Path) -> None:
    assert view.is_dir(("opt",)) and view.can_make(("opt",))  # made in the writable rootfs
    assert not view.can_make(("opt", "vol"))
    assert view.read_only(("opt", "vol", "sub")) == (
        "the read-only volume /opt/vol",
        "mount /opt/vol with :rw",
    )
    # A later mount over /opt hides the volume below it, and what runc made for it.
    place = view.find("/opt")
    assert place is not None
    over = view.mounted(place, tmp_path / "rootfs" / "data", writable=True, name="/opt")
    assert in_root(over, "/opt/vol/sub") is None
    assert over.holder(("opt", "x")) == over.mounts[-1] and len(over.mounts) == 1


def test_env_and_user_flags_reach_the_command_as_docker_run_gives_them(lazyfs: Lazyfs) -> None:
    probe = 'echo "$A|${LAZYFS_TEST_OWN-unset}|${PATH:+path}|$(id -u):$(id -g)|$HOME"'
    argv = [
        "run",
        "-e",
        "A=1",
        "-e",
        "LAZYFS_TEST_OWN",
        "-u",
        "nobody",
        "busybox",
        "sh",
        "-c",
        probe,
    ]
    result = subprocess.run(
        lazyfs.argv(*argv),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LAZYFS_TEST_OWN": "from lazyfs"},
    )
    assert (result.returncode, result.stdout) == (
        0,
        "1|from lazyfs|path|65534:65534|/nonexistent\n",
    )
    unset = lazyfs(
        "run", "-e", "LAZYFS_TEST_OWN", "busybox", "sh", "-c", probe
    )  # no LAZYFS_TEST_OWN here: unset
    assert unset.stdout == "|unset|path|0:0|/root\n"
    refused = lazyfs("run", "-u", "nosuch", "busybox", "true", check=False)
    assert "user 'nosuch' is not in the image's /etc/passwd" in one_line_error(refused)
    assert containers(lazyfs.work_dir) == []


def test_the_workdir_flag_is_where_the_command_runs_made_when_missing(lazyfs: Lazyfs) -> None:
    assert lazyfs("run", "-w", "/etc", "busybox", "pwd").stdout == "/etc\n"
    assert lazyfs("run", "-w", "/new/dir", "busybox", "pwd").stdout == "/new/dir\n"
    # A program named from the working directory is found there.
    assert lazyfs("run", "-w", "/bin", "busybox", "--", "./busybox", "echo", "ok").stdout == "ok\n"
    assert lazyfs("run", "-w", "/a/../etc/", "busybox", "pwd").stdout == "/etc\n"
    refused = lazyfs("run", "-w", "etc", "busybox", "pwd", check=False)
    assert refused.returncode == 125
    assert "the working directory must be an absolute path" in one_line_error(refused)
    # A read-only rootfs cannot be given it: one line before runc runs, as for a volume.
    assert lazyfs("run", "--read-only", "-w", "/etc", "busybox", "pwd").stdout == "/etc\n"
    read_only = lazyfs("run", "--read-only", "-w", "/new", "busybox", "pwd", check=False)
    assert read_only.returncode == 125
    assert one_line_error(read_only) == (
        "lazyfs: the read-only rootfs has no working directory /new to run in"
        " (run it without --read-only)"
    )
    # A file is no directory to run in, writable or not: runc said so in a log line.
    for flags in ([], ["--read-only"]):
        on_a_file = lazyfs("run", *flags, "-w", "/etc/motd", "busybox", "pwd", check=False)
        assert on_a_file.returncode == 125
        assert one_line_error(on_a_file) == (
            "lazyfs: the working directory /etc/motd is not a directory in the rootfs"
        )
        under = lazyfs("run", *flags, "-w", "/etc/motd/x", "busybox", "pwd", check=False)
        assert one_line_error(under) == (
            "lazyfs: the working directory /etc/motd/x is under a file in the rootfs"
        )
    assert containers(lazyfs.work_dir) == []
