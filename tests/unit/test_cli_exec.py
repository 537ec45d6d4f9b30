"""``lazyfs run``'s look in the rootfs before runc, against a hostile image: a bounded
walk, and the image's words shown without their escape sequences."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lazyfs.cli_container import require_workdir
from lazyfs.cli_exec import NOT_EXECUTABLE, NOT_FOUND, ContainerView, exec_problem, in_root
from lazyfs.exec_formats import MAX_STEPS
from providers.errors import UsageError

HOSTILE = "\x1b]0;x\x07foo"  # OSC: sets the terminal's title


def controls(text: str) -> list[str]:
    """What in ``text`` a terminal takes as a control: C0, DEL and C1."""
    return [c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]


@contextmanager
def counted_calls(most: int) -> Iterator[list[int]]:
    """The lstat, stat and readlink calls made within, counted in its one item; past
    ``most`` an AssertionError (without the bound, hours of these: stop there)."""
    count = [0]

    def counted(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] > most:
                raise AssertionError("unbounded walk")
            return real(*args, **kwargs)

        return call

    # Undone on leaving, before pytest's own report stats files.
    with pytest.MonkeyPatch.context() as patch:
        for name in ("lstat", "stat", "readlink"):
            patch.setattr(os, name, counted(getattr(os, name)))
        yield count


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    tool = tmp_path / "usr" / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    shutil.copy("/bin/busybox", tmp_path / "usr" / "bin" / "sh")  # static: needs no loader
    (tmp_path / "usr" / "bin" / "plain").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["tool"], None),
        (["nosuch"], NOT_FOUND),
        (["plain"], NOT_FOUND),
        (["/bin/plain"], NOT_EXECUTABLE),
        (["/bin/nosuch"], NOT_FOUND),
    ],
)
def test_a_real_image_is_judged_within_the_bound(
    rootfs: Path, args: list[str], status: int | None
) -> None:
    problem = exec_problem(rootfs, args, ["PATH=/usr/local/bin:/bin"])
    assert (problem[1] if problem else None) == status


def _link_chain(root: Path) -> None:
    """/s0 to /s40, 41 links, each through 800 ``d/..`` pairs: a walk of /s0 would make
    some 65,000 calls before it met the kernel's 40 links (ELOOP)."""
    (root / "d").mkdir()
    for i in range(41):
        (root / f"s{i}").symlink_to("d/../" * 800 + f"s{i + 1}")


def test_a_hostile_path_and_link_chain_is_given_up_on_not_walked(tmp_path: Path) -> None:
    # ~65,000 calls for one PATH entry, and the PATH has thousands of them.
    _link_chain(tmp_path)
    env = ["PATH=" + ":".join(["/s0"] * 5000)]
    with counted_calls(100_000) as calls:
        problem = exec_problem(tmp_path, ["nosuch"], env)
    assert problem is None  # cannot tell: runc judges, in the container
    assert calls[0] <= 10_000


@pytest.mark.parametrize("made", [True, False])
def test_a_hostile_workdir_is_given_up_on_not_walked(tmp_path: Path, made: bool) -> None:
    # As an image's WorkingDir may be, in 16 MiB of config: 6 million calls to walk.
    (tmp_path / "d").mkdir()
    cwd = "/d/.." * 3_000_000 + "/nosuch"
    with counted_calls(100_000) as calls:
        require_workdir(tmp_path, cwd, made=made)  # runc judges: even where it cannot make it
        place = ContainerView(tmp_path).find(cwd)
    assert place is not None and not place.seen
    assert place.parts == ("nosuch",)  # the names it would be without symlinks
    assert calls[0] <= 2 * MAX_STEPS


def test_a_hostile_link_chain_to_etc_is_given_up_on_not_walked(tmp_path: Path) -> None:
    _link_chain(tmp_path)
    (tmp_path / "etc").symlink_to("s0")
    with counted_calls(20_000) as calls:
        assert in_root(tmp_path, "/etc") is None  # not found: its user is looked up without
    assert calls[0] <= MAX_STEPS


# As a config an older lazyfs kept may hold them (the pull refuses them now): a lone
# surrogate, which os.lstat cannot encode, and a NUL byte, which it refuses.


def test_a_path_holding_a_lone_surrogate_is_not_there(rootfs: Path) -> None:
    lone = "\ud800"
    assert exec_problem(rootfs, [f"/bin/{lone}"], []) == (
        "'/bin/\\ud800': no such file in the container",
        NOT_FOUND,
    )
    assert exec_problem(rootfs, ["tool"], [f"PATH=/{lone}:/bin"]) is None  # the next has it
    assert exec_problem(rootfs, ["./tool"], [], f"/{lone}") == (
        "./tool: no such file in the container",
        NOT_FOUND,
    )
    assert in_root(rootfs, f"/{lone}") is None
    require_workdir(rootfs, f"/{lone}/w", made=True)  # missing, on a writable rootfs: runc's


def test_a_workdir_holding_a_nul_byte_is_not_there(rootfs: Path) -> None:
    # Looked for before the command is, whose check refuses the NUL byte.
    with pytest.raises(UsageError) as refused:
        require_workdir(rootfs, "/a\0b", made=False)
    assert str(refused.value) == (
        "the read-only rootfs has no working directory '/a\\x00b' to run in"
        " (run it without --read-only)"
    )


@pytest.mark.parametrize("name", [HOSTILE, f"/{HOSTILE}", "/bin/plain\x1b[2J"])
def test_the_images_command_reaches_the_terminal_escaped(rootfs: Path, name: str) -> None:
    problem = exec_problem(rootfs, [name], [f"PATH=/bin:/{HOSTILE}\x9b"])
    assert problem is not None
    assert controls(problem[0]) == []
    assert "\\x1b" in problem[0]


def test_a_printable_command_is_shown_as_it_is(rootfs: Path) -> None:
    problem = exec_problem(rootfs, ["nosuch"], ["PATH=/usr/local/bin:/bin"])
    assert problem == (
        "nosuch: command not found in the container (PATH=/usr/local/bin:/bin)",
        NOT_FOUND,
    )


def test_a_huge_path_is_cut_in_the_message(rootfs: Path) -> None:
    path = "/bin:/" + "a" * (16 << 20)  # one entry: one lstat, too long a name
    problem = exec_problem(rootfs, ["nosuch"], [f"PATH={path}"])
    assert problem is not None
    assert len(problem[0]) < 1000
    assert f"cut, {len(path)} characters" in problem[0]


@pytest.mark.parametrize("cwd", [f"/{HOSTILE}", "/" + "a\x1b" * (1 << 20)])
def test_the_images_workdir_reaches_the_terminal_escaped_and_cut(rootfs: Path, cwd: str) -> None:
    with pytest.raises(UsageError) as refused:
        require_workdir(rootfs, cwd, made=False)
    assert controls(str(refused.value)) == []
    assert len(str(refused.value)) < 5000
