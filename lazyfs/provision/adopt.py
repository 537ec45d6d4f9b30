"""Making local, after a start, the layers it left remote: off the start's path.

A lazy start mounts the layers it finds remote, in the cache or not yet,
and reads them through the cache daemon. Copying one into the store
(``Store.ingest``: the blob inflated and hashed, seconds for a big layer)
would hold a start that long. So once the mount is up, ``adopt_later``
starts a detached process, ``python -m lazyfs.provision.adopt --follow``,
that copies each remote layer of the image with ``adopt_complete`` (blob
digest and diff_id checked, as every ingest is) once the daemon's
background fetch has it whole, and exits when no layer of the image is
being fetched any more; the next start finds them local. ``hold_stored``
is what the start itself still checks: a layer already in the store is
held to this image's diff_id.

The process:

- runs in a session of its own, stdin from /dev/null, its output appended
  to ``adopt.log`` beside the provisioner's records, so nothing of it
  reaches the user's terminal and no signal of that terminal reaches it;
- runs at the least CPU share its autogroup can have, set by the parent
  as soon as it is spawned, so the container's start has the CPU first;
- adopts an image once at a time: a second process for the same image
  (two provisions at once) finds the image's adopt lock held and exits,
  and a start does not spawn one while it is held (``adopting``); two
  images sharing a layer copy it once (``Store.ingest``'s blob lock);
- looks once a second (``POLL_SECONDS``) while the daemon says it fetches
  one of the image's layers in the background, and stops when none is, or
  no daemon answers (a later start spawns another);
- holds the store's usage lock shared while it looks and copies, never
  while it waits (image GC waits only for a copy), and adopts only an
  image whose record is still in the store, with the manifest digest it
  was started for (GC may have removed it, a pull may have moved its tag);
- logs a layer it cannot copy (a chunk evicted meanwhile, bytes that do
  not verify, a diff_id the cache found other than this image says) and
  leaves it remote (``adopt_complete``), and logs any other failure in one
  line; exit status 0 when it ran to the end, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import BinaryIO

from lazyfs.fs.mount import open_complete
from lazyfs.fs.mount_peers import reap_later
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import LazyfsError, NotFound
from providers.manifest import ImageManifest, Layer

LOG_NAME = "adopt.log"
POLL_SECONDS = 1.0
# The autogroup nice value of the process: the least CPU share there is.
NICE = 19
log = logging.getLogger("lazyfs.adopt")


def adopt_lock(store_root: Path, reference: str, platform: str) -> Path:
    """The lock held while image ``reference`` is adopted into the store at ``store_root``."""
    key = hashlib.sha256(f"{reference}\n{platform}".encode()).hexdigest()
    return store_root / "locks" / f"adopt-{key}.lock"


def adopting(store_root: Path, reference: str, platform: str) -> bool:
    """Whether a process adopts image ``reference`` now (its adopt lock is held)."""
    from providers.fslock import try_exclusive_lock

    try:
        with try_exclusive_lock(adopt_lock(store_root, reference, platform)) as free:
            return not free
    except OSError:
        return False  # the spawned process says why, in its log


def adopt_later(
    store_root: Path,
    cache_dir: Path,
    manifest: ImageManifest,
    log_dir: Path,
    limits: tuple[int, int] | None = None,
) -> int:
    """Start the process that adopts ``manifest``'s remote layers as they complete; its pid.

    ``limits`` (max layer size, max ratio) when not the defaults. Reaped by
    a thread here if it ends first; otherwise it outlives this process.
    Raises OSError when it cannot be started.
    """
    argv = [sys.executable, "-P", "-m", "lazyfs.provision.adopt",
            "--store", str(store_root), "--cache-dir", str(cache_dir),
            "--reference", manifest.reference, "--platform", manifest.platform,
            "--digest", manifest.digest, "--follow"]  # fmt: skip
    if limits is not None:
        argv += ["--max-layer-size", str(limits[0]), "--max-layer-ratio", str(limits[1])]
    log_fd = os.open(
        log_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
    )
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,  # Ctrl-C at the terminal of `lazyfs run` does not end it
        )
    finally:
        os.close(log_fd)
    # Its own autogroup since setsid: lowered before it has imported much.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(NICE))
    reap_later(pid)  # a `lazyfs run` lives as long as its container: no zombie meanwhile
    return pid


def _yield_cpu() -> None:
    """Give this process's autogroup the least CPU share it can set; best effort.

    It was made by setsid, so it holds this process alone: the container
    starting beside it (another session) keeps its share.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(NICE))
    with contextlib.suppress(OSError):
        os.nice(NICE)


def adopt_image(
    store_root: Path,
    cache_dir: Path,
    reference: str,
    platform: str,
    digest: str,
    limits: tuple[int, int] | None = None,
    *,
    follow: bool = False,
    poll: float = POLL_SECONDS,
) -> list[str]:
    """Adopt the complete layers of the stored image ``reference`` if it is still ``digest``.

    With ``follow``, also those completed later, looking every ``poll``
    seconds while the cache daemon fetches one of its layers. Returns the
    layers copied; none when another process adopts the image now, or its
    record is gone or names another manifest. Blocking.
    """
    from providers.fslock import try_exclusive_lock

    layer_limits = None
    if limits is not None:
        from providers.layer_limits import LayerLimits

        layer_limits = LayerLimits(max_size=limits[0], max_ratio=limits[1])
    store = Store(store_root, layer_limits)
    adopted: list[str] = []
    with try_exclusive_lock(adopt_lock(store_root, reference, platform)) as free:
        if not free:
            log.info("%s: adopted by another process now", reference)
            return []
        log.info("%s: adopting its layers from the cache", reference)
        while True:
            # Asked before the copy: a layer that completes meanwhile is copied on the next pass.
            fetching = _fetching(cache_dir) if follow else set()
            remote = _adopt_pass(store, cache_dir, reference, platform, digest, adopted)
            if not remote & fetching:
                break  # nothing of it on its way: the next start spawns another if need be
            time.sleep(poll)
    log.info("%s: %d layers adopted from the cache: %s", reference, len(adopted), adopted)
    return adopted


