"""Strings as a tar reader gives them: what names from outside a tar are held to.

tarfile decodes a member's name, its link target and its pax keywords (the
names of its xattrs) as UTF-8, each byte that is not UTF-8 becoming one of
U+DC80-U+DCFF (surrogateescape).  An index or a TOC that comes from elsewhere
(a published index artifact, an eStargz TOC) can hold strings no bytes
decode to: another surrogate, which no filesystem can store, or an escaped
spelling of bytes that are UTF-8 (``"\\udcc3\\udca9"`` for the bytes of
``"é"``), a second str for one name, which a directory would list twice and
which sorts apart from its bytes.  Both are refused where they come in.

Pure.
"""

from __future__ import annotations


def decoded(text: str) -> bool:
    """Whether a tar reader gives ``text`` for some bytes, as tarfile decodes names, link
    targets and pax keys: UTF-8, with each byte that is not as U+DC80-U+DCFF (surrogateescape).

    UnicodeEncodeError for any other surrogate.
    """
    return (
        text.isascii()
        or text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") == text
    )


def is_tar_text(text: str) -> bool:
    """``decoded``, with False where it raises: never raises."""
    try:
        return decoded(text)
    except UnicodeEncodeError:
        return False
