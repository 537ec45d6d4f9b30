"""Small ELF files made to measure: the headers a dynamic loader reads, and nothing to run.

``elf`` lays out an ELF header, its program headers (one PT_LOAD over the
whole file, PT_INTERP when an interpreter is given, PT_DYNAMIC), the
interpreter's path, a string table and a dynamic section naming the needed
libraries and the run path; ``dynamic_at`` puts the dynamic section that far
into the file (as a real executable has it, megabytes past its head). 32 or
64 bits, either byte order. ``fields`` says where each part went, for tests
that damage one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

BASE = 0x400000  # the address the PT_LOAD maps the file at


@dataclass(frozen=True)
class Elf:
    data: bytes
    phoff: int
    interp_at: int
    dynamic_at: int
    strtab_at: int


def elf(
    interp: bytes | None = b"/lib64/ld-linux-x86-64.so.2",
    needed: Sequence[bytes] = (),
    runpath: bytes | None = None,
    *,
    wide: bool = True,
    order: str = "<",
    dynamic_at: int = 0,
    rpath: bool = False,
) -> Elf:
    phentsize, ehsize = (56, 64) if wide else (32, 52)
    phnum = 3 if interp is not None else 2
    phoff = ehsize
    at = phoff + phnum * phentsize
    interp_at = at
    interp_bytes = (interp + b"\0") if interp is not None else b""
    at += len(interp_bytes)
    strtab_at = at
    strings = b"\0"
    offsets = []
    for name in needed:
        offsets.append(len(strings))
        strings += name + b"\0"
    run_offset = len(strings)
    if runpath is not None:
        strings += runpath + b"\0"
    at += len(strings)
    at = max(at, dynamic_at)
    entries = [(1, offset) for offset in offsets] + [(5, BASE + strtab_at), (10, len(strings))]
    if runpath is not None:
        entries.append((15 if rpath else 29, run_offset))
    entries.append((0, 0))
    pair = "qQ" if wide else "iI"
    dynamic = b"".join(struct.pack(order + pair, tag, value) for tag, value in entries)
    size = at + len(dynamic)

    def phdr(kind: int, offset: int, filesz: int) -> bytes:
        if wide:
            return struct.pack(order + "IIQQQQQQ", kind, 4, offset, BASE + offset,
                               BASE + offset, filesz, filesz, 8)  # fmt: skip
        return struct.pack(order + "IIIIIIII", kind, offset, BASE + offset, BASE + offset,
                           filesz, filesz, 4, 4)  # fmt: skip

    phdrs = phdr(1, 0, size)
    if interp is not None:
        phdrs += phdr(3, interp_at, len(interp_bytes))
    phdrs += phdr(2, at, len(dynamic))
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, BASE, phoff, 0, 0,
                                     ehsize, phentsize, phnum, 64, 0, 0)  # fmt: skip
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, BASE, phoff, 0, 0,
                                     ehsize, phentsize, phnum, 40, 0, 0)  # fmt: skip
    body = header + phdrs + interp_bytes + strings
    data = body + bytes(at - len(body)) + dynamic
    return Elf(data, phoff, interp_at, at, strtab_at)
