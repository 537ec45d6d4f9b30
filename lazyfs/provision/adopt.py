"""Making local, after a start, the layers it left remote: off the start's path.

A lazy start mounts the layers it finds remote, in the cache or not yet,
and reads them through the cache daemon. Copying one into the store
(``Store.ingest``: the blob inflated and hashed, seconds for a big layer)
would hold a start that long. So once the mount is up, ``adopt_later``
starts a detached process, ``python -m lazyfs.provision.adopt --follow``,
that copies each remote layer of the image with ``adopt_complete`` (blob
digest and diff_id checked, as every ingest is) once the daemon's
background fetch has it whole, and exits when no layer of the image is
being fetched any more; the next start finds them local. An eStargz layer
copied so keeps the index its own TOC gave while it was remote, once that
TOC is held to the blob's tar (``index_stored``: the blob inflated once,
after the copy, outside the store's GC lock), so that start only reads
it; a TOC that differs gives way to the tar's index. ``hold_stored``
is what the start itself still checks: a layer already in the store is
held to this image's diff_id.

The process:

- runs in a session of its own, stdin from /dev/null, its output appended
  to ``adopt.log`` beside the provisioner's records, so nothing of it
  reaches the user's terminal and no signal of that terminal reaches it;
- runs at the least CPU share its autogroup can have (set by the parent
  as soon as it is spawned, and by itself; best effort), so the
  container's start has the CPU first;
- adopts an image once at a time: the start takes the image's adopt lock
  and hands it to the process it spawns, so a second start (two
  provisions at once) finds it held and spawns none; two images sharing a
  layer copy it once (``Store.ingest``'s blob lock);
- looks at the cache's verdicts once a second (``POLL_SECONDS``), and asks
  the daemon every ``STATUS_SECONDS``, first after that long (it serves the
  start meanwhile), whether it still fetches one of the image's layers in
  the background: it stops once none is (asked again before it ends), no
  daemon answers, the image's record is gone, or no byte more of them
  arrived for ``PATIENCE_SECONDS`` while none waits to go on by itself (the
  daemon bounds those waits: a registry out of reach, a full disk; a later
  start spawns another);
- holds the store's usage lock shared while it looks, copies and indexes,
  never while it waits (image GC waits only for that), and adopts the layers
  of the image's record as it is then (GC may have removed it: then it
  stops; a pull may have moved its tag: every copy is verified anyway);
- logs a layer it cannot copy (a chunk evicted meanwhile, bytes that do
  not verify, a size or diff_id the cache found other than this image
  says) and leaves it remote, trying again only when the daemon says the
  blob became complete since it last asked; logs any other failure in one
  line; exit status 0 when it ran to the end, else 1.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before anything loads trio: its import would run ``ldconfig -p`` (see there).
    from providers.shared_libs import install

    install()

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lazyfs.fs.mount import index_stored, open_complete
from lazyfs.provision.adopt_spawn import NICE, adopt_lock
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import DigestMismatch, LazyfsError, NotFound
from providers.manifest import TOC_DIGEST_ANNOTATION, ImageManifest, Layer

if TYPE_CHECKING:
    from lazyfs.cache.values import BlobInfo

POLL_SECONDS = 1.0
STATUS_SECONDS = 10.0
PATIENCE_SECONDS = 600.0
log = logging.getLogger("lazyfs.adopt")


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
    limits: tuple[int, int] | None = None,
    *,
    follow: bool = False,
    locked: bool = False,
    poll: float = POLL_SECONDS,
    status_every: float = STATUS_SECONDS,
    patience: float = PATIENCE_SECONDS,
) -> list[str]:
    """Adopt the complete layers of the stored image ``reference``; those copied.

    With ``follow``, also those completed later, while the cache daemon
    fetches one of them (see the module docstring for ``poll``,
    ``status_every`` and ``patience``). ``locked``: the image's adopt lock
    is held already (handed over by ``adopt_later``); else it is taken, and
    nothing is adopted when another process holds it. Blocking.
    """
    from providers.fslock import try_exclusive_lock

    layer_limits = None
    if limits is not None:
        from providers.layer_limits import LayerLimits

        layer_limits = LayerLimits(max_size=limits[0], max_ratio=limits[1])
    store = Store(store_root, layer_limits)
    with contextlib.ExitStack() as stack:
        lock = adopt_lock(store_root, reference, platform)
        if not locked and not stack.enter_context(try_exclusive_lock(lock)):
            log.info("%s: adopted by another process now", reference)
            return []
        log.info("%s: adopting its layers from the cache", reference)
        adopted = _Adoption(store, cache_dir, reference, platform).run(
            follow, poll, status_every, patience
        )
    log.info("%s: %d layers adopted from the cache: %s", reference, len(adopted), adopted)
    return adopted


class _Adoption:
    """The passes over one image's remote layers, and what they learnt."""

    def __init__(self, store: Store, cache_dir: Path, reference: str, platform: str) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.reference = reference
        self.platform = platform
        self.adopted: list[str] = []
        self.skipped: set[Digest] = set()  # failed or refused once: until complete again

    def run(self, follow: bool, poll: float, status_every: float, patience: float) -> list[str]:
        # The protocol's protobuf code: not at a start.
        from lazyfs.cache.values import WAITING, BlobKind

        # The daemon is first asked after ``status_every``: it serves the start then,
        # and the start's mount has just asked it for the image's remote layers.
        asked = time.monotonic()
        known: dict[Digest, BlobInfo] | None = None  # None: not asked yet
        seen: dict[Digest, int] = {}  # the cached bytes of each layer waited for
        progressed = asked
        while True:
            now = time.monotonic()
            # A daemon gone (stopped, killed) is asked at once: it ends the wait.
            fresh = follow and (now - asked >= status_every or not _daemon_alive(self.cache_dir))
            if fresh:
                # Asked before the pass: a blob it says is no longer fetched has
                # its verdict written already, so this pass copies it.
                known, asked = self.ask(known), now
            remote = self.adopt_pass()
            if not follow or not remote:
                return self.adopted
            if known is not None:
                waited = {
                    d: info.cached_bytes
                    for d, info in known.items()
                    if d in remote and info.kind is BlobKind.FETCHING
                }
                if not waited:
                    if fresh:
                        return self.adopted
                    asked = float("-inf")  # asked again, and one more pass, before it ends
                    continue
                # A blob whose fetch waits to go on by itself (an origin out of reach, no
                # room) is waited for as long as the daemon waits, which it bounds itself.
                biding = any(known[d].reason.startswith(WAITING) for d in waited)
                if biding or any(cached > seen.get(d, -1) for d, cached in waited.items()):
                    progressed = now
                elif now - progressed > patience:
                    log.warning("%s: no byte more of %d layers for %.0f s: they stay remote",
                                self.reference, len(waited), patience)  # fmt: skip
                    return self.adopted
                seen.update(waited)
            time.sleep(poll)

    def ask(self, before: dict[Digest, BlobInfo] | None) -> dict[Digest, BlobInfo]:
        """The daemon's blobs; a skipped layer it now says became complete is tried again."""
        from lazyfs.cache.values import BlobKind

        known = _daemon_blobs(self.cache_dir)
        if before is not None:
            done = BlobKind.COMPLETE
            self.skipped -= {
                d for d, info in known.items()
                if info.kind is done and (d not in before or before[d].kind is not done)
            }  # fmt: skip
        return known

    def adopt_pass(self) -> set[Digest]:
        """Copy the image's complete layers; the layers left remote (none when it is gone)."""
        from lazyfs.store.usage_lock import in_use

        # GC waits meanwhile: it removes no layer of the image while it is copied in.
        with in_use(self.store.root):
            try:
                record = self.store.image_record(self.reference, self.platform).read_bytes()
            except FileNotFoundError:
                log.info("%s: no longer in the store, nothing more adopted", self.reference)
                return set()
            manifest = ImageManifest.from_json(json.loads(record))
            copied = adopt_complete(self.store, self.cache_dir, manifest, self.skipped)
            left = {d.digest for d in manifest.layers if not self.store.has_blob(d.digest)}
        self.adopted += copied
        # Indexed once GC need not wait: holding a TOC to its tar inflates the layer.
        for layer in manifest.layers:
            if layer.digest in copied:
                _index(self.store, layer)
        return left


