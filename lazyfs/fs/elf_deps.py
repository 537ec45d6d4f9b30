"""What an ELF file will make the dynamic loader open: its interpreter and needed libraries.

``elf_deps(read)`` reads an ELF file's header, program headers, dynamic
section and the names it points at through ``read(offset, length)`` (the
file's bytes, short past its end) and returns its ``PT_INTERP`` path, its
``DT_NEEDED`` names and its ``DT_RUNPATH``/``DT_RPATH`` directories, in
file order. Pure: no I/O besides ``read``, which may raise (the caller's
errors pass through untouched).

The bytes come from an image, so they are hostile: every count and length
is bounded (``MAX_*``), the bytes read in all stay under ``BUDGET``, offsets
past the end or overflowing ranges give nothing, and garbage is None or an
empty answer, never an exception of this module's own. 32- and 64-bit,
either byte order. A hint only: what it finds is fetched early, never
trusted for anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
MAX_PHNUM = 64  # past any real file's (13 for a usual executable); PN_XNUM is refused
MAX_DYNAMIC = 4096  # bytes of the dynamic section read: 256 entries of a 64-bit file
MAX_NEEDED = 32
MAX_NAME = 256  # bytes read for one name, its NUL included
MAX_SEARCH = 8  # RUNPATH/RPATH directories kept
BUDGET = 24 << 10  # bytes read in all for one file

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29

Read = Callable[[int, int], bytes]


@dataclass(frozen=True)
class ElfDeps:
    """An ELF file's loader inputs, every name as its bytes spell it: unchecked."""

    interp: bytes | None = None
    needed: tuple[bytes, ...] = ()
    runpath: tuple[bytes, ...] = ()  # DT_RUNPATH's directories, else DT_RPATH's


@dataclass(frozen=True)
class _Layout:
    wide: bool  # 64-bit
    order: str  # struct byte order: "<" or ">"

    @property
    def phentsize(self) -> int:
        return 56 if self.wide else 32

    @property
    def dynentsize(self) -> int:
        return 16 if self.wide else 8


class _Budget:
    """``read`` that stops answering once ``BUDGET`` bytes were asked for."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self.left = BUDGET

    def __call__(self, offset: int, length: int) -> bytes:
        length = min(length, self.left)
        if offset < 0 or length <= 0 or offset > 1 << 48:
            return b""
        self.left -= length
        return self._read(offset, length)[:length]


def elf_deps(read: Read, interp_found: Callable[[bytes], None] | None = None) -> ElfDeps | None:
    """The interpreter, needed names and search path of the ELF file ``read`` reads; None
    when it is no ELF file or its headers are cut short or make no sense.

    ``interp_found`` is told the interpreter as soon as it is known: before
    the dynamic section is read, which may sit megabytes further on.
    """
    budget = _Budget(read)
    head = budget(0, 64)
    if len(head) < 52 or head[:4] != ELF_MAGIC or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    layout = _Layout(wide=head[4] == 2, order="<" if head[5] == 1 else ">")
    try:
        if layout.wide:
            phoff, phentsize, phnum = _unpack(layout, "32xQ14xHH", head)
        else:
            phoff, phentsize, phnum = _unpack(layout, "28xI10xHH", head)
    except struct.error:  # a 64-bit header cut short
        return None
    if phentsize != layout.phentsize or not 0 < phnum <= MAX_PHNUM:
        return None
    table = budget(phoff, phnum * phentsize)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp_at: tuple[int, int] | None = None
    dynamic_at: tuple[int, int] | None = None
    for start in range(0, len(table) - phentsize + 1, phentsize):
        kind, offset, vaddr, filesz = _phdr(layout, table[start : start + phentsize])
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == _PT_INTERP and interp_at is None:
            interp_at = (offset, filesz)
        elif kind == _PT_DYNAMIC and dynamic_at is None:
            dynamic_at = (offset, filesz)
    interp = None
    if interp_at is not None:
        interp = _name(budget(interp_at[0], min(interp_at[1], MAX_NAME)))
        if interp is not None and interp_found is not None:
            interp_found(interp)
    if dynamic_at is None:
        return ElfDeps(interp)
    needed, runpath = _dynamic(layout, budget, loads, *dynamic_at)
    return ElfDeps(interp, needed, runpath)


def _dynamic(
    layout: _Layout, read: Read, loads: list[tuple[int, int, int]], offset: int, size: int
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The needed names and search directories the dynamic section at ``offset`` names."""
    data = read(offset, min(size, MAX_DYNAMIC))
    entry = layout.dynentsize
    pair = "qQ" if layout.wide else "iI"
    needed: list[int] = []
    strtab = strsz = None
    runpath = rpath = None
    for start in range(0, len(data) - entry + 1, entry):
        tag, value = struct.unpack(layout.order + pair, data[start : start + entry])
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED and len(needed) < MAX_NEEDED:
            needed.append(value)
        elif tag == _DT_STRTAB and strtab is None:
            strtab = value
        elif tag == _DT_STRSZ and strsz is None:
            strsz = value
        elif tag == _DT_RUNPATH and runpath is None:
            runpath = value
        elif tag == _DT_RPATH and rpath is None:
            rpath = value
    where = _file_offset(loads, strtab) if strtab is not None else None
    if where is None:
        return (), ()

    def string(at: int) -> bytes | None:
        if strsz is not None and at >= strsz:
            return None
        return _name(read(where + at, MAX_NAME))

    names = tuple(n for at in needed if (n := string(at)))
    search = runpath if runpath is not None else rpath
    directories: tuple[bytes, ...] = ()
    if search is not None and (spelled := string(search)):
        directories = tuple(d for d in spelled.split(b":") if d)[:MAX_SEARCH]
    return names, directories


def _unpack(layout: _Layout, form: str, data: bytes) -> tuple[int, ...]:
    return struct.unpack_from(layout.order + form, data)


def _phdr(layout: _Layout, data: bytes) -> tuple[int, int, int, int]:
    """(p_type, p_offset, p_vaddr, p_filesz) of one program header."""
    if layout.wide:
        kind, _, offset, vaddr, _, filesz = _unpack(layout, "IIQQQQ", data)
    else:
        kind, offset, vaddr, _, filesz = _unpack(layout, "IIIII", data)
    return kind, offset, vaddr, filesz


def _file_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int | None:
    """Where the byte at address ``vaddr`` is in the file, by the PT_LOAD that maps it."""
    for start, offset, filesz in loads:
        if start <= vaddr < start + filesz:
            return offset + (vaddr - start)
    return None


def _name(data: bytes) -> bytes | None:
    """The NUL-terminated name at the start of ``data``; None without its NUL or empty."""
    end = data.find(b"\0")
    return data[:end] if end > 0 else None
