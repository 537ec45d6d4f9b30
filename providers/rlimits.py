"""Resource limits (setrlimit(2)) passed between the processes of lazyfs.

A process inherits its limits from the one that started it. That is right
for a mount exec'd by a command, and wrong for the processes that serve
many commands: the mount server and the cache daemon a command started
kept that command's limits for their whole life, so after one
``ulimit -f 1024; lazyfs run ...`` a later run without limits could not
write a 2 MiB file in its rootfs ("File too large"), and a ``ulimit -t``
would have the daemon killed for CPU time spent on later commands' reads.

So a serving process takes the machine's limits when it starts
(``take_the_machines``: init's where the starter's are lower, as a
service started by init would have them), and a mount process the mount
server forks takes the limits of the command that asked for it
(``current`` sent with the request, ``apply`` in the child), as it would
have had exec'd by that command.

Imports: the standard library only.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from typing import TypeGuard

# Every limit the kernel keeps for a process, by the name a request carries.
LIMITS: dict[str, int] = {
    name.removeprefix("RLIMIT_").lower(): getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"  # OFILE: NOFILE's old name
}

# What a serving process takes from init: the limits that would stop it
# serving (CPU time, file size, memory, descriptors, threads,
# signals). Not core dumps, stack, locked memory or scheduling: where init
# differs from a command there, the command's are the ones meant for us.
SERVING = ("cpu", "fsize", "data", "as", "nofile", "nproc", "sigpending")

_INFINITY = resource.RLIM_INFINITY
_MOST = 1 << 63  # what setrlimit takes: a C long


def current() -> dict[str, list[int]]:
    """This process's limits: name to [soft, hard], RLIM_INFINITY as -1."""
    return {name: list(resource.getrlimit(number)) for name, number in LIMITS.items()}


def valid(limits: object) -> TypeGuard[dict[str, list[int]]]:
    """Whether ``limits`` (untrusted) has the shape ``current`` gives: known names, int pairs."""
    if not isinstance(limits, dict):
        return False
    return all(
        name in LIMITS
        and isinstance(pair, list)
        and len(pair) == 2
        and all(type(value) is int and _INFINITY <= value < _MOST for value in pair)
        for name, pair in limits.items()
    )


def above_own(limits: Mapping[str, Sequence[int]]) -> list[str]:
    """The names of ``limits`` whose hard limit is above this process's."""
    return [
        name
        for name, (_, hard) in limits.items()
        if _higher(hard, own := resource.getrlimit(LIMITS[name])[1]) != own
    ]


def apply(limits: Mapping[str, Sequence[int]]) -> list[str]:
    """Set this process's limits to ``limits``; the names it was not allowed to set.

    A user cannot raise a hard limit: a mount forked by a server whose
    hard limit is below its caller's keeps the lower one, and says so.
    """
    refused = []
    for name, (soft, hard) in limits.items():
        try:
            resource.setrlimit(LIMITS[name], (soft, hard))
        except (OSError, ValueError, OverflowError):
            refused.append(name)
    return refused


def take_the_machines() -> list[str]:
    """Raise the ``SERVING`` limits to init's where they are lower; the names left lower.

    Never lowered: a starter may have raised a limit for good reason (more
    descriptors). Only root may read init's limits (prlimit(2) on another
    user's process) and raise a hard limit; a user's serving process raises
    each soft limit to its hard one instead, all it may do.
    """
    wanted = {}
    for name in SERVING:
        number = LIMITS[name]
        own = resource.getrlimit(number)
        try:
            init = resource.prlimit(1, number)
        except OSError:  # not ours to read
            init = (own[1], own[1])
        wanted[name] = (_higher(own[0], init[0]), _higher(own[1], init[1]))
    return apply(wanted)


def _higher(one: int, other: int) -> int:
    if _INFINITY in (one, other):
        return _INFINITY
    return max(one, other)
