"""A small in-memory model of the layer rules, the stacks drawn for it, and the real thing.

The model states the rules the way the OCI image spec does, per layer: first
the whiteouts and opaque markers hide what lower layers made, then the
layer's entries are written in order.  It predicts path -> ("dir",),
("file", content) or ("link", target); or, when it refuses the stack, the
error class (``predicted``), and raises ``Unpredictable`` where the order of
a layer's entries would decide.  ``real`` applies the same stack with
``backends.apply`` and reads the tree back.  ``stacks`` draws stacks over a
tiny alphabet so that names collide often.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import strategies as st

from backends.apply import apply_layer
from providers.errors import BadEntry, BadImage, UnsafeLayer

Path_ = tuple[str, ...]
Node = tuple[str, ...]  # ("dir",) | ("file", content) | ("link", target)
Entry = tuple[str, Path_, str]  # kind, path, content or link target
DIR: Node = ("dir",)

NAMES = ("a", "b", "c")
TARGETS = ("a", "b", "a/b", "c/..", ".", "/", "/b", "/a/c", "../a", "..", "a/../..", "b/../b")
CONTENTS = ("", "x", "yy")


# --- the model ------------------------------------------------------------


class Refused(Exception):
    def __init__(self, kind: type[BadImage]) -> None:
        super().__init__(kind.__name__)
        self.kind = kind


def resolve(tree: dict[Path_, Node], path: Path_, *, create: bool) -> Path_ | None:
    """Where directory ``path`` really is, following symlinks inside the root."""
    where: list[str] = []
    todo = list(reversed(path))
    hops = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if not where:
                raise Refused(UnsafeLayer)
            where.pop()
            continue
        node = tree.get((*where, part))
        if node is None:
            # Nothing below is there to redirect the rest: resolved as text.
            missing = [part]
            while todo and missing:
                step = todo.pop()
                if step == "..":
                    missing.pop()
                else:
                    missing.append(step)
            if missing and not create:
                return None
            for name in missing:
                where.append(name)
                tree[tuple(where)] = DIR
            continue
        if node[0] == "link":
            hops += 1
            if hops > 40:
                raise Refused(UnsafeLayer)
            if node[1].startswith("/"):
                where = []
            todo.extend(reversed([p for p in node[1].split("/") if p not in ("", ".")]))
            continue
        if node[0] == "file":
            if create:
                raise Refused(BadEntry)
            return None
        where.append(part)
    return tuple(where)


def remove(tree: dict[Path_, Node], path: Path_, *, keep_self: bool = False) -> None:
    for key in [k for k in tree if k[: len(path)] == path]:
        if not (keep_self and key == path):
            del tree[key]


class Unpredictable(Exception):
    """The one case where the archive's order matters and the model has none."""


def check_order_free(tree: dict[Path_, Node], entries: list[Entry]) -> None:
    """Refuse to predict a layer that needs a lower non-directory as a parent.

    Written before a marker that hides it, such an entry fails; written
    after, it succeeds: extractors (ours, docker's) read in archive order.
    """
    listed: set[Path_] = set()
    for kind, path, _ in entries:
        if kind in ("file", "dir"):
            for end in range(1, len(path)):
                node = tree.get(path[:end])
                if path[:end] not in listed and node is not None and node != DIR:
                    raise Unpredictable
            if kind == "dir":
                listed.add(path)


def model(layers: list[list[Entry]], *, ordered: bool) -> dict[Path_, Node]:
    """The tree ``layers`` make; ``ordered`` if every layer lists its markers first."""
    tree: dict[Path_, Node] = {}
    for entries in layers:
        if not ordered:
            check_order_free(tree, entries)
        for kind, path, _ in entries:
            if kind == "whiteout":
                parent = resolve(tree, path[:-1], create=False)
                if parent is not None:
                    remove(tree, (*parent, path[-1]))
            elif kind == "opaque":
                where = resolve(tree, path, create=False)
                if where is not None:
                    remove(tree, where, keep_self=True)
        for kind, path, data in entries:
            if kind in ("whiteout", "opaque"):
                continue
            parent = resolve(tree, path[:-1], create=True)
            assert parent is not None
            at = (*parent, path[-1])
            if kind == "dir" and tree.get(at) == DIR:
                continue
            remove(tree, at)
            tree[at] = DIR if kind == "dir" else ("file" if kind == "file" else "link", data)
    return tree


