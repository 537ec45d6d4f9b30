"""Letting go of the cached chunks of removed layers: ``forget``, for ``images rm``,
``prune`` and image GC.

A layer removed from the store may have left chunks of its blob in the cache
directory (a lazy mount read them, a background fetch brought the rest). No
image on the machine names it any more, and whoever removed it wants the room
back now, as ``docker rmi`` gives it, not when eviction comes to them.

``forget`` asks the daemon of the cache directory when one answers (a
``ForgetRequest``: it lets go of pieces too, and stops a fetch of the blob
under way: ``lazyfs.cache.daemon``). When none answers, it works on the
directory itself, as the daemon would, holding the two locks a daemon's
start takes, each without waiting: ``start.lock`` (held by a command starting
one, ``lazyfs.cache.spawn``) and ``lock`` (the daemon's own,
``DiskCache.open``). Either held means a daemon is on its way (or one does
not answer): the chunks are left for its eviction, rather than have its start
fail on a lock this holds, or wait for it. Held, they keep a start out for
the few unlinks this makes. Either way a chunk a mount is reading right now
(its shared flock) stays, and a complete verdict on the blob goes (it would
list a blob that is no longer here); a quarantine stays.

Never raises for the cache: the layers are gone whatever it holds.
``Forgotten.left`` says why chunks were left. Blocking.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lazyfs.cache.blobstate import forget_complete
from lazyfs.cache.connection import Connection, failure_error
from lazyfs.cache.forget_values import MAX_FORGET, Forget, ForgetOk
from lazyfs.cache.framing import ProtocolError
from lazyfs.cache.layout import Layout, socket_path
from lazyfs.cache.messages import Failure
from lazyfs.cache.spawn import START_LOCK
from providers.digest import Digest, algorithm, hex_part
from providers.errors import LazyfsError
from providers.fslock import try_exclusive_lock

# How long the daemon may take over one request's blobs (unlinks, some
# thousands of chunks: well under a second). Past it, it counts as not
# answering: the command that removed the layers should not hang on it.
ANSWER_TIMEOUT = 15.0


@dataclass(frozen=True)
class Forgotten:
    """What ``forget`` let go of: chunks (and pieces) and bytes, as ``du`` counts them; and
    why some were left for eviction, if any were."""

    chunks: int = 0
    freed: int = 0
    left: str | None = None

    def __add__(self, other: Forgotten) -> Forgotten:
        return Forgotten(self.chunks + other.chunks, self.freed + other.freed,
                         self.left or other.left)  # fmt: skip


def forget(cache_dir: Path, digests: Sequence[Digest]) -> Forgotten:
    """Let go of the cached chunks of blobs ``digests`` (see the module's doc)."""
    try:
        if not digests or not cache_dir.is_dir():
            return Forgotten()  # no cache: nothing of them in it, and nothing to make
    except OSError as problem:  # a directory on the way this user may not enter
        return Forgotten(left=f"the cache at {cache_dir}: {problem.strerror or problem}")
    batches = [tuple(digests[at : at + MAX_FORGET]) for at in range(0, len(digests), MAX_FORGET)]
    done = Forgotten()
    connection: Connection | None
    try:
        connection = Connection(socket_path(cache_dir), ANSWER_TIMEOUT)
    except OSError:
        connection = None  # no daemon answers: the directory itself
    try:
        while connection is not None and batches:
            request = Forget(len(batches), batches[0])
            try:
                answer = connection.call(request)
            except (OSError, ProtocolError):
                break  # gone (an idle exit) or hung: the rest on disk, if it is let go
            if isinstance(answer, Failure):
                error = failure_error(request, answer)
                return done + Forgotten(left=f"the cache daemon did not take them: {error}")
            if not isinstance(answer, ForgetOk):
                what = type(answer).__name__
                return done + Forgotten(left=f"the cache daemon answered a forget with {what}")
            done += Forgotten(answer.chunks, answer.freed)
            batches.pop(0)
    finally:
        if connection is not None:
            connection.close()
    rest = [digest for batch in batches for digest in batch]
    return done + _on_disk(cache_dir, rest) if rest else done


def _on_disk(cache_dir: Path, digests: Sequence[Digest]) -> Forgotten:
    """``forget`` with no daemon answering: the chunk files, under the daemon's locks."""
    layout = Layout(cache_dir)
    try:
        with contextlib.ExitStack() as held:
            if not held.enter_context(try_exclusive_lock(cache_dir / START_LOCK)):
                return Forgotten(left="a cache daemon is starting")
            if not held.enter_context(try_exclusive_lock(layout.lock_path)):
                return Forgotten(left="a cache daemon holds the cache but does not answer")
            found = Forgotten()
            # Every chunk size's directory: a daemon of another size clears the others
            # only when it starts.
            for chunks_dir in sorted(cache_dir.glob("chunks-*")):
                for digest in digests:
                    found += _unlink_blob(chunks_dir / algorithm(digest) / hex_part(digest))
            for digest in digests:
                forget_complete(cache_dir, digest)
            return found
    except (OSError, LazyfsError) as error:
        return Forgotten(left=f"the cache at {cache_dir}: {error}")


def _unlink_blob(blob_dir: Path) -> Forgotten:
    """Unlink the chunk files of one blob's directory but those a mount reads right now."""
    try:
        names = os.listdir(blob_dir)
    except FileNotFoundError:
        return Forgotten()
    except OSError as error:
        return Forgotten(left=f"{blob_dir}: {error.strerror or error}")
    chunks = freed = 0
    left = None
    for name in names:
        path = blob_dir / name
        try:
            # Not a FIFO's open, which would wait for a writer (the store held meanwhile).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as error:  # not a chunk's file (a link, a directory): left as it is
            left = f"{path}: {error.strerror or error}"
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a mount is reading it: eviction takes it later
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                left = f"{path}: not a chunk's file"
                continue
            blocks = status.st_blocks * 512
            os.unlink(path)
        except OSError as error:
            left = f"{path}: {error.strerror or error}"
            continue
        finally:
            os.close(fd)
        chunks, freed = chunks + 1, freed + blocks
    with contextlib.suppress(OSError):  # not empty: a chunk being read
        os.rmdir(blob_dir)
    return Forgotten(chunks, freed, left)
