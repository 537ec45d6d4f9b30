"""The options a mount process mounts its tree with (``mount_options``).

Apart from ``lazyfs.fs.mount_main`` so that what they let in, and why,
reads on its own.
"""

from __future__ import annotations

import os

import pyfuse3


def mount_options(*, writable: bool = False, suid: bool = False, dev: bool = False) -> set[str]:
    """The FUSE mount options; ``suid`` and ``dev`` count only as root.

    ``allow_other`` as root: without it the kernel lets in only processes
    running as the mounting user, root here. A container's rootfs needs it,
    since its processes run as the image's user, and so does a person's
    ``sudo lazyfs mount``, looked at as themselves. Who else gets in is up
    to the mount point's parents: a rootfs's are closed to other users (see
    ``providers.private_dir``), a person's are theirs to choose. Whoever
    gets in meets the image's modes (``default_permissions``): they read
    what the image lets anyone read and, in a writable mount, write where
    it lets anyone write (into the upper, discarded on umount).

    ``suid`` and ``dev`` are for a container's rootfs, whose setuid files
    and device nodes must work inside it; a person's look inside an image
    gets ``nosuid,nodev``, so an image's setuid-root file, or a device node
    anyone may open, reached through their mount point gives no one root.
    Without root, fusermount3 mounts ``nosuid,nodev`` whatever is asked.
    """
    options = set(pyfuse3.default_options) | {"fsname=lazyfs"}
    if not writable:
        options.add("ro")
    root = os.geteuid() == 0
    if root:
        options.add("allow_other")
    options.add("suid" if suid and root else "nosuid")
    options.add("dev" if dev and root else "nodev")
    return options
