"""Hostile layers: each entry aims at a file named PROBE outside the rootfs.

Relative escapes land next to the rootfs (in a test's tmp_path), absolute
ones at the host's root.  ``outside_state`` records everything around the
rootfs, so a test can show that applying a hostile layer changed nothing
there.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from tests.support.tar_members import Member, dir_, hard, reg, sym

PROBE = "lazyfs-escape-probe"


@dataclass(frozen=True)
class Hostile:
    id: str
    members: tuple[Member, ...]


HOSTILE = [
    Hostile("dotdot", (reg(f"../{PROBE}"),)),
    Hostile("absolute", (reg(f"/{PROBE}"),)),
    Hostile("absolute-dir", (dir_(f"/tmp/{PROBE}"),)),
    Hostile("dotdot-inside", (reg(f"a/../../{PROBE}"),)),
    Hostile("symlink-up-then-write", (sym("evil", "../outside"), reg(f"evil/{PROBE}"))),
    Hostile("symlink-far-up", (sym("evil", "../../../../../../../.."), reg(f"evil/tmp/{PROBE}"))),
    Hostile("symlink-to-slash-dotdot", (sym("evil", "/.."), reg(f"evil/{PROBE}"))),
    Hostile("nested-symlink-up", (dir_("a/b"), sym("a/b/up", "../../.."), reg(f"a/b/up/{PROBE}"))),
    Hostile(
        "symlink-chain-up",
        (sym("one", "two/.."), dir_("two"), sym("x", "one/.."), reg(f"x/{PROBE}")),
    ),
    Hostile("symlink-loop", (sym("a", "b"), sym("b", "a"), reg(f"a/{PROBE}"))),
    # Lexically past a missing directory, then above the root all the same.
    Hostile("symlink-up-past-a-missing-dir", (sym("evil", "gone/../.."), reg(f"evil/{PROBE}"))),
    Hostile(
        "symlink-deep-into-missing-then-up",
        (dir_("a"), sym("a/evil", "m/n/../../../.."), reg(f"a/evil/{PROBE}")),
    ),
    Hostile("hardlink-dotdot", (hard(PROBE, "../outside/secret"),)),
    Hostile("hardlink-absolute", (hard(PROBE, "/etc/passwd"),)),
    Hostile("hardlink-via-symlink", (sym("evil", "../outside"), hard(PROBE, "evil/secret"))),
    Hostile(
        "hardlink-via-deep-symlink", (sym("evil", "/../../.."), hard(PROBE, "evil/etc/passwd"))
    ),
    Hostile("whiteout-via-symlink", (sym("evil", "../outside"), reg("evil/.wh.secret"))),
    Hostile("opaque-via-symlink", (sym("evil", "../outside"), reg("evil/.wh..wh..opq"))),
    Hostile("whiteout-of-dotdot", (reg(".wh.."),)),
    Hostile("whiteout-as-parent", (reg(f".wh.x/{PROBE}"),)),
    Hostile("name-too-long", (reg("a/" * 2100 + PROBE),)),
    Hostile("component-too-long", (reg("a" * 256),)),
]


def outside_state(tmp_path: Path) -> dict[str, tuple[int, int, bytes]]:
    """Everything around the rootfs: path -> (mode, link count, content)."""
    seen: dict[str, tuple[int, int, bytes]] = {}
    for path in sorted(tmp_path.rglob("*")):
        if path.is_relative_to(tmp_path / "root"):
            continue
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        seen[str(path)] = (info.st_mode, info.st_nlink, content)
    return seen
