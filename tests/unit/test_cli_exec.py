"""``lazyfs run``'s look in the rootfs before runc, against a hostile image: a bounded
walk, and the image's words shown without their escape sequences."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from lazyfs.cli_container import require_workdir
from lazyfs.cli_exec import NOT_EXECUTABLE, NOT_FOUND, exec_problem
from providers.errors import UsageError

HOSTILE = "\x1b]0;x\x07foo"  # OSC: sets the terminal's title


def controls(text: str) -> list[str]:
    """What in ``text`` a terminal takes as a control: C0, DEL and C1."""
    return [c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]


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


def test_a_hostile_path_and_link_chain_is_given_up_on_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 41 links, each through ~800 `d/..` pairs: ~33,000 lstat calls for one PATH
    # entry, and the PATH has thousands of them.
    (tmp_path / "d").mkdir()
    for i in range(41):
        (tmp_path / f"s{i}").symlink_to("d/../" * 800 + f"s{i + 1}")
    env = ["PATH=" + ":".join(["/s0"] * 5000)]
    calls = 0

    def counted(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 100_000:  # without the bound, hours of these: stop here
                raise AssertionError("unbounded walk")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "lstat", counted(os.lstat))
    monkeypatch.setattr(os, "readlink", counted(os.readlink))
    monkeypatch.setattr(os, "stat", counted(os.stat))
    try:
        problem = exec_problem(tmp_path, ["nosuch"], env)
    finally:
        monkeypatch.undo()  # pytest's own report stats files
    assert problem is None  # cannot tell: runc judges, in the container
    assert calls <= 10_000


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
