"""The ``lazyfs`` command's entry point: a Ctrl-C while its modules load ends quietly.

Importing the CLI loads trio, requests, protobuf and the rest, long enough
for a Ctrl-C to land there. This module imports only ``sys`` first, so it
can answer as the CLI does (``lazyfs: interrupted``, status 130) rather
than with a traceback.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Load the CLI and run it on ``sys.argv``; the exit status."""
    try:
        # Before anything loads trio: its import would run ``ldconfig -p`` (see there).
        from providers.shared_libs import install

        install()
        from lazyfs.cli import main as cli_main
    except KeyboardInterrupt:
        print("lazyfs: interrupted", file=sys.stderr)
        return 130
    return cli_main()
