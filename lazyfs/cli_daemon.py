"""``lazyfs daemon``, and how other commands find or start it.

``run_daemon`` is the command: the machine's cache daemon in the
foreground (for systemd), over ``--cache_dir`` (default ``WORK_DIR/cache``)
bounded by ``--cache_size`` (bytes, or a number with B, KB, MB, GB or TB,
1024-based as Mesos counts; default 10GB), fetching from registries with
the same registry flags as pulls. It stops on SIGTERM or SIGINT.

``daemon_spec`` is what a mount that needs the daemon is given to start it
when none runs (``lazyfs.cache.spawn``): this same program with the global
flags of this invocation, passed in its environment as ``LAZYFS_*``
variables, not on its command line, where other users could read a
``--docker_config`` with credentials.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from lazyfs.cache.spawn import DaemonSpec
from lazyfs.cli_flags import global_flags, registry_options, source
from providers.errors import UsageError

DEFAULT_CACHE_SIZE = "10GB"
_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def cache_dir(args: argparse.Namespace) -> Path:
    """``--cache_dir``, absolute: the daemon and the mounts resolve it from other directories."""
    chosen = args.cache_dir or Path(args.work_dir) / "cache"
    return Path(chosen).absolute()


def cache_size(args: argparse.Namespace) -> int:
    """``--cache_size`` in bytes."""
    text = str(args.cache_size).strip()
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?B)?", text, re.I)
    size = int(float(found[1]) * _UNITS[(found[2] or "B").upper()]) if found else 0
    if size < 1:
        raise UsageError(f"{source(args, 'cache_size')} {args.cache_size!r}: want bytes, e.g. 10GB")
    return size


def daemon_spec(args: argparse.Namespace) -> DaemonSpec:
    """How this invocation's mounts start the daemon when none answers."""
    env = {}
    for flag in global_flags(()):
        value = getattr(args, flag.name, None)
        if value is None or value == flag.default:
            continue
        env[flag.env] = "1" if flag.switch else str(value)
    env["LAZYFS_WORK_DIR"] = str(Path(args.work_dir).absolute())
    env["LAZYFS_CACHE_DIR"] = str(cache_dir(args))
    env["LAZYFS_CACHE_SIZE"] = str(cache_size(args))
    return DaemonSpec(cache_dir(args), (sys.executable, "-P", "-m", "lazyfs", "daemon"), env)


def run_daemon(args: argparse.Namespace) -> int:
    """``lazyfs daemon``: serve the cache until SIGTERM or SIGINT; 0 then."""
    from lazyfs.cache import service
    from lazyfs.cache.upstream import Origins

    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(
            logging.Formatter("lazyfs-daemon[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
    if not args.debug:
        root.setLevel(logging.INFO)
    background = not getattr(args, "no_background_fetch", False)
    service.run(
        cache_dir(args), cache_size(args), Origins(registry_options(args)), background=background
    )
    return 0
