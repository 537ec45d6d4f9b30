"""The command line as users of docker, podman and skopeo expect it: ``--version``,
``help COMMAND``, global flags after the command, help that shows defaults,
read-only commands that create nothing, and errors that name the flag."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from lazyfs.cli import build_parser
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

COMMANDS = ("provision", "pull", "destroy", "recover", "images", "mount", "umount", "run", "help")


def bare(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``lazyfs ARGS`` with no flags of ours and no LAZYFS_* but ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAZYFS_")}
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**environ, **env},
        stdin=subprocess.DEVNULL,
    )


def test_version() -> None:
    result = bare("--version")
    assert result.returncode == 0
    assert result.stdout == f"lazyfs {metadata.version('lazyfs')}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_command_is_the_commands_help(command: str) -> None:
    result = bare("help", command)
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare(command, "--help").stdout
    assert result.stdout.startswith(f"usage: lazyfs {command}")


def test_help_alone_is_the_whole_help() -> None:
    result = bare("help")
    assert result.returncode == 0
    assert result.stdout == bare("--help").stdout


def test_help_for_an_unknown_command_is_one_line() -> None:
    result = bare("help", "frobnicate")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_help_shows_every_global_flags_default_and_variable() -> None:
    text = " ".join(bare("--help").stdout.split())
    assert "where containers' work lives (default: /var/lib/lazyfs; or LAZYFS_WORK_DIR)" in text
    assert "(default: https://registry-1.docker.io; or LAZYFS_DOCKER_REGISTRY)" in text
    assert "(default: the system CAs; or LAZYFS_DOCKER_REGISTRY_CA_FILE)" in text
    parser = build_parser({})
    for action in parser._actions:
        # A switch's --no-NAME is not in the help (as Mesos' is not).
        if action.option_strings and action.dest not in ("help", "version"):
            if action.help == argparse.SUPPRESS:
                assert all(s.startswith("--no") for s in action.option_strings), action.dest
                continue
            assert action.help and "(default: " in action.help, action.dest


def _every_argument(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {a.dest}", a) for a in sub._actions if a.dest != "help"]
        elif action.dest != "help":
            found.append((action.dest, action))
    return found


def test_help_describes_every_argument() -> None:
    for where, action in _every_argument(build_parser({})):
        assert action.help, f"{where} has no help"


def test_global_flags_may_come_after_the_command(lazyfs: Lazyfs, tmp_path: Path) -> None:
    lazyfs("pull", "busybox")
    listed = bare("images", "--work_dir", str(lazyfs.work_dir)).stdout
    assert "docker.io/library/busybox:latest" in listed
    # Both places: the later one wins.
    listed = bare("--work_dir", str(tmp_path / "elsewhere"), "images", "--work-dir",
                  str(lazyfs.work_dir)).stdout  # fmt: skip
    assert "docker.io/library/busybox:latest" in listed
    other = tmp_path / "other"
    pulled = bare("pull", "busybox", "--work_dir", str(other), "--docker_registry",
                  str(lazyfs.image_dir), "--debug")  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert "lazyfs: DEBUG" in pulled.stderr
    assert (other / "store" / "docker" / "images").is_dir()


@pytest.mark.parametrize(
    "argv",
    [
        ["images"],
        ["--help"],
        ["--version"],
        ["help"],
        ["help", "images"],
        ["images", "--help"],
        ["run", "--help"],
    ],
)
def test_read_only_commands_create_nothing(tmp_path: Path, argv: list[str]) -> None:
    work = tmp_path / "work"
    where = tmp_path / "cwd"
    where.mkdir()
    result = bare("--work_dir", str(work), *argv, cwd=where)
    assert result.returncode == 0, result.stderr
    assert not work.exists()
    assert list(where.iterdir()) == []
    # Nor from the environment.
    result = bare(*argv, cwd=where, LAZYFS_WORK_DIR=str(work))
    assert result.returncode == 0, result.stderr
    assert not work.exists()


def test_images_of_an_empty_work_dir_is_the_header_alone(tmp_path: Path) -> None:
    result = bare("--work_dir", str(tmp_path / "none"), "images")
    assert result.stdout.split() == [
        "REFERENCE", "PLATFORM", "DIGEST", "LAYERS", "SIZE", "UNPACKED", "LOCAL"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--work_dir", "", "images"], {}, "lazyfs: --work_dir is empty: give a directory"),
        (["images", "--work_dir="], {}, "lazyfs: --work_dir is empty: give a directory"),
        (["images"], {"LAZYFS_WORK_DIR": ""}, "lazyfs: LAZYFS_WORK_DIR is empty"),
        (["--docker_registry", "", "pull", "busybox"], {}, "lazyfs: --docker_registry is empty"),
        (["pull", "busybox"], {"LAZYFS_DOCKER_REGISTRY": " "}, "LAZYFS_DOCKER_REGISTRY is empty"),
    ],
)
def test_an_empty_directory_flag_is_an_error(
    tmp_path: Path, argv: list[str], env: dict[str, str], expected: str
) -> None:
    result = bare(*argv, cwd=tmp_path, **env)
    assert expected in one_line_error(result)
    # Not the current directory instead.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--docker_registry_mirrors", "https://mirror.example,mirror2.example:5000"],
            "lazyfs: --docker_registry_mirrors 'mirror2.example:5000': not an http:// or "
            "https:// URL with a host",
        ),
        (
            ["--docker_registry_mirrors", "https://"],
            "--docker_registry_mirrors 'https://': not an http:// or https:// URL with a host",
        ),
        (
            ["--docker_registry_ca_file", "/nonexistent/ca.pem"],
            "lazyfs: --docker_registry_ca_file /nonexistent/ca.pem: No such file or directory",
        ),
        (["--docker_registry_ca_file", "/"], "--docker_registry_ca_file /: "),
        (["--docker_registry", "https://"], "--docker_registry https://: a registry URL needs a"),
        # What the URL parser raises ValueError for: a traceback before.
        (["--docker_registry", "http://[::1"], "--docker_registry 'http://[::1': not a URL"),
        (["--docker_registry", "http://h:99999"], "--docker_registry 'http://h:99999': not a URL"),
        (["--docker_registry_mirrors", "http://[m"], "_mirrors 'http://[m': not a URL"),
        (
            ["--image_providers", "appc", "--appc_simple_discovery_uri_prefix", "http://[a/"],
            "--appc_simple_discovery_uri_prefix 'http://[a/': not a URL",
        ),
    ],
)
def test_a_bad_registry_flag_is_one_line_naming_it(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    result = bare("--work_dir", str(tmp_path / "work"), *flags, "pull", "busybox")
    assert expected in one_line_error(result)


def test_a_usage_error_is_one_line() -> None:
    result = bare("images", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr == (
        "lazyfs: unrecognized arguments: --no-such-flag (see `lazyfs --help`)\n"
    )
    result = bare("provision")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "(see `lazyfs help provision`)" in result.stderr


def test_run_takes_its_flags_before_the_double_dash(lazyfs: Lazyfs) -> None:
    probe = "touch /probe 2>/dev/null && echo writable || echo read-only"
    result = lazyfs("run", "busybox", "--read-only", "--", "sh", "-c", probe)
    assert result.stdout == "read-only\n"
    result = lazyfs("run", "busybox", "--", "sh", "-c", probe)
    assert result.stdout == "writable\n"


def test_run_takes_a_command_without_the_double_dash(lazyfs: Lazyfs) -> None:
    # As docker run: everything after the image is the command's, options too.
    result = lazyfs("run", "busybox", "sh", "-c", 'echo "$0" "$1"', "--read-only", "--")
    assert result.stdout == "--read-only --\n"


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        (["--platform", "windows"], {}, "lazyfs: argument --platform: 'windows': expected os/arch"),
        ([], {"LAZYFS_PLATFORM": "windows"}, "lazyfs: LAZYFS_PLATFORM='windows': expected os/"),
    ],
)
def test_a_bad_platform_names_where_it_came_from(
    tmp_path: Path, flags: list[str], env: dict[str, str], expected: str
) -> None:
    result = bare(
        "--work_dir", str(tmp_path / "work"), *flags, "pull", "busybox", cwd=tmp_path, **env
    )
    assert one_line_error(result).startswith(expected)
