"""What the mount server (``lazyfs.fs.mount_server``) takes for a mount request: ``check``.

Sans I/O: the request as received (a decoded JSON object and the
descriptors that came with it), checked for its shape only. What the
arguments mean is the mount process's to parse, as when exec'd.
"""

from __future__ import annotations

from typing import Any

from lazyfs.fs import mount_server_child
from lazyfs.fs.mount_server_child import MountRequest
from providers import rlimits

FDS = mount_server_child.FDS  # the ready pipe, the log, the working directory


class Refused(Exception):
    """A request the server does not serve; its message is the answer."""


def check(message: dict[str, Any], fds: list[int]) -> MountRequest:
    """The mount request in ``message``; Refused unless it is well formed.

    The arguments themselves are parsed by the mount process, as when exec'd.
    """
    args, env, umask = message.get("args"), message.get("env"), message.get("umask")
    if message.get("op") != "mount":
        raise Refused(f"unknown request {message.get('op')!r}")
    if len(fds) != FDS:
        raise Refused(f"{len(fds)} descriptors, not {FDS}")
    if not isinstance(args, list) or not all(_plain(arg) for arg in args):
        raise Refused("arguments that are not a list of strings")
    if any(arg.startswith("--ready-fd") for arg in args):
        raise Refused("--ready-fd is the server's to set")
    if not isinstance(env, dict) or not all(_plain(k) and _plain(v) for k, v in env.items()):
        raise Refused("an environment that is not strings")
    if any(not name or "=" in name for name in env):
        raise Refused("an environment variable without a name")
    if not isinstance(umask, int) or not 0 <= umask <= 0o777:
        raise Refused("no umask")
    if not rlimits.valid(limits := message.get("limits")):
        raise Refused("no resource limits")
    return MountRequest(list(args), dict(env), umask, dict(limits))


def _plain(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value
