"""The ``user.rootlesscontainers`` xattr: an image's owner of a file, kept where chown cannot be.

A user who is not root cannot give files the owners an image has: what they
unpack is theirs.  The rootless containers convention (rootlesscontaine.rs)
keeps the image's owner in this xattr instead, and what reads it sees the
image's owners: ``umoci repack`` puts them back into layers, PRoot and
rootless runtimes show them inside the container.  The value is the
convention's ``Resource`` protobuf message: field 1 the uid, field 2 the
gid, both uint32 varints, where ``NOOP_ID`` (uint32 -1) means "whoever owns
it on disk", which in a rootless container is its root.

``owner_record(uid, gid)`` is the value ``umoci unpack --rootless`` (0.4.7,
checked against it) writes for an image's owner: each id that is 0 becomes
``NOOP_ID`` (so no field is ever 0, the value proto3 would leave out), and
an owner of 0:0, the unpacking user's own as the container sees it, gets no
xattr at all.  Pure; the caller sets it.

Root may also write in any directory; a user may not, even in their own,
where its mode denies them (a lower layer's 0555 ``usr/lib``, a 0500
directory, a later entry of a layer under its own 0555 one).  As umoci does
rootless, ``open_writable`` gives such a directory rwx for its owner while
the layer is written, noting the mode it had (``WideDir``) for the caller
to give back (``backends.apply_walk``).  Blocking.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from providers.layer_rules import RelPath

OWNER_XATTR = "user.rootlesscontainers"
NOOP_ID = 0xFFFF_FFFF
_UID_FIELD = 1
_GID_FIELD = 2
_VARINT = 0  # protobuf wire type


def owner_record(uid: int, gid: int) -> bytes | None:
    """The xattr's value for an entry the image gives ``uid``:``gid``; None for 0:0."""
    if uid == 0 and gid == 0:
        return None
    return _varint_field(_UID_FIELD, uid or NOOP_ID) + _varint_field(_GID_FIELD, gid or NOOP_ID)


def _varint_field(number: int, value: int) -> bytes:
    """One protobuf field of wire type varint: its key, then ``value`` as a uint32 varint.

    Cut to 32 bits as umoci's ``uint32(id)`` does; a field that comes to 0
    is left out, as proto3 leaves out every field at its default.
    """
    value &= NOOP_ID
    if value == 0:
        return b""
    return _varint(number << 3 | _VARINT) + _varint(value)


def _varint(value: int) -> bytes:
    """``value`` in base 128, low group first, the high bit set on all groups but the last."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class WideDir:
    """A directory ``open_writable`` widened: its device, inode and mode before."""

    dev: int
    ino: int
    mode: int

    def same(self, found: os.stat_result) -> bool:
        """Whether ``found`` is this directory, not a namesake made after it went."""
        return (found.st_dev, found.st_ino) == (self.dev, self.ino)


Widened = dict[RelPath, WideDir]


def open_writable(
    name: str, dir_fd: int | None, path: RelPath, widened: Widened, *, follow: bool = False
) -> int:
    """A descriptor of the directory ``name`` in ``dir_fd``, which its owner may now write in.

    If it is the process's own and its mode keeps its owner from reading,
    writing or searching it, its owner gets all three and ``widened`` notes
    it at ``path``, with the mode it had.  One
    that is not ours is left as it is: what it refuses is the caller's error.
    ``follow``: follow a symlink at ``name``.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        # Unreadable even to its owner (0300, 0000): pinned, which needs no
        # permission on it, widened, and opened by the pin.
        pin = os.open(name, flags | os.O_PATH, dir_fd=dir_fd)
        try:
            _widen(pin, path, widened)
            return os.open(f"/proc/self/fd/{pin}", flags & ~os.O_NOFOLLOW)
        finally:
            os.close(pin)
    try:
        _widen(fd, path, widened)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _widen(fd: int, path: RelPath, widened: Widened) -> None:
    found = os.fstat(fd)
    mode = stat.S_IMODE(found.st_mode)
    if mode & stat.S_IRWXU == stat.S_IRWXU or found.st_uid != os.geteuid():
        return
    # Through /proc: an O_PATH descriptor takes no fchmod.
    os.chmod(f"/proc/self/fd/{fd}", mode | stat.S_IRWXU)
    widened[path] = WideDir(found.st_dev, found.st_ino, mode)