def _daemon_alive(cache_dir: Path) -> bool:
    """Whether the process ``daemon.pid`` names is a live ``lazyfs daemon``: two small reads."""
    from lazyfs.cache.service import PID_NAME

    try:
        pid = int((cache_dir / PID_NAME).read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"daemon" in args


def _daemon_blobs(cache_dir: Path) -> dict[Digest, BlobInfo]:
    """The blobs the daemon of ``cache_dir`` knows, as it says; none when no daemon answers."""
    from lazyfs.cache.connection import status  # loads the protocol's protobuf code
    from lazyfs.cache.framing import ProtocolError

    try:
        found = status(cache_dir)
    except (OSError, ProtocolError):
        return {}
    return {blob.digest: blob for blob in found.blobs}


def adopt_complete(
    store: Store, cache_dir: Path, manifest: ImageManifest, skip: set[Digest] | None = None
) -> list[Digest]:
    """Copy into ``store`` the layers of ``manifest`` the cache holds whole and verified.

    Returns the layers copied (``_Adoption.adopt_pass`` indexes each eStargz one).
    A copy that fails (a chunk evicted meanwhile,
    bytes that do not verify), a layer the cache found other than the image
    says, and a layer the store has with another diff_id are logged and
    left remote, and added to ``skip``, whose layers are passed over.
    Blocking.
    """
    adopted = []
    skip = set() if skip is None else skip
    for layer in manifest.layers:
        if layer.digest in skip:
            continue
        try:
            if hold_stored(store, layer) or not _complete_as_said(cache_dir, layer):
                continue
            store.ingest(layer, partial(_reopen, cache_dir, layer))
        except LazyfsError as error:
            log.warning("layer %s stays remote: copying it from the cache: %s", layer.digest, error)
            skip.add(layer.digest)
            continue
        adopted.append(layer.digest)
    return adopted


def _index(store: Store, layer: Layer) -> None:
    """Give the adopted eStargz ``layer`` its index now, so the next start only reads it.

    The index its own TOC gave while it was remote, copied and stamped, once
    it is held to the blob's tar (the blob inflated once, at this process's
    CPU share, under the layer's lock: a start that needs the index waits
    for it rather than build one itself); a TOC that differs gives way to
    the tar's index. Only for eStargz: any other layer's index is built from
    the whole blob by the start that needs it. A failure is logged in one
    line: the layer is adopted all the same, its index built by the next
    start, from the tar.
    """
    if layer.annotation(TOC_DIGEST_ANNOTATION) is None:
        return
    try:
        index_stored(store, layer.digest, hold_toc=True)
    except Exception as error:  # the next layers are adopted all the same
        log.warning(
            "layer %s is in the store, its TOC not held to its tar: %s: %s",
            layer.digest, type(error).__name__, error,
        )  # fmt: skip


def _complete_as_said(cache_dir: Path, layer: Layer) -> bool:
    """Whether the daemon found ``layer`` whole with the size and diff_id the image says.

    A verdict read. One it found other raises DigestMismatch: its copy
    would fail the same check, after inflating the whole blob.
    """
    from lazyfs.cache.blobstate import COMPLETE, read_verdict

    verdict = read_verdict(cache_dir, layer.digest)
    if verdict is None or verdict.state != COMPLETE:
        return False
    if verdict.size != layer.size or layer.diff_id not in (None, verdict.diff_id):
        raise DigestMismatch(
            f"layer {layer.digest}: what the cache found whole (size, diff_id)",
            expected=f"{layer.size}, {layer.diff_id}",
            actual=f"{verdict.size}, {verdict.diff_id}",
        )
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


def _check_handed(fd: int, lock: Path) -> None:
    """OSError unless ``fd`` is the lock file ``lock`` (the spawn kept it open here)."""
    held, there = os.fstat(fd), os.stat(lock)
    if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
        raise OSError(f"--lock-fd {fd} is not {lock}: the image's lock was not handed over")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lazyfs.provision.adopt")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--platform", default="")
    parser.add_argument("--max-layer-size", type=int)
    parser.add_argument("--max-layer-ratio", type=int)
    parser.add_argument("--follow", action="store_true")
    parser.add_argument("--lock-fd", type=int, help="the image's adopt lock, held already")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s adopt[{os.getpid()}] %(levelname)s %(message)s"
    )
    limits = None
    if args.max_layer_size is not None and args.max_layer_ratio is not None:
        limits = (args.max_layer_size, args.max_layer_ratio)
    try:
        if args.lock_fd is not None:
            _check_handed(args.lock_fd, adopt_lock(args.store, args.reference, args.platform))
        adopt_image(
            args.store, args.cache_dir, args.reference, args.platform, limits,
            follow=args.follow, locked=args.lock_fd is not None,
        )  # fmt: skip
    except Exception as error:  # one line in the log; nobody's terminal sees it
        log.error("%s: adopting failed: %s: %s", args.reference, type(error).__name__, error)
        return 1
    return 0


if __name__ == "__main__":
    _yield_cpu()  # here, not in main: a caller of main in its own process keeps its share
    sys.exit(main())
