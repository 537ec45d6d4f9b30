"""``lazyfs daemon``, and how other commands find or start it.

``run_daemon`` is the command: the machine's cache daemon in the
foreground (for systemd), over ``--cache_dir`` (default ``WORK_DIR/cache``)
bounded by ``--cache_size`` (bytes, or a number with KiB, MiB, GiB or TiB,
or KB.. 1024-based as Mesos counts; default 10GiB), fetching from registries with
the same registry flags as pulls. It stops on SIGTERM or SIGINT.

``daemon_spec`` is what a mount that needs the daemon is given to start it
when none runs (``lazyfs.cache.spawn``): this same program with the global
flags of this invocation, passed in its environment as ``LAZYFS_*``
variables, not on its command line, where other users could read a
``--docker_config`` with credentials.

``lazyfs daemon`` serves until stopped; the daemon a command starts is
given ``--idle_exit`` (``SPAWNED_IDLE``, ``SPAWNED_FIRST_IDLE``), so that it
goes once nothing has used it for an hour, or for a minute when nothing
ever connected (the command that started it ahead failed, or its image had
no lazy layer). The next mount starts another.

The daemon runs in ``/``, as a service does, so that it holds no directory
of whoever started it (a mount of theirs would stay busy for the daemon's
life); ``anchor_paths`` first makes the relative paths among its flags
absolute from where it was started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.cache.spawn import LOG_NAME, DaemonSpec
from lazyfs.cli_flags import cache_dir as cache_dir  # where it was: many callers import it here
from lazyfs.cli_flags import cwd_gone, global_flags, parse_size
from lazyfs.cli_registry import registry_options
from providers import rlimits
from providers.append_log import FollowedLog
from providers.errors import UsageError
from providers.fslock import same_file

if TYPE_CHECKING:
    from lazyfs.cache.service import Chore, Forgets
    from lazyfs.store.disk import Store

DEFAULT_CACHE_SIZE = "10GiB"
# A daemon a command starts: seconds with no mount and no fetch, then it exits, as the
# mount server does (``lazyfs.fs.mount_server``); and before its first connection.
SPAWNED_IDLE = 3600.0
SPAWNED_FIRST_IDLE = 60.0
# The global flags that may name a file or a directory (or else a URL, or inline JSON).
PATH_FLAGS = (
    "work_dir",
    "cache_dir",
    "docker_registry",
    "docker_store_dir",
    "docker_config",
    "docker_registry_ca_file",
    "appc_store_dir",
    "appc_simple_discovery_uri_prefix",
    "image_gc_config",
)


def cache_size(args: argparse.Namespace) -> int:
    """``--cache_size`` in bytes. Its text was checked as parsed (``cli_flags``), from
    the command line or the environment, so it reads as bytes here."""
    size = parse_size(args.cache_size)
    assert size is not None
    return size


def daemon_spec(args: argparse.Namespace) -> DaemonSpec:
    """How this invocation's mounts start the daemon when none answers."""
    env = {}
    for flag in global_flags(()):
        value = getattr(args, flag.name, None)
        if flag.switch and value is not None:
            # Off too: else a LAZYFS_ variable of the caller's, which --no-NAME
            # overrode here, would turn it on again in the daemon.
            env[flag.env] = "1" if value else "0"
            continue
        if value is None or value == flag.default:
            continue
        text = str(value)
        # From here: a mount may start the daemon again later, from another directory.
        env[flag.env] = _anchored(text) if flag.name in PATH_FLAGS else text
    env["LAZYFS_WORK_DIR"] = str(Path(args.work_dir).absolute())
    env["LAZYFS_CACHE_DIR"] = str(cache_dir(args))
    env["LAZYFS_CACHE_SIZE"] = str(cache_size(args))
    command = (sys.executable, "-P", "-m", "lazyfs", "daemon")
    idle = ("--idle_exit", f"{SPAWNED_IDLE:g}", "--first_idle", f"{SPAWNED_FIRST_IDLE:g}")
    return DaemonSpec(cache_dir(args), command + idle, env)


