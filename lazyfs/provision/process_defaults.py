"""What the command of a container ``lazyfs run`` runs may do: docker's defaults.

runc's minimal spec (``runc spec``) keeps three capabilities and 1024 open
files; an image made for ``docker run`` expects more: root that can ``chown``,
``su`` and apt's sandbox user that can set groups, a program that can raise
its open-file limit.
"""

from __future__ import annotations

import resource
from typing import Any

# docker's default capability set (moby's oci/caps defaults, as its run reference lists
# them): what root in a container may do, no more. Not SYS_ADMIN, SYS_PTRACE, NET_ADMIN...
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# What the spec takes for "no limit" (a uint64): getrlimit's RLIM_INFINITY is -1 here.
_UNLIMITED = (1 << 64) - 1

# Off, as docker has it: on, setuid programs of the image (su, sudo, an old ping) do
# not work for a -u user. It would not make up for the seccomp profile lazyfs does
# not have (unshare, keyctl and the like stay open with or without it), and what a
# setuid program gains is bounded by the capabilities above anyway.
NO_NEW_PRIVILEGES = False


def capabilities(uid: int) -> dict[str, list[str]]:
    """The spec's ``process.capabilities`` for a command run as ``uid``, as docker sets them.

    Root gets the set bounding, effective and permitted. Another user gets it
    bounding only, effective and permitted empty, as execve gives a non-root
    user (moby's ``SetCapabilities``): it gains them only through a setuid or
    file-capability program. Inheritable and ambient are empty for everyone.
    """
    caps = list(DEFAULT_CAPABILITIES)
    if uid == 0:
        return {"bounding": caps, "effective": list(caps), "permitted": list(caps)}
    return {"bounding": caps, "effective": [], "permitted": []}


def rlimits() -> list[dict[str, Any]]:
    """The spec's ``process.rlimits``: lazyfs' own open-file limits, soft and hard.

    docker's containers get its daemon's (commonly 1048576); a container of
    ``lazyfs run`` gets those of the ``lazyfs`` that ran it, so a program in it
    may raise its soft limit as far as lazyfs could.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        {
            "type": "RLIMIT_NOFILE",
            "soft": _UNLIMITED if soft == resource.RLIM_INFINITY else soft,
            "hard": _UNLIMITED if hard == resource.RLIM_INFINITY else hard,
        }
    ]
