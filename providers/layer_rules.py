"""What one tar entry of an image layer means, decided without touching a disk.

Every consumer of layers (the extracting backends and the merged FUSE tree)
asks this module the same two questions, so they all agree on the tree an
image makes:

- Where does the entry go?  ``normalize_name`` turns a tar member name into a
  path relative to the rootfs root, as a tuple of components.  ``./`` prefixes,
  ``.`` components, repeated and trailing slashes are noise and go away; the
  root entry (``./``) is the empty tuple.  Names that are hostile or broken are
  refused with ``UnsafeLayer``: absolute names, ``..`` components, NUL bytes,
  the empty name, names over ``MAX_NAME_BYTES`` and components over
  ``MAX_COMPONENT_BYTES``.  Nothing is ever resolved against a filesystem here.

- What does it do?  ``classify`` sorts a normalized path into a ``Rule``:
  ``.wh..wh..opq`` in directory D makes D opaque (hides every lower child of D),
  ``.wh.NAME`` hides the sibling NAME of lower layers, other ``.wh..wh.*``
  names are AUFS bookkeeping and are ignored together with everything inside
  them, and anything else is written.  Whiteouts only ever hide what lower
  layers made; the layer's own entries survive its whiteouts whatever their
  order in the archive (OCI image spec, "Whiteouts").

``hides`` answers whether a whiteout rule hides a given lower path,
``split_link_target`` splits a symlink target for resolution inside the
rootfs (absolute targets start again at the rootfs root), and
``past_missing`` says where a resolution goes from a missing component on
(lexically: nothing below it exists to redirect it).  All functions are pure
and safe to call from any thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from providers.errors import UnsafeLayer

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"

# PATH_MAX and NAME_MAX of Linux: longer names cannot be created anyway, and
# refusing them here gives a clear error instead of ENAMETOOLONG halfway.
MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
# The kernel's own limit on symlinks followed while resolving one path.
MAX_SYMLINK_HOPS = 40

RelPath = tuple[str, ...]
"""A path relative to the rootfs root, one component per item; () is the root."""


class Action(enum.Enum):
    WRITE = "write"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"
    IGNORE = "ignore"


class Rule(NamedTuple):
    """What an entry does.

    ``path`` is the entry's own path for WRITE and IGNORE, the hidden sibling
    for WHITEOUT, and the directory whose lower children are hidden for OPAQUE.
    """

    action: Action
    path: RelPath


def _encoded_length(text: str) -> int:
    # tarfile decodes undecodable bytes with surrogateescape; count the bytes
    # the kernel will see, not the characters.
    return len(text.encode("utf-8", "surrogateescape"))


def _components(name: str, *, layer: str, entry: str, what: str) -> RelPath:
    if not name:
        raise UnsafeLayer(layer, entry, f"has an empty {what}")
    if "\x00" in name:
        raise UnsafeLayer(layer, entry, f"has a NUL byte in its {what}")
    # An ASCII name has as many bytes as characters (str knows whether it is).
    length = len(name) if name.isascii() else _encoded_length(name)
    if length > MAX_NAME_BYTES:
        raise UnsafeLayer(layer, entry, f"has a {what} longer than {MAX_NAME_BYTES} bytes")
    if name[0] == "/":
        raise UnsafeLayer(layer, entry, f"has an absolute {what}")
    parts = name.split("/")
    # Most names have no empty or "." component: filter only those that do.
    if "" in parts or "." in parts:
        parts = [part for part in parts if part and part != "."]
    if ".." in parts:
        raise UnsafeLayer(layer, entry, f"has '..' in its {what}")
    # A short name cannot hold a long component: skip the per-component cost.
    if length > MAX_COMPONENT_BYTES:
        for part in parts:
            if _encoded_length(part) > MAX_COMPONENT_BYTES:
                raise UnsafeLayer(
                    layer, entry, f"has a {what} component longer than {MAX_COMPONENT_BYTES} bytes"
                )
    return tuple(parts)


def normalize_name(name: str, *, layer: str) -> RelPath:
    """The rootfs-relative path of tar member ``name``; () for the root entry.

    Raises UnsafeLayer for names that could only be meant to escape or that
    no filesystem can hold.
    """
    return _components(name, layer=layer, entry=name, what="name")


def classify(path: RelPath, *, layer: str, entry: str) -> Rule:
    """Sort a normalized entry path into what it does to the tree.

    ``entry`` is the original member name, for error messages.  A whiteout
    name used as a parent directory is refused: no tool writes one, and
    extracting it would leave whiteout files in the result.
    """
    if not path:
        return Rule(Action.WRITE, path)
    for part in path[:-1]:
        if part.startswith(WHITEOUT_META_PREFIX):
            return Rule(Action.IGNORE, path)
        if part.startswith(WHITEOUT_PREFIX):
            raise UnsafeLayer(layer, entry, f"has the whiteout {part!r} as a parent directory")
    base = path[-1]
    if base == WHITEOUT_OPAQUE:
        return Rule(Action.OPAQUE, path[:-1])
    if base.startswith(WHITEOUT_META_PREFIX):
        return Rule(Action.IGNORE, path)
    if base.startswith(WHITEOUT_PREFIX):
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise UnsafeLayer(layer, entry, "is a whiteout that names no sibling")
        return Rule(Action.WHITEOUT, (*path[:-1], hidden))
    return Rule(Action.WRITE, path)


def rule_for(name: str, *, layer: str) -> Rule:
    """``classify(normalize_name(name))``: the one call most readers need."""
    path = normalize_name(name, layer=layer)
    if WHITEOUT_PREFIX not in name:
        # classify finds no component starting with it: written, as most are.
        return Rule(Action.WRITE, path)
    return classify(path, layer=layer, entry=name)


def hardlink_target(linkname: str, *, layer: str, entry: str) -> RelPath:
    """The rootfs-relative path a hardlink entry points at.

    Hardlink targets are member names of the same image, so they obey the
    same rules as names; a link to the root or to a whiteout is refused.
    """
    path = _components(linkname, layer=layer, entry=entry, what="hardlink target")
    if not path:
        raise UnsafeLayer(layer, entry, "is a hardlink to the root directory")
    if classify(path, layer=layer, entry=entry).action is not Action.WRITE:
        raise UnsafeLayer(layer, entry, f"is a hardlink to the whiteout {linkname!r}")
    return path


def check_symlink_target(target: str, *, layer: str, entry: str) -> None:
    """Refuse symlink targets no filesystem stores; any other target is fine.

    Symlinks are created as they are: absolute and ``..`` targets are legal
    and only ever resolved inside the rootfs.
    """
    if not target:
        raise UnsafeLayer(layer, entry, "is a symlink with an empty target")
    if "\x00" in target:
        raise UnsafeLayer(layer, entry, "has a NUL byte in its symlink target")
    if _encoded_length(target) >= MAX_NAME_BYTES:
        raise UnsafeLayer(layer, entry, f"has a symlink target of {MAX_NAME_BYTES} bytes or more")


def split_link_target(target: str) -> tuple[bool, RelPath]:
    """Split a symlink target into (absolute?, components).

    ``.`` and empty components are dropped; ``..`` is kept, because only the
    resolver knows where it leads (and whether it climbs above the root).
    """
    return target.startswith("/"), tuple(p for p in target.split("/") if p not in ("", "."))


@dataclass(frozen=True, slots=True)
class PastMissing:
    """Where a walk goes from a missing component on; see ``past_missing``.

    ``ends``: the missing components the walk ends in, () if it climbed
    back out; ``passed``: every missing path it went through, relative to
    the directory where it met the first, in order.
    """

    ends: RelPath
    passed: tuple[RelPath, ...]


def past_missing(part: str, todo: list[str]) -> PastMissing:
    """Resolve lexically what follows the missing component ``part`` in a walk.

    ``todo`` is what the walk has still to resolve, as a stack (next
    component last).  Nothing below a missing directory exists, so no
    symlink can redirect what follows: a name goes one level deeper and
    ``..`` one up, without looking, as filepath-securejoin (umoci) and
    continuity's ``RootPath`` (containerd) resolve a path.  So a missing
    directory is never made only to be left by ``..``: a symlink ``l ->
    x/../y`` leads to ``y`` whether or not ``x`` exists.

    Pops from ``todo`` until a ``..`` climbs back out of ``part``: then
    ``ends`` is (), and the walk goes on where it met ``part``.  Or until
    ``todo`` is empty: then ``ends`` holds the missing components the walk
    ends in, ``part`` first, which a walk that creates makes and any other
    finds missing.
    """
    missing = [part]
    passed: list[RelPath] = [(part,)]
    while todo:
        step = todo.pop()
        if step != "..":
            missing.append(step)
            passed.append(tuple(missing))
            continue
        missing.pop()
        if not missing:
            break
    return PastMissing(tuple(missing), tuple(passed))


def hides(rule: Rule, path: RelPath) -> bool:
    """Whether ``rule`` (a whiteout or opaque marker) hides lower-layer ``path``."""
    if rule.action is Action.WHITEOUT:
        return path[: len(rule.path)] == rule.path
    if rule.action is Action.OPAQUE:
        return len(path) > len(rule.path) and path[: len(rule.path)] == rule.path
    return False
