"""Starting the cache daemon and the mount server while a command resolves its image, not after.

A lazy mount needs the machine's cache daemon, and the daemon takes a few
tenths of a second to load. The mount API starts it beside the mount
process (``lazyfs.fs.mount``), but the command knows it will need it much
earlier: ``run`` and ``provision`` of a registry image on the fuse backend,
and ``mount`` of one. ``started_ahead`` starts it then, in a thread of the
command, so that it loads while the command loads its own code and asks the
registry for the manifest, and is answering by the time the mount asks it
for the layers' tables of contents.

Only when no daemon socket is there at all: a socket means a daemon runs
(or a dead one's, which the mount finds and replaces as ever), and asking
it would cost the command a round trip and the protocol's code for nothing.
A registry image whose layers all turn out to be local needs no daemon; it
then runs on as it would after any lazy mount (it is the machine's daemon).

The start lock (``lazyfs.cache.spawn``) is held until the daemon holds its
cache, so a mount meanwhile waits for this daemon instead of starting
another; a failed start is logged and left to the mount, which starts the
daemon itself and says why it could not.

The same thread first starts the store's mount server for a mount on the
fuse backend that is not lazy (``lazyfs.fs.mount_server_client.start_ahead``),
unless one runs or ``LAZYFS_MOUNT_SERVER=0``. A mount process exec'd afresh
spends a quarter of a second importing; the server does that on the other
core while the command pulls and indexes the image on one, and the mount,
which waits for it, is forked ready. A server that cannot start is
logged; the mount is then exec'd as before. One that no mount asks for
within a minute (the command failed) exits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from lazyfs.cache.layout import socket_path
from lazyfs.cache.spawn import DaemonSpec, start_daemon
from lazyfs.cli_daemon import daemon_spec
from lazyfs.cli_flags import image_providers
from lazyfs.cli_registry import docker_registry
from lazyfs.fs import mount_server_client as server_client
from providers.errors import LazyfsError
from providers.image_pb2 import Image
from providers.transports import parse_transport

log = logging.getLogger(__name__)


def wants_daemon(args: argparse.Namespace, image: Image, backend: str | None) -> bool:
    """Whether provisioning ``image`` on ``backend`` will read layers through the daemon.

    A Docker image from a registry, on the fuse backend, with no credentials
    of its own (such an image is pulled whole): its eStargz layers stay
    remote. Not known before its manifest is: a guess that errs towards a
    daemon started for nothing.
    """
    if backend != "fuse" or image.type != Image.DOCKER or not image.HasField("docker"):
        return False
    if image.docker.config or "docker" not in image_providers(args):
        return False
    if parse_transport(image.docker.name) is not None:
        return False  # a local archive or layout: pulled, no daemon reads it
    return docker_registry(args).startswith(("http://", "https://"))


@contextlib.contextmanager
def started_ahead(
    args: argparse.Namespace, image: Image, backend: str | None, store: Path
) -> Iterator[None]:
    """Start what the block's mount will need in a thread: the mount server, the cache daemon.

    ``store`` is the store's root, whose mount server starts mounts of it.
    The thread is joined when the block ends: it has long finished by then
    (it ends once the daemon holds its cache, or failed to).
    """
    lazy = wants_daemon(args, image, backend)
    server = server_client.server_dir(store) if wants_mount_server(backend, lazy) else None
    spec = daemon_spec(args) if lazy else None
    if spec is not None and socket_path(spec.cache_dir).exists():
        spec = None
    if server is None and spec is None:
        yield
        return
    thread = threading.Thread(target=_start, args=(server, spec), name="lazyfs-ahead", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(spec.timeout if spec is not None else None)


def wants_mount_server(backend: str | None, lazy: bool) -> bool:
    """Whether to start the store's mount server ahead of a mount on ``backend``.

    Not for a ``lazy`` one (``wants_daemon``): its mount is exec'd, and
    starts no server (``lazyfs.fs.mount``). The command, the daemon and the
    TOCs race there, and a server importing beside them took the command's
    CPU: its first request came 0.25 s later, and the start was no sooner.
    """
    return backend == "fuse" and not lazy and server_client.wanted() is not False


def _start(server: Path | None, spec: DaemonSpec | None) -> None:
    # The server first: it has more to import, and the daemon's start waits.
    if server is not None:
        try:
            server_client.start_ahead(server)
        except (server_client.Unreachable, OSError) as why:
            # The mount starts one, or is exec'd, and says why; the daemon is started all the same.
            log.info("starting the mount server ahead of the mount: %s", why)
    if spec is None:
        return
    try:
        starting = start_daemon(spec)
        if starting is not None:
            starting.hand_over()
    except (LazyfsError, OSError) as error:
        # The mount starts it again, and says why it could not.
        log.info("starting the cache daemon ahead of the mount: %s", error)
