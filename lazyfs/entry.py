"""The ``lazyfs`` command's entry point: a Ctrl-C while its modules load ends quietly.

Importing the CLI loads trio, requests, protobuf and the rest, long enough
for a Ctrl-C to land there. This module imports only ``sys`` and ``os``
first, so it can answer as the CLI does (``lazyfs: interrupted``, status
130) rather than with a traceback.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    """Load the CLI and run it on ``sys.argv``; the exit status."""
    try:
        fill_standard_fds()
        # Before anything loads trio: its import would run ``ldconfig -p`` (see there).
        from providers.shared_libs import install

        install()
        from lazyfs.cli import main as cli_main
    except KeyboardInterrupt:
        print("lazyfs: interrupted", file=sys.stderr)
        return 130
    return cli_main()


def fill_standard_fds() -> None:
    """/dev/null on each of stdin, stdout and stderr that is closed (``lazyfs ... >&-``).

    Else the first files this process opens would take their numbers, and a
    child would have them as its own: runc copied a container's output into
    its log. Python left ``sys.stdin`` (...) None for them: each is a stream
    on /dev/null now, for the code that takes one to be there.
    """
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            # A new file takes the lowest free number: fd, as those below it are open.
            # Children inherit it, as they would have the caller's (Python's own files
            # are close-on-exec).
            os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)
        if getattr(sys, name) is None:
            # For the life of the process, as Python's own: no ``with``.
            stream = open(fd, "r" if fd == 0 else "w", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)
