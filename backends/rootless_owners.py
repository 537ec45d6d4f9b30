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
"""

from __future__ import annotations

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
