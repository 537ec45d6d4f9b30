"""The public mount API: serve an image's merged tree at a mount point, in its own process.

pyfuse3 serves one mount per process, so every mount is a process running
``lazyfs.fs.mount_main`` (see there), in a session of its own with its
output going to a log file, so it outlives the caller's terminal and its
Ctrl-C.  It is forked by the store's mount server, which has imported it
all once (``lazyfs.fs.mount_server_client``), or exec'd as ``python -m
lazyfs.fs.mount_main`` when the server cannot be had (or is only
starting, for the first mount of a store); either way the same
process to the caller.  This is the one module of lazyfs that backends may
import, and it stays light: it loads no FUSE, index or tree code.  Layers
still in a registry (``remote``, see ``lazyfs.cache.remote``) are read by
the mount process through the cache daemon, which ``mount`` starts first
when none answers (``lazyfs.cache.spawn``), and asks for what the mount
reads first while the mount process loads (``lazyfs.fs.mount_ahead``).

``mount`` starts the mount process with the layers' descriptors and the
store they are in, and waits for its answer on a pipe, one line each:

- ``indexed``: the layers are indexed (once per layer: the indexes are
  stored by digest, see ``lazyfs.index.stored``) and the merged tree is being
  mounted; the mount's ``timeout`` starts here;
- ``ready``: the mount is up; or
- ``refused <json>``: indexing refused a layer (BadImage, UnsafeLayer, a
  layer past its limits) or the store failed it (NotFound, OSError):
  ``mount`` raises that same error, class and message; or
- anything else: why the mount did not come up (BackendError here).

On any failure, or an interrupt while the caller waits, nothing is left
mounted or running. ``unmount`` takes the mount down and waits for its process
to end, killing it if it does not; it is idempotent. Both are blocking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lazyfs.cache.remote import Remote, RemoteAware, RemoteOrigin
from lazyfs.cache.spawn import DaemonSpec, start_daemon
from lazyfs.fs import mount_server_client as server_client
from lazyfs.fs.mount_peers import wait_ended
from lazyfs.fs.mount_wire import (
    READY,
    REFUSED,
    failure,
    layer_arg,
    parse_layer_arg,
    parse_layer_args,
    read_answer,
    refusal,
    refused_error,
)
from lazyfs.fs.unmount import (
    MOUNT_MODULE,
    fusermount_unmount,
    note_pid,
    signal_pid,
    unmount,
)
from providers.errors import BackendError, BadEntry, UsageError
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from providers.mountinfo import is_mounted, mount_points
from providers.private_dir import private_dir
from providers.reaping import SPAWN_DEFAULTS

if TYPE_CHECKING:
    from lazyfs.store.disk import Store
    from providers.digest import Digest
    from providers.tar_stream import LayerLimits

__all__ = [
    "REFUSED",
    "DaemonSpec",
    "Remote",
    "RemoteAware",
    "RemoteOrigin",
    "fusermount_unmount",
    "is_mounted",
    "layer_arg",
    "load_ahead_code",
    "mount",
    "mount_points",
    "mount_recorded",
    "note_pid",
    "open_complete",
    "parse_layer_arg",
    "parse_layer_args",
    "recorded_pid",
    "refusal",
    "refused_error",
    "unmount",
]

MOUNT_TIMEOUT = 60.0
log = logging.getLogger(__name__)


def mount(
    layers: Sequence[Layer],
    mountpoint: Path,
    *,
    store: Path,
    log_path: Path,
    timeout: float = MOUNT_TIMEOUT,
    upper: Path | None = None,
    work: Path | None = None,
    debug: bool = False,
    suid: bool = True,
    dev: bool = True,
    limits: LayerLimits | None = None,
    remote: Remote | None = None,
) -> int:
    """Mount the union of ``layers`` (bottom first), blobs in the store at ``store``.

    Layers ``remote`` names are read through the cache daemon, not from the
    store; the daemon is started beside the mount process when none answers
    (BackendError when it does not come up).

    ``mountpoint`` exists. Read-only, or with ``upper`` (and ``work``, both
    existing empty directories on one filesystem) copy-on-write: the writes
    go to ``upper`` in overlayfs' format (see ``lazyfs.fs.upper``). With
    ``debug`` the mount process logs every request it serves to ``log_path``.

    ``suid`` and ``dev`` (as root; the defaults, as a container's rootfs
    needs) honour the image's setuid bits and device nodes; false, the
    mount is ``nosuid``/``nodev``, as a person's look inside an image must
    be where other users can reach it (see ``lazyfs.fs.mount_options``).

    Returns the mount process's pid.  Raises what indexing raised for a
    layer it refuses (BadImage, UnsafeLayer; one that unpacks past
    ``limits`` too) or cannot find in the store (NotFound), BackendError
    when the mount does not come up within ``timeout`` of the layers being
    indexed (the reason from the mount process's answer or log).
    """
    # Absolute, as they are read from the mount process's command line (by ``unmount``,
    # GC and ``ps``): it serves from ``/``, and its caller may be anywhere.
    mountpoint, store = mountpoint.absolute(), store.absolute()
    upper, work = (None if path is None else path.absolute() for path in (upper, work))
    argv = ["--mountpoint", str(mountpoint), "--store", str(store)]
    origins = {} if remote is None else remote.origins
    daemon: DaemonSpec | None = None
    trace: str | None = None  # the key of a trace to replay, begun from here
    if remote is not None and any(layer.digest in origins for layer in layers):
        daemon = remote.daemon
        argv += ["--cache-dir", str(remote.daemon.cache_dir)]
        if remote.trace is not None:
            from lazyfs.fs.mount_ahead import has_trace  # loaded by lazy mounts only

            argv += ["--trace", remote.trace]
            if has_trace(daemon.cache_dir, store, remote.trace):
                trace = remote.trace  # its replay begun from here (``ask_ahead``)
                argv.append("--trace-sent")
        argv += [f"--executable={path}" for path in remote.executable]  # never an option
    for layer in layers:
        argv += ["--layer", layer_arg(layer, origins.get(layer.digest))]
    if limits is not None:
        from providers.layer_limits import LayerLimits  # loaded already: ``limits`` is one

        # Only limits other than the defaults: those need the tar parsers
        # loaded in the mount process, which needs them only to build an index.
        if limits != LayerLimits():
            argv += ["--max-layer-size", str(limits.max_size)]
            argv += ["--max-layer-ratio", str(limits.max_ratio)]
    if upper is not None:
        if work is None:
            raise BackendError("a writable mount needs a work directory beside its upper")
        argv += ["--upper", str(upper), "--work", str(work)]
    if debug:
        argv.append("--debug")
    # mount_main mounts nosuid,nodev: only what is asked for here opens them.
    if suid:
        argv.append("--suid")
    if dev:
        argv.append("--dev")
    # The daemon comes up while the mount process starts, not before: the mount
    # process waits for it at its first miss, and both take a while to load.
    starting = None
    read_end = write_end = -1
    try:
        if daemon is not None:
            starting = start_daemon(daemon)
        read_end, write_end = os.pipe()
        # Not inheritable: only the mount process may hold the write end (see
        # ``_start``); a mount server spawned meanwhile would keep it for hours,
        # and the EOF that tells a failed mount would never come.
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # A mount of remote layers starts no mount server: its imports would
            # compete for the CPU with the daemon's and this mount's start.
            pid = _start(argv, store, ready_fd=write_end, log_fd=log_fd, start_server=not origins)
        finally:
            os.close(log_fd)
        os.close(write_end)
        write_end = -1
        try:
            if starting is not None:
                starting.wait()  # BackendError when it does not come up
            if remote is not None and daemon is not None:  # while the mount process loads
                from lazyfs.fs.mount_ahead import ask_ahead  # loaded by lazy mounts only

                ask_ahead(daemon.cache_dir, store, layers, origins, remote.executable, trace)
            answer = read_answer(read_end, timeout)
        except BaseException:
            # Interrupted (Ctrl-C while a big layer is indexed): it must not mount later.
            _abandon(pid, mountpoint, timeout)
            raise
    finally:
        # What a provision held for ``ask_published_program``, if it was not asked; nothing
        # is held where that module was never loaded. Imported, not looked up: the thread
        # of ``load_ahead_code`` may be importing it; and if that import failed, nothing
        # is held either.
        if "lazyfs.index.published" in sys.modules:
            with contextlib.suppress(ImportError):
                from lazyfs.index.published import forget_kept

                forget_kept()
        if starting is not None:
            starting.release()  # a daemon start ends with it, or the lock stays held
        if read_end >= 0:
            os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if answer == READY:
        return pid
    # Whatever it did, it must not stay: a half-made mount goes with it.
    _abandon(pid, mountpoint, timeout)
    if answer.startswith(REFUSED):
        error = refused_error(answer[len(REFUSED) :])
        # An entry of a layer read through a published index: the next start reads the
        # layer whole (``set_aside``). Any other refusal is the layer's own.
        bad = getattr(error, "layer", None) if isinstance(error, BadEntry) else None
        named = [x for x in layers if x.annotation(INDEX_BLOB_ANNOTATION) and x.digest == bad]
        if named:
            from lazyfs.index.published import set_aside  # loaded by lazy mounts only

            with contextlib.suppress(OSError):  # the refusal is what the caller must hear
                set_aside(store / "layers", named)
        raise error
    raise BackendError(f"mounting {mountpoint} failed: {failure(answer, log_path)}")


def _start(
    args: list[str], store: Path, *, ready_fd: int, log_fd: int, start_server: bool = True
) -> int:
    """Start the mount process of ``args``: forked by the mount server if one runs, else exec'd.

    ``LAZYFS_MOUNT_SERVER`` (``lazyfs.fs.mount_server_client``) forces either
    way; else a server is started for the next mounts when none runs, unless
    not ``start_server``.
    """
    use_server = server_client.wanted()
    if use_server is not False:
        try:
            directory = server_client.server_dir(store)
            # Unless the server is required, the first mount of a store does
            # not wait for the server it starts: it is exec'd meanwhile.
            wait = use_server is True
            return server_client.start_mount(
                directory,
                args,
                ready_fd=ready_fd,
                log_fd=log_fd,
                wait=wait,
                start=start_server or use_server is True,
            )
        except server_client.Unreachable as why:
            if use_server:
                raise BackendError(f"the mount server cannot start this mount: {why}") from None
            os.write(log_fd, f"starting the mount process itself: {why}\n".encode())
    # posix_spawn, not subprocess: the caller forgets this child on purpose,
    # and Popen would warn about that when collected.
    return os.posix_spawn(
        sys.executable,
        # -P: the caller's working directory is not on the mount process's import path.
        [sys.executable, "-P", "-m", MOUNT_MODULE, *args, "--ready-fd", str(ready_fd)],
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
            # dup2 onto itself clears close-on-exec in this child only (POSIX).
            (os.POSIX_SPAWN_DUP2, ready_fd, ready_fd),
        ],
        setsid=True,  # detached: no signal of the caller's terminal reaches it
        setsigdef=SPAWN_DEFAULTS,
    )


def load_ahead_code() -> None:
    """Import what ``mount`` of remote layers loads only then: the asks ahead
    (``lazyfs.fs.mount_ahead``) and, for layers read through published indexes, the
    program's (``lazyfs.fs.predict_published``). Some 25 ms that a caller which will mount
    lazily spends better while it waits on a registry. Blocking; never raises."""
    try:
        import lazyfs.fs.mount_ahead
        import lazyfs.fs.predict_published  # noqa: F401
    except Exception as error:  # a broken install: the mount says so when it imports them
        log.debug("loading the lazy mount's code ahead failed: %s", error)


def mount_recorded(
    record: Path,
    layers: Sequence[Layer],
    mountpoint: Path,
    *,
    store: Path,
    writable: bool,
    debug: bool = False,
    suid: bool = True,
    dev: bool = True,
    limits: LayerLimits | None = None,
    remote: Remote | None = None,
) -> int:
    """``mount``, keeping the mount's state in ``record``, an existing empty directory.

    ``record`` gets ``mount.log``, ``pid`` once the mount is up, and with
    ``writable`` the ``upper`` and ``work`` directories. It is closed to
    other users (``0700``): the upper gets copies of the image's setuid
    files. The caller removes ``record`` when this fails and after ``unmount``.
    """
    if writable and os.geteuid() != 0:
        raise UsageError("a writable fuse mount needs root: its upper keeps the image's owners")
    private_dir(record)
    upper = work = None
    if writable:
        upper, work = record / "upper", record / "work"
        upper.mkdir(mode=0o755)
        work.mkdir(mode=0o700)
    pid = mount(
        layers,
        mountpoint,
        store=store,
        log_path=record / "mount.log",
        upper=upper,
        work=work,
        debug=debug,
        suid=suid,
        dev=dev,
        limits=limits,
        remote=remote,
    )
    note_pid(record, mountpoint, pid)
    return pid


def recorded_pid(record: Path) -> int | None:
    """The mount process ``mount_recorded`` noted in ``record``, if any."""
    try:
        return int((record / "pid").read_text())
    except (OSError, ValueError):
        return None


def _abandon(pid: int, mountpoint: Path, timeout: float) -> None:
    """Kill a mount process that is not to serve, and take down whatever it mounted."""
    signal_pid(pid, signal.SIGKILL)
    wait_ended(pid, timeout)
    fusermount_unmount(mountpoint)


def open_complete(cache_dir: Path, digest: Digest) -> BinaryIO | None:
    """Blob ``digest`` from the cache's chunk files, when the daemon found it whole and verified.

    None otherwise. Not verified here: the reader checks it (``Store.ingest``);
    see ``lazyfs.cache.blobstate``. Loaded only when called: mounting needs it not.
    """
    from lazyfs.cache.blobstate import open_complete as from_cache

    return from_cache(cache_dir, digest)


def index_stored(store: Store, digest: Digest, *, hold_toc: bool = False) -> None:
    """Build and keep the index of the stored layer ``digest`` unless it has one.

    What a mount's first start does (``lazyfs.index.stored.ensure_index``):
    done ahead, a start only reads it. With ``hold_toc`` (a layer adopted
    after remote reads), the eStargz index its own TOC gave is taken once it
    is held to the blob's tar (``lazyfs.index.estargz_agree``: the blob
    inflated once, not for a start). BadImage or UnsafeLayer as there,
    OSError when the store cannot be written. Loaded only when called.
    """
    from lazyfs.index.stored import ensure_index

    ensure_index(store.layers, store.tmp, digest, store.blob_path(digest),
                 entries=False, limits=store.limits, own_toc=hold_toc)  # fmt: skip
