"""The text of an image config that becomes a container's command, environment, working
directory and user, refused as the config is parsed when no container could take it.

The config is the image author's, and JSON strings can hold what no exec(2) argument,
environment entry or path does: a NUL byte (``\\u0000``), or a lone surrogate (a
``\\ud800`` escape with no pair), which is no Unicode character and has no UTF-8:
``os.lstat`` cannot encode it and runc's config.json, which is JSON, cannot carry it.
Refused here, at the pull, an image holding one is a bad image for ``provision`` as for
``run``, told in one line before any of its layers is fetched.

A working directory is a path runc hands to chdir(2), which takes at most PATH_MAX
bytes with the NUL that ends it: a longer one can never be entered, and walking it
(a 16 MiB config holds millions of ``d/..``) is all it would cost.
"""

from __future__ import annotations

from providers.errors import BadImage

PATH_MAX = 4096  # Linux's, the ending NUL included
_SHOWN_MOST = 200  # characters of the text in the message


def checked(value: str, what: str, *, path: bool = False) -> str:
    """``value``, the config's ``what`` (a field, or an entry of one), if a container can
    take it: BadImage if it holds a NUL byte or a lone surrogate, or is a ``path`` of
    PATH_MAX bytes or more."""
    shown = repr(value[:_SHOWN_MOST])  # repr escapes controls and surrogates alike
    if "\0" in value:
        raise BadImage(f"bad image config: {what} {shown} holds a NUL byte")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadImage(
            f"bad image config: {what} {shown} holds a lone surrogate, which is not UTF-8"
        ) from None
    if path and size >= PATH_MAX:
        raise BadImage(
            f"bad image config: {what} is {size} bytes long, longer than a path may be"
            f" ({PATH_MAX - 1} bytes)"
        )
    return value