def _adopt_pass(
    store: Store, cache_dir: Path, reference: str, platform: str, digest: str, adopted: list[str]
) -> set[Digest]:
    """Copy the image's complete layers (appended to ``adopted``); the layers left remote."""
    from lazyfs.store.usage_lock import in_use

    # GC waits meanwhile: it removes no layer of the image while it is copied in.
    with in_use(store.root):
        try:
            manifest = ImageManifest.from_json(
                json.loads(store.image_record(reference, platform).read_bytes())
            )
        except FileNotFoundError:
            log.info("%s: no longer in the store, nothing more adopted", reference)
            return set()
        if manifest.digest != digest:
            log.info("%s: now names %s, not %s: not adopted", reference, manifest.digest, digest)
            return set()
        adopted += adopt_complete(store, cache_dir, manifest)
        return {layer.digest for layer in manifest.layers if not store.has_blob(layer.digest)}


def _fetching(cache_dir: Path) -> set[Digest]:
    """The blobs the daemon of ``cache_dir`` fetches in the background now; none without one."""
    from lazyfs.cache.connection import status  # loads the protocol's protobuf code
    from lazyfs.cache.framing import ProtocolError
    from lazyfs.cache.values import BlobKind

    try:
        found = status(cache_dir)
    except (OSError, ProtocolError):
        return set()
    return {blob.digest for blob in found.blobs if blob.kind is BlobKind.FETCHING}


def adopt_complete(store: Store, cache_dir: Path, manifest: ImageManifest) -> list[Digest]:
    """Copy into ``store`` the layers of ``manifest`` the cache holds whole and verified.

    Returns the layers copied. A copy that fails (a chunk evicted meanwhile,
    bytes that do not verify) is logged, and the layer stays remote. A layer
    the store already has is held to this image's diff_id: DigestMismatch
    when it is not. Blocking.
    """
    adopted = []
    for layer in manifest.layers:
        if hold_stored(store, layer):
            continue
        if not _complete_as_said(cache_dir, layer):
            continue
        stream = open_complete(cache_dir, layer.digest)
        if stream is None:
            continue
        stream.close()
        try:
            store.ingest(layer, partial(_reopen, cache_dir, layer))
        except LazyfsError as error:
            log.warning("layer %s stays remote: copying it from the cache: %s", layer.digest, error)
            continue
        adopted.append(layer.digest)
    return adopted


def _complete_as_said(cache_dir: Path, layer: Layer) -> bool:
    """Whether the daemon found ``layer`` whole with the size and diff_id the image says.

    A verdict read. One it found other is logged and left remote: its
    copy would fail the same check, after inflating the whole blob.
    """
    from lazyfs.cache.blobstate import COMPLETE, read_verdict

    verdict = read_verdict(cache_dir, layer.digest)
    if verdict is None or verdict.state != COMPLETE:
        return False
    if verdict.size != layer.size or layer.diff_id not in (None, verdict.diff_id):
        log.warning(
            "layer %s stays remote: the cache found %d bytes and diff_id %s, this image says"
            " %d and %s", layer.digest, verdict.size, verdict.diff_id, layer.size, layer.diff_id,
        )  # fmt: skip
        return False
    return True


def hold_stored(store: Store, layer: Layer) -> bool:
    """Whether ``store`` has ``layer``'s blob; DigestMismatch if not with ``layer``'s diff_id."""
    if not store.has_blob(layer.digest):
        return False
    # Another image may have brought it: this one is held to its own
    # diff_id all the same (DigestMismatch), as a pull of it would be.
    store.ingest(layer, partial(_gone, layer))
    return True


def _gone(layer: Layer) -> BinaryIO:
    raise NotFound(f"layer {layer.digest} left the store", digest=layer.digest)


def _reopen(cache_dir: Path, layer: Layer) -> BinaryIO:
    stream = open_complete(cache_dir, layer.digest)
    if stream is None:
        raise NotFound(f"layer {layer.digest} left the cache", digest=layer.digest)
    return stream


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lazyfs.provision.adopt")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--platform", default="")
    parser.add_argument("--digest", required=True)
    parser.add_argument("--max-layer-size", type=int)
    parser.add_argument("--max-layer-ratio", type=int)
    parser.add_argument("--follow", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s adopt[{os.getpid()}] %(levelname)s %(message)s"
    )
    limits = None
    if args.max_layer_size is not None and args.max_layer_ratio is not None:
        limits = (args.max_layer_size, args.max_layer_ratio)
    try:
        adopt_image(
            args.store, args.cache_dir, args.reference, args.platform, args.digest, limits,
            follow=args.follow,
        )  # fmt: skip
    except Exception as error:  # one line in the log; nobody's terminal sees it
        log.error("%s: adopting failed: %s: %s", args.reference, type(error).__name__, error)
        return 1
    return 0


if __name__ == "__main__":
    _yield_cpu()  # here, not in main: a caller of main in its own process keeps its share
    sys.exit(main())
