"""What the kernel makes of a file's head (``lazyfs.exec_formats``): the ``#!`` line as
binfmt_script parses it, and binfmt_misc's handlers, which come first and may run what
would otherwise be refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.cli_exec import NOT_EXECUTABLE, NOT_FOUND, exec_problem
from lazyfs.exec_formats import (
    Handler,
    binfmt_handlers,
    binfmt_takes,
    interpreter,
    parse_binfmt_entry,
)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"#!/bin/sh\n", b"/bin/sh"),
        (b"#!/bin/sh", b"/bin/sh"),  # no newline: the name ends at the zeros past the end
        (b"#! \t/usr/bin/env  python3 -u\n", b"/usr/bin/env"),
        (b"#!/bin/sh\r\n", b"/bin/sh\r"),  # the \r is the name's: CRLF scripts fail
        (b"#!/bin/sh\t-e\r\n", b"/bin/sh"),
        (b"#!\n/bin/sh\n", None),
        (b"#!   \t \n", None),
        (b"#!/" + b"x" * 300, None),  # the name is cut by the kernel's 256 bytes: ENOEXEC
        (b"#!/" + b"x" * 200 + b" " + b"y" * 100, b"/" + b"x" * 200),
    ],
)
def test_the_shebang_line_is_read_as_binfmt_script_reads_it(
    head: bytes, name: bytes | None
) -> None:
    assert interpreter(head) == name


QEMU_AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POCF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


@pytest.mark.parametrize(
    ("text", "handler"),
    [
        (
            QEMU_AARCH64,
            Handler(
                0,
                bytes.fromhex("7f454c460201010000000000000000000200b700"),
                bytes.fromhex("ffffffffffffff00fffffffffffffffffeffffff"),
            ),
        ),
        ("enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n", Handler(extension="exe")),
        ("disabled\ninterpreter /x\nflags: \noffset 0\nmagic 00\n", None),
        ("enabled\nsomething new\n", Handler(anything=True)),
    ],
)
def test_a_binfmt_misc_entry_is_read(text: str, handler: Handler | None) -> None:
    assert parse_binfmt_entry(text) == handler


def test_a_matching_handler_takes_the_file() -> None:
    qemu = parse_binfmt_entry(QEMU_AARCH64)
    assert qemu is not None
    arm64 = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xb7\x00" + b"\0" * 44
    amd64 = arm64[:18] + b"\x3e\x00" + arm64[20:]
    assert binfmt_takes(arm64, "/app", [qemu])
    assert not binfmt_takes(amd64, "/app", [qemu])
    wine = Handler(extension="exe")
    assert binfmt_takes(b"MZ", "/app/setup.exe", [wine])
    assert not binfmt_takes(b"MZ", "/app/setup", [wine])
    assert not binfmt_takes(b"", "/app", [qemu])  # too short for the magic


def test_handlers_are_read_from_a_mounted_binfmt_misc(tmp_path: Path) -> None:
    assert binfmt_handlers(tmp_path / "not-mounted") is None  # not known
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "register").write_text("")
    (tmp_path / "qemu-aarch64").write_text(QEMU_AARCH64)
    (tmp_path / "off").write_text("disabled\nextension .x\n")
    assert binfmt_handlers(tmp_path) == (parse_binfmt_entry(QEMU_AARCH64),)
    (tmp_path / "status").write_text("disabled\n")
    assert binfmt_handlers(tmp_path) == ()


def test_a_file_a_handler_takes_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rootfs, misc = tmp_path / "rootfs", tmp_path / "binfmt_misc"
    rootfs.mkdir()
    misc.mkdir()
    (rootfs / "app.exe").write_bytes(b"MZ\x90\x00")
    (rootfs / "app.exe").chmod(0o755)
    monkeypatch.setattr("lazyfs.exec_formats.BINFMT_MISC", misc)
    (misc / "status").write_text("enabled\n")
    assert exec_problem(rootfs, ["/app.exe"], []) == (
        "/app.exe: not a program: no ELF header or #! line",
        NOT_EXECUTABLE,
    )
    (misc / "wine").write_text("enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n")
    assert exec_problem(rootfs, ["/app.exe"], []) is None


def test_where_binfmt_misc_cannot_be_read_only_what_no_handler_brings_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not mounted here (a CI container), while the host may have registered qemu: another
    # machine's program, or a file that is none, is left to runc; a missing interpreter
    # is still one.
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "app.exe").write_bytes(b"MZ\x90\x00")
    (rootfs / "script").write_bytes(b"#!/nope\n")
    for name in ("app.exe", "script"):
        (rootfs / name).chmod(0o755)
    monkeypatch.setattr("lazyfs.exec_formats.BINFMT_MISC", tmp_path / "not-mounted")
    assert exec_problem(rootfs, ["/app.exe"], []) is None
    assert exec_problem(rootfs, ["/script"], []) == (
        "/script: its interpreter /nope is not in the container",
        NOT_FOUND,
    )