def anchor_paths(args: argparse.Namespace) -> None:
    """Make each relative path among ``args``' ``PATH_FLAGS`` absolute, from the working
    directory, a ``file://`` one's too; a URL, inline JSON or an empty value stays as it is."""
    for name in PATH_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, type(value)(_anchored(str(value))))


def _anchored(value: str) -> str:
    """``value`` read from the working directory as its flag reads it (a ``file://``
    value is the path after it, as ``docker_config_text`` and the GC config take it)."""
    text = value.strip()
    if not text or text.startswith("{"):
        return value  # inline JSON, or nothing
    if text.startswith("file://"):
        path = text[len("file://") :]
        return value if not path or os.path.isabs(path) else f"file://{_from_here(path)}"
    if "://" in text or text.startswith("file:"):
        return value  # a URL: http(s), or one its flag refuses in words of its own
    return value if os.path.isabs(value) else _from_here(value)


def _from_here(path: str) -> str:
    try:
        here = os.getcwd()
    except FileNotFoundError:  # deleted: say so, and name the path
        raise cwd_gone(path) from None
    return os.path.join(here, path)  # as the flag would have read it: a trailing / stays


def run_daemon(args: argparse.Namespace, every: Chore | None = None) -> int:
    """``lazyfs daemon``: serve the cache until SIGTERM or SIGINT; 0 then.

    ``every``: a chore and its interval (image GC, with ``--image_gc_config``),
    made before: it may have read files the flags name from the working directory.
    """
    from lazyfs.cache import service

    anchor_paths(args)
    os.chdir("/")
    if args.idle_exit is not None:
        # Started by a command (``daemon_spec``), it serves every later one: not under
        # that command's lowered limits (a ``ulimit -t`` would end it). A service's
        # limits are its manager's to set.
        rlimits.take_the_machines()
    from lazyfs.cache.upstream import Origins

    root = logging.getLogger()
    log = cache_dir(args) / LOG_NAME
    # Started by a command, its stderr is that log (``spawn``): it follows the log's renames.
    follow = None
    with contextlib.suppress(OSError):  # no stderr at all: nothing to follow
        follow = FollowedLog(log) if same_file(2, log) else None
    for handler in root.handlers:
        handler.setFormatter(
            logging.Formatter("lazyfs-daemon[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
        if follow is not None:
            handler.addFilter(follow)
    if not args.debug:
        root.setLevel(logging.INFO)
    background = not getattr(args, "no_background_fetch", False)
    service.run(
        cache_dir(args),
        cache_size(args),
        Origins(registry_options(args)),
        background=background,
        every=every,
        idle_exit=_seconds(args, "idle_exit"),
        first_idle=_seconds(args, "first_idle"),
    )
    return 0


def _seconds(args: argparse.Namespace, name: str) -> float | None:
    """``--NAME`` of ``lazyfs daemon``: None if not given, else seconds over 0."""
    value = getattr(args, name, None)
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"--{name} {value:g}: want seconds over 0")
    return value


def image_gc_chore(
    args: argparse.Namespace,
    store: Callable[[], Store],
    work_dir: Path,
    stale_tree: Callable[[str], bool],
) -> Chore | None:
    """With ``--image_gc_config``: a GC pass every ``image_disk_watch_interval``, as in Mesos."""
    if getattr(args, "image_gc_config", None) is None:
        return None
    # The GC code loads for a daemon that runs it only.
    from lazyfs.cli_gc import gc_config
    from lazyfs.gc.collect import gc_pass

    config = gc_config(args)
    assert config is not None

    def image_gc(forget: Forgets) -> None:
        # The daemon lets go of the removed layers' chunks while the pass holds the store.
        report = gc_pass(store(), work_dir, config, stale_tree=stale_tree, removed=forget)
        if report.images or report.layers or not report.reached:
            reached = "reached" if report.reached else "not reached (the rest is used or excluded)"
            logging.getLogger("lazyfs.gc").info(
                "image GC: removed %d images, %d layers; headroom %s",
                len(report.images), len(report.layers), reached,
            )  # fmt: skip

    return config.interval_ns / 1e9, image_gc
