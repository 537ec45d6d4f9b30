"""``lazyfs run``: a command the kernel would refuse for what is in it exits 127 or 126
with one line, as docker run does, not 1 with runc's log line: a script whose
interpreter is not in the image (a CRLF ``#!`` line among them), a file that is no
program, another machine's program, a dynamic program without its loader."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def other_machine(program: bytes) -> bytes:
    """``program`` (an x86-64 ELF file) with e_machine patched to AArch64's."""
    assert program[18:20] == (62).to_bytes(2, "little"), "needs an x86-64 busybox"
    return program[:18] + (183).to_bytes(2, "little") + program[20:]


BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")


@pytest.fixture(scope="module", autouse=True)
def binfmt_misc() -> Iterator[None]:
    """binfmt_misc mounted, as systemd mounts it at boot: where it is not, lazyfs does not
    know what handlers the kernel has, and leaves a file one could take to runc. Unmounted
    after if this mounted it."""
    if (BINFMT_MISC / "status").exists():
        yield
        return
    subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(BINFMT_MISC)], check=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of the host's static busybox, with files that are executable by their
    mode but not by what they hold, and a dynamic program whose loader it lacks."""
    assert platform.machine() == "x86_64", "the ELF files here are patched x86-64 ones"
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox (busybox-static)"
    program = Path(busybox).read_bytes()
    true = shutil.which("true")
    assert true is not None
    dynamic = Path(os.path.realpath(true)).read_bytes()
    assert b"/lib64/ld-linux-x86-64.so.2\0" in dynamic, "needs a glibc /bin/true"

    def exe(path: str, data: bytes) -> images.Entry:
        return images.Entry(path, data=data, mode=0o755)

    layer = [
        images.Entry("bin", "dir", mode=0o755),
        exe("bin/busybox", program),
        images.Entry("bin/sh", "symlink", target="busybox"),
        exe("good.sh", b"#!/bin/sh -e\necho script ran\n"),
        exe("good-no-newline.sh", b"#! /bin/sh"),
        exe("bad", b"#!/nope\necho never\n"),
        exe("crlf.sh", b"#!/bin/sh\r\necho never\r\n"),
        exe("via-bad", b"#!/bad\n"),
        exe("garbage", bytes(range(7, 250)) * 4),
        exe("badelf", b"\x7fELF\x09\x09" + b"\0" * 58),
        exe("arm64", other_machine(program)),
        exe("glibc", dynamic),  # in an image with no glibc loader, as on musl
    ]
    config = images.ImageConfig(cmd=("/bin/sh",), env=("PATH=/bin:/",))
    where = tmp_path_factory.mktemp("exec-formats")
    layout = images.build_oci_image(where / "layout", [layer], "latest", config)
    return f"oci:{layout}:latest"


@pytest.mark.parametrize(
    ("command", "status", "expected"),
    [
        (["/bad"], 127, "lazyfs: /bad: its interpreter /nope is not in the container"),
        (
            ["/crlf.sh"],
            127,
            "lazyfs: /crlf.sh: its interpreter '/bin/sh\\r' is not in the container"
            " (its #! line ends in \\r: a script with Windows line ends?)",
        ),
        # Found through PATH, and an interpreter that is itself a script lacking its own.
        (["via-bad"], 127, "lazyfs: via-bad: its interpreter /bad: its interpreter /nope is"),
        (["/garbage"], 126, "lazyfs: /garbage: not a program: no ELF header or #! line"),
        (["/badelf"], 126, "lazyfs: /badelf: not a program: its ELF header is cut short"),
        (["/arm64"], 126, "lazyfs: /arm64: it is an arm64 program; this machine runs amd64"),
        (
            ["/glibc"],
            127,
            "lazyfs: /glibc: its loader /lib64/ld-linux-x86-64.so.2 is not in the container",
        ),
    ],
)
def test_what_the_kernel_would_refuse_exits_as_docker_run_does(
    lazyfs: Lazyfs, image: str, command: list[str], status: int, expected: str
) -> None:
    result = lazyfs("run", image, "--", *command, check=False)
    assert result.returncode == status, result.stderr
    assert one_line_error(result).startswith(expected)
    assert containers(lazyfs.work_dir) == []


def test_scripts_and_a_static_program_still_run(lazyfs: Lazyfs, image: str) -> None:
    assert lazyfs("run", image, "--", "/good.sh").stdout == "script ran\n"
    assert lazyfs("run", image, "--", "good.sh").stdout == "script ran\n"  # through PATH
    assert lazyfs("run", image, "--", "/good-no-newline.sh").returncode == 0
    assert lazyfs("run", image, "--", "/bin/busybox", "echo", "ok").stdout == "ok\n"
    assert lazyfs("run", image, "--", "sh", "-c", "echo ok").stdout == "ok\n"
    assert containers(lazyfs.work_dir) == []
