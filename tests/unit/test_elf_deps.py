"""The ELF parse a first start's prefetch runs on image files: right on real layouts, and
bounded, silent and never raising on hostile ones (``lazyfs.fs.elf_deps``)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.fs.elf_deps import BUDGET, MAX_NEEDED, MAX_SEARCH, ElfDeps, elf_deps
from tests.support.elf_files import Elf, elf

LD = b"/lib64/ld-linux-x86-64.so.2"


def reader(data: bytes, asked: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        if asked is not None:
            asked.append((offset, length))
        return data[offset : offset + length]

    return read


def patched(data: bytes, at: int, form: str, *values: int) -> bytes:
    """``data`` with ``values`` packed at ``at``."""
    packed = struct.pack(form, *values)
    return data[:at] + packed + data[at + len(packed) :]


GOOD = elf(needed=[b"libm.so.6", b"libc.so.6"], runpath=b"/opt/lib:/srv/lib")


@pytest.mark.parametrize(
    ("made", "want"),
    [
        (GOOD, ElfDeps(LD, (b"libm.so.6", b"libc.so.6"), (b"/opt/lib", b"/srv/lib"))),
        (elf(needed=[b"libc.so.6"], wide=False, order=">"), ElfDeps(LD, (b"libc.so.6",))),
        (elf(needed=[b"libc.so.6"], wide=False), ElfDeps(LD, (b"libc.so.6",))),
        (elf(needed=[b"libc.so.6"], order=">"), ElfDeps(LD, (b"libc.so.6",))),
        (
            elf(interp=None, needed=[b"ld-linux-x86-64.so.2"]),
            ElfDeps(None, (b"ld-linux-x86-64.so.2",)),
        ),
        (elf(needed=[b"libz.so.1"], dynamic_at=3 << 20), ElfDeps(LD, (b"libz.so.1",))),
        (elf(needed=[b"a.so"], runpath=b"/r", rpath=True), ElfDeps(LD, (b"a.so",), (b"/r",))),
        (elf(needed=[]), ElfDeps(LD)),
    ],
    ids=["64le-runpath", "32be", "32le", "64be", "no-interp", "dynamic-far", "rpath", "static-ish"],
)
def test_what_the_loader_reads_is_found(made: Elf, want: ElfDeps) -> None:
    assert elf_deps(reader(made.data)) == want


def test_the_interpreter_is_told_before_the_dynamic_section_is_read() -> None:
    made = elf(needed=[b"libc.so.6"], dynamic_at=1 << 20)
    asked: list[tuple[int, int]] = []
    told: list[tuple[bytes, int]] = []
    elf_deps(reader(made.data, asked), lambda path: told.append((path, len(asked))))
    assert told and told[0][0] == LD
    assert all(offset < made.dynamic_at for offset, _ in asked[: told[0][1]])


def test_this_hosts_python_when_there_is_one() -> None:
    python = Path("/usr/bin/python3.11")
    if not python.is_file():
        pytest.skip("no /usr/bin/python3.11 here")
    found = elf_deps(reader(python.read_bytes()))
    assert found is not None and found.interp is not None and b"libc.so.6" in found.needed


HOSTILE = {
    "empty": b"",
    "shell script": b"#!/bin/sh\nexec true\n",
    "magic only": b"\x7fELF",
    "header cut": GOOD.data[:40],
    "bad class": patched(GOOD.data, 4, "B", 3),
    "bad byte order": patched(GOOD.data, 5, "B", 0),
    "huge phnum (PN_XNUM)": patched(GOOD.data, 56, "<H", 0xFFFF),
    "no phdrs": patched(GOOD.data, 56, "<H", 0),
    "wrong phentsize": patched(GOOD.data, 54, "<H", 40),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_no_elf_or_a_broken_header_is_none(data: bytes) -> None:
    assert elf_deps(reader(data)) is None


def _phdr_field(made: Elf, index: int, offset: int) -> int:
    return made.phoff + index * 56 + offset


BROKEN = {
    # (the file, what may still be found)
    "phdrs past the end": patched(GOOD.data, 32, "<Q", 1 << 40),
    "phdrs at an absurd offset": patched(GOOD.data, 32, "<Q", (1 << 64) - 1),
    "phdrs cut": GOOD.data[: GOOD.phoff + 60],
    "interp past the end": patched(GOOD.data, _phdr_field(GOOD, 1, 8), "<Q", 1 << 50),
    "interp without its NUL": patched(GOOD.data, _phdr_field(GOOD, 1, 32), "<Q", 4),
    "dynamic past the end": patched(GOOD.data, _phdr_field(GOOD, 2, 8), "<Q", (1 << 64) - 8),
    "dynamic of huge size": patched(GOOD.data, _phdr_field(GOOD, 2, 32), "<Q", 1 << 62),
    "dynamic cut": GOOD.data[: GOOD.dynamic_at + 20],
    "strtab unmapped": patched(GOOD.data, GOOD.dynamic_at + 2 * 16 + 8, "<Q", 0x10),
    "strsz too small": patched(GOOD.data, GOOD.dynamic_at + 3 * 16 + 8, "<Q", 1),
    "name offset huge": patched(GOOD.data, GOOD.dynamic_at + 8, "<Q", (1 << 64) - 1),
}


@pytest.mark.parametrize("data", BROKEN.values(), ids=BROKEN.keys())
def test_damaged_parts_give_less_never_garbage_or_an_error(data: bytes) -> None:
    found = elf_deps(reader(data))
    assert found is None or isinstance(found, ElfDeps)
    if found is not None:
        assert found.interp in (None, LD)
        assert set(found.needed) <= {b"libm.so.6", b"libc.so.6"}
        assert set(found.runpath) <= {b"/opt/lib", b"/srv/lib"}


def test_every_cut_of_a_file_parses_to_part_of_it() -> None:
    for cut in range(len(GOOD.data) + 1):
        found = elf_deps(reader(GOOD.data[:cut]))
        if found is not None:
            assert set(found.needed) <= {b"libm.so.6", b"libc.so.6"}


def test_huge_counts_are_bounded() -> None:
    names = [b"lib%d.so" % i for i in range(MAX_NEEDED * 4)]
    made = elf(needed=names, runpath=b":".join(b"/d%d" % i for i in range(100)))
    asked: list[tuple[int, int]] = []
    found = elf_deps(reader(made.data, asked))
    assert found is not None
    assert len(found.needed) <= MAX_NEEDED and found.needed == tuple(names[: len(found.needed)])
    assert len(found.runpath) <= MAX_SEARCH
    assert sum(length for _, length in asked) <= BUDGET


def test_what_a_hostile_file_makes_it_read_stays_within_the_budget() -> None:
    # Every DT_NEEDED names the same far string: reads add up, and stop at the budget.
    made = elf(needed=[b"x" * 200] * 8)
    data = made.data
    for i in range(8):
        data = patched(data, made.dynamic_at + i * 16 + 8, "<Q", 1)
    asked: list[tuple[int, int]] = []
    elf_deps(reader(data, asked))
    assert sum(length for _, length in asked) <= BUDGET


def test_a_read_that_fails_passes_its_error_on() -> None:
    def failing(offset: int, length: int) -> bytes:
        raise OSError(5, "EIO")

    with pytest.raises(OSError):
        elf_deps(failing)


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=len(GOOD.data)))
def test_arbitrary_bytes_over_a_good_file_never_raise(noise: bytes, at: int) -> None:
    data = GOOD.data[:at] + noise + GOOD.data[at + len(noise) :]
    found = elf_deps(reader(data))
    assert found is None or len(found.needed) <= MAX_NEEDED