# --- the real thing -------------------------------------------------------


def tar_name(kind: str, path: Path_) -> str:
    if kind == "whiteout":
        return "/".join((*path[:-1], ".wh." + path[-1]))
    if kind == "opaque":
        return "/".join((*path, ".wh..wh..opq"))
    return "/".join(path)


def archive(entries: list[Entry]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for kind, path, data in entries:
            info = tarfile.TarInfo(tar_name(kind, path))
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, data
            else:
                info.size = len(data) if kind == "file" else 0
            out.addfile(info, io.BytesIO(data.encode()) if kind == "file" else None)
    buffer.seek(0)
    return buffer


def walk(root: Path) -> dict[Path_, Node]:
    found: dict[Path_, Node] = {}

    def visit(directory: Path, prefix: Path_) -> None:
        for entry in os.scandir(directory):
            key = (*prefix, entry.name)
            if entry.is_symlink():
                found[key] = ("link", os.readlink(entry.path))
            elif entry.is_dir():
                found[key] = DIR
                visit(Path(entry.path), key)
            else:
                found[key] = ("file", Path(entry.path).read_text())

    visit(root, ())
    return found


def real(layers: list[list[Entry]]) -> dict[Path_, Node] | type[BadImage]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        try:
            for index, entries in enumerate(layers):
                apply_layer(root, archive(entries), layer=f"layer{index}")
        except BadImage as error:
            return type(error)
        return walk(root)


def predicted(layers: list[list[Entry]], *, ordered: bool) -> dict[Path_, Node] | type[BadImage]:
    try:
        return model(layers, ordered=ordered)
    except Refused as refused:
        return refused.kind


# --- strategies -----------------------------------------------------------

MAX_DEPTH = 3


@st.composite
def entries(draw: st.DrawFn, kinds: tuple[str, ...], count: int, seen: list[Path_]) -> list[Entry]:
    """``count`` entries of ``kinds``, often beneath paths drawn before (``seen``)."""
    drawn: list[Entry] = []
    for _ in range(count):
        kind = draw(st.sampled_from(kinds))
        bases = [p for p in seen if len(p) < MAX_DEPTH]
        beneath: bool = draw(st.booleans())
        if bases and beneath:
            path = (*draw(st.sampled_from(bases)), draw(st.sampled_from(NAMES)))
        else:
            depth = draw(st.integers(0 if kind == "opaque" else 1, MAX_DEPTH))
            path = tuple(draw(st.sampled_from(NAMES)) for _ in range(depth))
        if kind == "opaque" and len(path) == MAX_DEPTH:
            path = path[:-1]
        data = ""
        if kind == "file":
            data = draw(st.sampled_from(CONTENTS))
        elif kind == "link":
            data = draw(st.sampled_from(TARGETS))
        seen.append(path)
        drawn.append((kind, path, data))
    return drawn


@st.composite
def stacks(draw: st.DrawFn, *, symlinks: bool) -> list[list[Entry]]:
    """Layers: markers first with symlinks, or markers anywhere in well-formed layers."""
    seen: list[Path_] = []
    layers = []
    kinds: tuple[str, ...]
    for _ in range(draw(st.integers(1, 4))):
        if symlinks:
            head = draw(entries(("whiteout", "opaque"), draw(st.integers(0, 3)), seen))
            kinds = ("file", "dir", "dir", "link", "link")
            layers.append(head + draw(entries(kinds, draw(st.integers(0, 7)), seen)))
        else:
            kinds = ("file", "dir", "whiteout", "opaque")
            drawn = draw(entries(kinds, draw(st.integers(0, 8)), seen))
            layers.append(list(with_parents(drawn, draw(st.lists(st.booleans(), min_size=8)))))
    return layers


def with_parents(entries: list[Entry], declare: list[bool]) -> Iterator[Entry]:
    """``entries``, each one's parent directories listed just before it where ``declare`` says."""
    kinds: dict[Path_, str] = {}
    for (kind, path, data), listed in zip(entries, declare, strict=False):
        if kind in ("file", "dir") and listed:
            for end in range(1, len(path)):
                if kinds.get(path[:end]) != "dir":
                    kinds[path[:end]] = "dir"
                    yield "dir", path[:end], ""
        if kind in ("file", "dir"):
            kinds[path] = kind
        yield kind, path, data
