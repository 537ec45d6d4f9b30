"""What the kernel makes of a file ``lazyfs run`` asks runc to execute, told from its head.

``cli_exec`` finds the command and sees it is a regular file with an execute
bit; the kernel may still refuse it, and runc then fails with status 1 like
a command that exits 1. ``format_problem`` reads the file's first bytes as
execve(2) does and tells, as docker does, 127 for what the kernel would not
find (ENOENT) and 126 for what it would not run (ENOEXEC, EACCES):

- ``#!``: the interpreter, parsed as binfmt_script parses the line (up to
  the first newline within 256 bytes, spaces and tabs stripped, the first
  word); a ``\\r`` is part of its name, which is how a script saved with
  Windows line ends fails. The interpreter is judged the same way in turn,
  up to the kernel's depth.
- ELF: its class, byte order and machine against this machine's, and its
  loader (``PT_INTERP``, read by ``lazyfs.fs.elf_deps``) must be there.
- anything else: no program.

Except what binfmt_misc takes: a handler registered on this machine (qemu
for another machine's programs, an interpreter for some magic or name
extension) is tried by the kernel before ELF and ``#!``, so a file one
matches is never refused here (``binfmt_takes``).

Where a file is and whether it may be executed is the caller's (``Find``,
through its walk inside the rootfs); every file read here is spent from the
caller's ``spend``. What cannot be told (a read failing, headers that make
no sense) is None: runc judges.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

NOT_FOUND = 127
NOT_EXECUTABLE = 126
HEAD = 256  # BINPRM_BUF_SIZE: the bytes the kernel reads before choosing a format
MAX_DEPTH = 4  # interpreters of interpreters the kernel follows (then ELOOP: runc judges)
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
_SHOWN_MOST = 300  # characters of image text in a message: a PATH may be 16 MiB
# Filesystem calls (lstat, readlink, stat, read) one exec_problem may make. A real image's
# PATH has a handful of entries a link or two deep: tens of calls. A hostile one asks
# for billions (a 16 MiB config holds ~4M PATH entries, each 40 links of ~800 parts)
# in a thread that Ctrl-C and SIGTERM cannot stop. Past this, runc judges.
MAX_STEPS = 4096

# e_machine values, by the architecture names of images (GOARCH).
_MACHINES = {3: "386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "amd64"}
_MACHINES |= {183: "arm64", 243: "riscv64", 258: "loong64"}
# What a kernel of each machine (platform.machine()) runs: (64-bit, little-endian, e_machine);
# with the 32-bit compat most distributions build in. A machine not here is not judged.
_RUNS = {
    "x86_64": ((True, True, 62), (False, True, 3), (False, True, 62)),  # x32 is 32-bit amd64
    "aarch64": ((True, True, 183), (False, True, 40)),
    "riscv64": ((True, True, 243),),
    "ppc64le": ((True, True, 21),),
    "s390x": ((True, False, 22), (False, False, 22)),
}
_ET_EXEC, _ET_DYN = 2, 3
_ELF_MAGIC = b"\x7fELF"


class OutOfSteps(Exception):
    """The budget of filesystem calls is spent: whether the command runs is not told."""


class Budget:
    """What is left of ``MAX_STEPS``, shared by all the walks of one exec_problem."""

    def __init__(self) -> None:
        self.left = MAX_STEPS

    def spend(self) -> None:
        if self.left <= 0:
            raise OutOfSteps
        self.left -= 1


@dataclass(frozen=True)
class Found:
    """What the caller's walk found at a path: ``missing``; else ``why`` it cannot be
    executed (None: it can), and ``host``, where to read it (None: not told, runc judges)."""

    host: Path | None = None
    why: str | None = None
    missing: bool = False


Find = Callable[[str], Found]


@dataclass(frozen=True)
class Handler:
    """A binfmt_misc entry: ``magic`` under ``mask`` at ``offset``, or a name ``extension``;
    ``anything`` for an entry not understood here, taken to match every file."""

    offset: int = 0
    magic: bytes = b""
    mask: bytes = b""
    extension: str | None = None
    anything: bool = False


def format_problem(
    name: str, host: Path, find: Find, spend: Callable[[], None], depth: int = 0
) -> tuple[str, int] | None:
    """None if the kernel would run the executable file at ``host`` (exec'ed as ``name``),
    or may; else what stops it and the exit status, as a message goes on after a name."""
    try:
        head = _read(host, 0, HEAD, spend)
        if head.startswith(b"#!"):
            problem = _script(head, find, spend, depth)
        elif head.startswith(_ELF_MAGIC):
            problem = _elf(head, host, find, spend)
        else:
            problem = "not a program: no ELF header or #! line", NOT_EXECUTABLE
    except OSError:  # a read failing (EIO from a lazy mount...): runc judges
        return None
    if problem is None:
        return None
    # binfmt_misc's handlers come first: one that takes the file, whatever it is, runs it.
    handlers = binfmt_handlers(BINFMT_MISC)
    if handlers is None:
        # Not to be read here, but handlers may be registered all the same (the kernel's
        # own before Linux 6.7, whatever this mount namespace has mounted: qemu's, set up
        # on the host of a CI container): what one could take, a file that is another
        # machine's program or none, is left to runc. An interpreter or a loader that is
        # not there, no handler brings.
        return problem if problem[1] == NOT_FOUND else None
    return None if binfmt_takes(head, name, handlers) else problem


def interpreter(head: bytes) -> bytes | None:
    """The interpreter the ``#!`` line at the start of ``head`` names, as binfmt_script
    takes it; None when it names none or its name is cut by the 256 bytes (ENOEXEC)."""
    line = head[:HEAD].ljust(HEAD, b"\0")[2:]  # the kernel's buffer: zeros past the end
    end = line.find(b"\n")
    if end < 0:
        # No newline: the name must end (space, tab, NUL) inside the buffer.
        words = line[:-1].lstrip(b" \t")
        if not words or not any(c in b" \t\0" for c in words):
            return None
        end = len(line) - 1
    name = line[:end].strip(b" \t").split(b"\0", 1)[0]
    name = name.replace(b"\t", b" ").split(b" ", 1)[0]
    return name or None


def _script(
    head: bytes, find: Find, spend: Callable[[], None], depth: int
) -> tuple[str, int] | None:
    interp = interpreter(head)
    if interp is None:
        return "not a program: its #! line names no interpreter", NOT_EXECUTABLE
    path = os.fsdecode(interp)
    found = find(path)
    words = f"its interpreter {shown(path)}"
    if found.missing:
        crlf = " (its #! line ends in \\r: a script with Windows line ends?)"
        return f"{words} is not in the container{crlf if path.endswith(chr(13)) else ''}", (
            NOT_FOUND
        )
    if found.why is not None:
        return f"{words} cannot be executed: {found.why}", NOT_EXECUTABLE
    if found.host is None or depth + 1 >= MAX_DEPTH:
        return None
    inner = format_problem(path, found.host, find, spend, depth + 1)
    return None if inner is None else (f"{words}: {inner[0]}", inner[1])


def _elf(head: bytes, host: Path, find: Find, spend: Callable[[], None]) -> tuple[str, int] | None:
    if len(head) < 20 or head[4] not in (1, 2) or head[5] not in (1, 2):
        return "not a program: its ELF header is cut short or damaged", NOT_EXECUTABLE
    wide, little = head[4] == 2, head[5] == 1
    kind = int.from_bytes(head[16:18], "little" if little else "big")
    machine = int.from_bytes(head[18:20], "little" if little else "big")
    runs = _RUNS.get(platform.machine())
    if runs is not None and (wide, little, machine) not in runs:
        ours = _arch(runs[0][1], runs[0][2])
        theirs = _arch(little, machine)
        if theirs == ours:  # the machine's, in another class or byte order
            theirs = f"{32 << wide}-bit {'little' if little else 'big'}-endian {theirs}"
        article = "an" if theirs[0] in "aeios" else "a"
        return f"it is {article} {theirs} program; this machine runs {ours}", NOT_EXECUTABLE
    if kind not in (_ET_EXEC, _ET_DYN):
        return "not a program: an ELF file that is no executable", NOT_EXECUTABLE
    # Here, not at the top: what imports cli_exec (the daemon's CLI too) loads no lazyfs.fs.
    from lazyfs.fs.elf_deps import elf_deps

    deps = elf_deps(lambda offset, length: _read(host, offset, length, spend))
    if deps is None or deps.interp is None:
        return None
    path = os.fsdecode(deps.interp)
    found = find(path)
    if found.missing:
        return f"its loader {shown(path)} is not in the container", NOT_FOUND
    if found.why is not None:
        return f"its loader {shown(path)} cannot be executed: {found.why}", NOT_EXECUTABLE
    return None


def _arch(little: bool, machine: int) -> str:
    """The image architecture name of ``machine`` (an e_machine) in that byte order."""
    if machine == 21 and little:
        return "ppc64le"
    return _MACHINES.get(machine, f"machine {machine}")


def _read(host: Path, offset: int, length: int, spend: Callable[[], None]) -> bytes:
    """``length`` bytes of ``host`` from ``offset``. The caller's walk resolved every link
    on the way, so the last part is no symlink: O_NOFOLLOW keeps a link put there since
    from being followed out of the rootfs (one read of a few bytes; nothing is shown)."""
    spend()
    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def binfmt_takes(head: bytes, name: str, handlers: Sequence[Handler]) -> bool:
    """Whether one of ``handlers`` matches the file of ``head`` exec'ed as ``name``: by
    magic, or by the extension after the last dot of the name, as binfmt_misc compares."""
    for handler in handlers:
        if handler.anything:
            return True
        if handler.extension is not None:
            if "." in name and name.rpartition(".")[2] == handler.extension:
                return True
            continue
        data = head[handler.offset : handler.offset + len(handler.magic)]
        if len(data) == len(handler.magic):
            mask = handler.mask or b"\xff" * len(data)
            if all(d & m == g & m for d, m, g in zip(data, mask, handler.magic, strict=False)):
                return True
    return False


def binfmt_handlers(directory: Path) -> tuple[Handler, ...] | None:
    """The enabled handlers registered in binfmt_misc mounted at ``directory``; none when
    it is disabled; None when it cannot be read (not mounted there): not known. An entry
    not read is taken to match all."""
    try:
        if (directory / "status").read_text().strip() != "enabled":
            return ()
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    handlers = []
    for entry in names:
        if entry in ("status", "register"):
            continue
        try:
            text = (directory / entry).read_text()
        except OSError:
            handlers.append(Handler(anything=True))
            continue
        handler = parse_binfmt_entry(text)
        if handler is not None:
            handlers.append(handler)
    return tuple(handlers)


def parse_binfmt_entry(text: str) -> Handler | None:
    """The handler a binfmt_misc entry file shows; None when it is disabled."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.strip().partition(" ")
        fields[key] = value.strip()
    try:
        if "extension" in fields:
            return Handler(extension=fields["extension"].removeprefix("."))
        magic = bytes.fromhex(fields["magic"])
        mask = bytes.fromhex(fields.get("mask", ""))
        return Handler(int(fields.get("offset", "0")), magic, mask)
    except (KeyError, ValueError):
        return Handler(anything=True)


def shown(text: str) -> str:
    """Image text as a message shows it: as it is when printable, else quoted with its
    escape sequences spelled out (none reaches the terminal); cut to ``_SHOWN_MOST``."""
    head = text[:_SHOWN_MOST]
    words = head if head.isprintable() else repr(head)
    if len(text) > _SHOWN_MOST:
        words += f"... (cut, {len(text)} characters)"
    return words
