"""``lazyfs run``: its -e and -u flags, and its destroy after a failure, which never hides
why the command failed."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from lazyfs.cli import build_parser
from lazyfs.cli_container import _destroy, clean_workdir, with_run_flags
from lazyfs.cli_parser import parse_command_line
from providers.errors import BadImage, UsageError
from providers.manifest import RuntimeConfig


class Provisioner:
    """A provisioner whose destroy fails, as it does on a file it may not remove."""

    async def destroy(self, container_id: str) -> bool:
        raise PermissionError(f"Operation not permitted: {container_id}/rootfs/etc/motd")


class App:
    provisioner = Provisioner()


def test_after_a_failure_a_failed_destroy_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _destroy(cast(Any, App()), "run-1", BadImage("the image's /etc/passwd is too large"))
    assert "container run-1 stays for recover: destroying it failed" in caplog.text


def test_without_one_a_failed_destroy_is_the_error() -> None:
    with pytest.raises(PermissionError, match="Operation not permitted"):
        _destroy(cast(Any, App()), "run-1", None)


def test_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lazyfs.cli_container"):
        _destroy(cast(Any, App()), "run-2", KeyboardInterrupt())
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["A=9"], ("A=9", "PATH=/bin", "B=2")),  # replaced where it stands
        (["C=3"], ("A=1", "PATH=/bin", "B=2", "C=3")),  # after the image's
        (["B"], ("A=1", "PATH=/bin")),  # lazyfs has no B: unset
        (["OWN"], ("A=1", "PATH=/bin", "B=2", "OWN=mine")),  # lazyfs' own value
        (["A=x=y", "A"], ("PATH=/bin", "B=2")),  # the last word on A wins
        (["E="], ("A=1", "PATH=/bin", "B=2", "E=")),  # set, empty
    ],
)
def test_env_flags_go_over_the_images_as_docker_run_puts_them(
    flags: list[str], env: tuple[str, ...]
) -> None:
    image = RuntimeConfig(env=("A=1", "PATH=/bin", "B=2"), user="app")
    got = with_run_flags(image, flags, None, {"OWN": "mine"})
    assert (got.env, got.user) == (env, "app")


def test_the_user_flag_replaces_the_images_user() -> None:
    assert with_run_flags(RuntimeConfig(user="app"), [], "0:0", {}).user == "0:0"


@pytest.mark.parametrize(
    ("argv", "env", "user", "command"),
    [
        (["run", "-e", "A=1", "busybox", "env"], ["A=1"], None, ["env"]),
        (["run", "-u", "nobody", "busybox", "id", "-e", "x"], [], "nobody", ["id", "-e", "x"]),
        (["run", "--env=A", "-e", "B=2", "--user=1:2", "img"], ["A", "B=2"], "1:2", []),
    ],
)
def test_run_sets_its_env_and_user_flags_apart_from_the_command(
    argv: list[str], env: list[str], user: str | None, command: list[str]
) -> None:
    args = parse_command_line(build_parser({}), argv)
    assert (args.env, args.user, args.command_args) == (env, user, command)


@pytest.mark.parametrize(
    ("argv", "env", "tty", "command"),
    [
        (["run", "-te", "A=1", "busybox", "env"], ["A=1"], True, ["env"]),  # -t -e A=1
        (["run", "-teA=1", "busybox", "env"], ["A=1"], True, ["env"]),
        (["run", "-eA=1", "busybox", "env"], ["A=1"], False, ["env"]),
    ],
)
def test_a_cluster_of_short_flags_takes_its_value_as_argparse_does(
    argv: list[str], env: list[str], tty: bool, command: list[str]
) -> None:
    args = parse_command_line(build_parser({}), argv)
    assert (args.env, args.tty, args.image, args.command_args) == (env, tty, "busybox", command)


def test_an_image_that_gives_a_variable_twice_keeps_none_of_it_under_e() -> None:
    image = RuntimeConfig(env=("A=img", "B=2", "A=dup"))
    assert with_run_flags(image, ["A=1"], None, {}).env == ("A=1", "B=2")
    assert with_run_flags(image, ["A"], None, {}).env == ("B=2",)


def test_the_workdir_flag_replaces_the_images_and_empty_is_not_given() -> None:
    image = RuntimeConfig(working_dir="/srv")
    assert with_run_flags(image, [], None, {}, "/tmp").working_dir == "/tmp"
    assert with_run_flags(image, [], None, {}, "").working_dir == "/srv"
    assert with_run_flags(image, [], None, {}).working_dir == "/srv"


@pytest.mark.parametrize(
    ("workdir", "cleaned"),
    [
        (None, ""),
        ("", ""),
        ("/", "/"),
        ("/srv", "/srv"),
        ("/srv/", "/srv"),
        ("//srv/.", "/srv"),
        ("/a/../b", "/b"),
        ("/../..", "/"),
        ("/a b/c", "/a b/c"),
    ],
)
def test_the_workdir_is_tidied_as_docker_tidies_it(workdir: str | None, cleaned: str) -> None:
    assert clean_workdir(workdir) == cleaned


@pytest.mark.parametrize(
    ("workdir", "why"),
    [
        ("tmp", "must be an absolute path"),
        ("./x", "must be an absolute path"),
        ("~/x", "must be an absolute path"),
        ("/a\0b", "holds no NUL byte"),
    ],
)
def test_a_workdir_not_absolute_is_refused(workdir: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        clean_workdir(workdir)


@pytest.mark.parametrize(
    ("argv", "workdir", "tty", "command"),
    [
        (["run", "-w", "/tmp", "busybox", "pwd", "-w"], "/tmp", False, ["pwd", "-w"]),
        (["run", "--workdir=/srv", "busybox"], "/srv", False, []),
        (["run", "-tw", "/tmp", "busybox", "pwd"], "/tmp", True, ["pwd"]),  # -t -w /tmp
    ],
)
def test_run_takes_its_workdir_apart_from_the_command(
    argv: list[str], workdir: str, tty: bool, command: list[str]
) -> None:
    args = parse_command_line(build_parser({}), argv)
    assert (args.workdir, args.tty, args.image, args.command_args) == (
        workdir, tty, "busybox", command
    )  # fmt: skip


def test_an_empty_user_flag_is_not_given() -> None:
    assert with_run_flags(RuntimeConfig(user="nobody"), [], "", {}).user == "nobody"


def test_docker_runs_it_is_taken() -> None:
    # stdin is always the command's: -i changes nothing, and -it is what docker users type.
    args = parse_command_line(build_parser({}), ["run", "-it", "busybox", "sh"])
    assert (args.tty, args.image, args.command_args) == (True, "busybox", ["sh"])
