"""The command line as a new user writes it: a flag's bad value is a usage error
(status 2) for every command, ``run`` too; a switch takes ``=true|false`` and
``--no-``, as Mesos writes booleans; ``recover --keep`` refuses an empty id and
names the ones that match no container, and keeps none given none; ``mount``
says what the user typed wrong before what the machine lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazyfs.cli import build_parser, main
from lazyfs.cli_parser import parse_command_line


@pytest.fixture(autouse=True)
def no_lazyfs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LAZYFS_"):
            monkeypatch.delenv(name)


def lazyfs(
    work: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``lazyfs`` run as a user runs it, on the work dir ``work``, with no LAZYFS_* but ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAZYFS_")}
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", "--work_dir", str(work), *argv],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--docker_registry_timeout", "abc", "images"], {}, "--docker_registry_timeout"),
        (["--max_layer_size", "10XB", "images"], {}, "--max_layer_size"),
        (["--cache_size", "-5", "images"], {}, "--cache_size"),
        (["--platform", "bogus", "images"], {}, "--platform"),
        (["--image_providers", "foo", "images"], {}, "--image_providers"),
        (["images"], {"LAZYFS_DEBUG": "maybe"}, "LAZYFS_DEBUG"),
        (["--debug=maybe", "images"], {}, "--debug"),
        # run's own errors are 125, as docker run's; a command line that does not parse is 2.
        (["--image_provisioner_backend", "zfs", "run", "busybox", "true"], {}, "--image_prov"),
        (["run", "--max_layer_size", "10XB", "busybox", "true"], {}, "--max_layer_size"),
        (["run", "--backend", "zfs", "busybox", "true"], {}, "--backend"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error(
    tmp_path: Path, argv: list[str], env: dict[str, str], named: str
) -> None:
    result = lazyfs(tmp_path / "work", *argv, env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("lazyfs: ") and named in line and "(see `lazyfs" in line
    assert not (tmp_path / "work").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("argv", "on"),
    [
        (["--debug"], True),
        (["--debug=true"], True),
        (["--debug=TRUE"], True),
        (["--debug=1"], True),
        (["--debug=yes"], True),
        (["--debug=false"], False),
        (["--debug=0"], False),
        (["--debug="], False),
        (["--no-debug"], False),
        (["--no_debug"], False),
        (["--publish_indexes=true"], True),
        (["--publish-indexes=false"], False),
        (["--no-publish_indexes"], False),
        (["--no-publish-indexes"], False),
        (["--no-no_background_fetch"], False),
    ],
)
def test_a_switch_takes_a_value_as_mesos_writes_it(argv: list[str], on: bool) -> None:
    name = argv[0].split("=")[0].removeprefix("--").replace("-", "_")
    name = name if name in ("debug", "publish_indexes") else name.removeprefix("no_")
    for where in ([*argv, "images"], ["images", *argv]):
        args = parse_command_line(build_parser({"LAZYFS_" + name.upper(): str(not on)}), where)
        assert getattr(args, name) is on
        assert args.flag_sources == {}  # the command line's, over the environment


def test_a_switch_with_a_value_runs_the_command(tmp_path: Path) -> None:
    for flag in ("--debug=false", "--no-debug", "--publish_indexes=true"):
        result = lazyfs(tmp_path / "work", flag, "images")
        assert result.returncode == 0, result.stderr


def test_a_switch_value_after_run_s_command_is_the_command_s(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_command_line(build_parser({}), ["run", "busybox", "--", "echo", "--debug=no"])
    assert args.command_args == ["echo", "--debug=no"] and args.debug is False


@pytest.mark.parametrize("argv", [["--keep", ""], ["--keep", "c1", "--keep", " "]])
def test_recover_keep_of_an_empty_id_is_a_usage_error(tmp_path: Path, argv: list[str]) -> None:
    result = lazyfs(tmp_path / "work", "recover", *argv)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("lazyfs: argument --keep: ") and "lazyfs help recover" in line
    assert result.stdout == ""


def test_recover_keep_of_no_id_keeps_none(tmp_path: Path) -> None:
    # As an agent with no containers writes it (`--keep` and its ids, none): the rest goes.
    work = tmp_path / "work"
    (work / "provisioner" / "containers" / "k1").mkdir(parents=True)  # not complete
    result = lazyfs(work, "recover", "--keep")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["destroyed"] == ["k1"] and result.stderr == ""


def test_recover_names_kept_ids_that_match_no_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    (work / "provisioner" / "containers" / "k1").mkdir(parents=True)  # not complete: destroyed
    argv = ["--work_dir", str(work), "recover", "--keep", "nosuch", "k1", "--keep", "other"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["destroyed"] == ["k1"]
    assert err == "lazyfs: warning: --keep names no container here: nosuch, other\n"
    assert main(["--work_dir", str(work), "recover"]) == 0  # none to keep: nothing said
    assert capsys.readouterr().err == ""


def test_mount_checks_what_the_user_typed_before_dev_fuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_fuse() -> None:  # as on a machine whose /dev/fuse this user may not open
        raise PermissionError(13, "Permission denied", "/dev/fuse")

    monkeypatch.setattr("backends.fuse.check_fuse_device", no_fuse)
    if os.geteuid() == 0:  # as a user, whom --writable is refused (devmount asks geteuid)
        monkeypatch.setattr("lazyfs.provision.devmount.os.geteuid", lambda: 1000)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    base = ["--work_dir", str(tmp_path / "work"), "mount"]
    assert main([*base, "--writable", "busybox", str(mountpoint)]) == 1
    assert "--writable needs root" in capsys.readouterr().err
    assert main([*base, "busybox", str(tmp_path / "nowhere")]) == 1
    said = capsys.readouterr().err
    assert said.startswith("lazyfs: mount point ") and "/dev/fuse" not in said
    assert main([*base, "busybox", str(mountpoint)]) == 1  # a good command line: /dev/fuse
    assert "/dev/fuse" in capsys.readouterr().err


def test_help_is_read_whatever_the_environment_holds(tmp_path: Path) -> None:
    # The help is where a user reads how to mend the variable the other commands refuse.
    bad = {"LAZYFS_CACHE_SIZE": "0", "LAZYFS_PLATFORM": "bogus"}
    result = lazyfs(tmp_path / "work", "help", "run", env=bad)
    assert result.returncode == 0 and "usage: lazyfs run" in result.stdout, result.stderr
    assert lazyfs(tmp_path / "work", "ps", env=bad).returncode == 2


def test_a_bad_platform_is_quoted_whole(tmp_path: Path) -> None:
    result = lazyfs(tmp_path / "work", "--platform", "linux: amd64", "ps")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "lazyfs: argument --platform: 'linux: amd64': expected os/arch or os/arch/variant"
    ), result.stderr


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["--platform", "bogus"], {}, "argument --platform: 'bogus'"),
        (["--platform=a/b/c/d"], {}, "argument --platform: 'a/b/c/d'"),
        ([], {"LAZYFS_PLATFORM": "linux//v7"}, "LAZYFS_PLATFORM='linux//v7'"),
        ([], {"LAZYFS_PLATFORM": " "}, "LAZYFS_PLATFORM=' '"),
    ],
)
def test_a_bad_platform_says_where_once_and_why(
    argv: list[str], env: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        build_parser(env).parse_args([*argv, "ps"])
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"lazyfs: {said}: expected os/arch or os/arch/variant (see `lazyfs --help`)\n"
    )
    assert build_parser({"LAZYFS_PLATFORM": ""}).parse_args(["ps"]).platform == ""  # unset
