"""Prefetch on a first start: the libraries an executable will load, asked for before they are read.

On a start with no learned trace to replay (``lazyfs.blobs.trace_run``;
a mount that replays one predicts nothing besides) every miss is found only
when the program reaches it, one after another: a round trip and a
transfer each. Many of them can be known earlier. When a
mount reads a remote file from its start and the bytes begin with the ELF
magic (``Predictor.head_read``, hooked into the FUSE read path by
``attach``), its program headers and dynamic section are parsed
(``lazyfs.fs.elf_deps``) and what the dynamic loader will open is found in
the mount's lower tree as ``ld.so`` finds it: the ``PT_INTERP`` path, and
each ``DT_NEEDED`` name in the ``DT_RUNPATH`` (else ``DT_RPATH``)
directories, then the standard ones (``STANDARD_DIRS``). Those files, and
the rest of the executable, are read through the mount's own layer reader
in a few worker threads, so their chunks are fetched at once and in
parallel, verified, and kept for the reads that follow; each library is
parsed in turn when its head arrives, to ``MAX_DEPTH``. The program a
container is about to run is known before it runs (``start``: where the
image's PATH may have it, from the provisioner): it is read ahead so at
mount, as if its head had been read.

Image content is hostile, so everything is bounded: the parse (see there),
path resolution (``resolve``: symlinks followed inside the tree only, an
absolute target from the tree's root, ``..`` stopping at it, at most
``MAX_LINKS`` links and ``MAX_STEPS`` steps), the files predicted per mount
(``MAX_FILES``) and the bytes read ahead (``MAX_FILE_BYTES`` of each,
``MAX_BYTES`` in all). Names with a ``/``, ``$ORIGIN`` directories and
sparse files are left alone. A prediction is only a hint: nothing it reads
is served unverified, and a failure is logged and left to the reads. Nor
is it recorded in the prefetch trace this start may keep
(``lazyfs.blobs.trace_run.unrecorded``): the program's own reads are, as
without it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from lazyfs.blobs.ranges import TarRangeReader
from lazyfs.blobs.trace_run import unrecorded
from lazyfs.fs.elf_deps import ELF_MAGIC, elf_deps
from lazyfs.tree.lower import LowerTree
from lazyfs.tree.merge import ROOT_INO, DataRef, InodeNo
from providers.digest import Digest

log = logging.getLogger(__name__)

# Where ld.so looks after RUNPATH (and ld.so.cache, which names files in these on Debian).
STANDARD_DIRS = (b"/lib/x86_64-linux-gnu", b"/usr/lib/x86_64-linux-gnu", b"/lib", b"/usr/lib")
MAX_LINKS = 40  # as the kernel's path walk
MAX_STEPS = 4096  # path components walked for one resolution, links' included
MAX_TOTAL_STEPS = 50_000  # for all of a mount's resolutions: hostile links repeat per name
MAX_PATH = 4096
MAX_NAME = 255
MAX_DEPTH = 3  # executable -> libraries -> theirs
MAX_FILES = 64
MAX_FILE_BYTES = 16 << 20
MAX_BYTES = 64 << 20
PIECE = 1 << 20  # a read ahead's unit: pieces go out in parallel
WORKERS = 4  # reads ahead at once: the daemon's other upstream requests stay the program's

_PARSE, _WARM = 0, 1  # queue priorities: parsing finds more to fetch


class _Node(Protocol):
    @property
    def ino(self) -> InodeNo: ...

    @property
    def mode(self) -> int: ...

    @property
    def target(self) -> bytes: ...


class Walkable(Protocol):
    """What ``resolve`` walks: a mount's lower tree, or the union of its layers' TOCs."""

    def inode(self, ino: int) -> _Node | None: ...

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None: ...

    def parent(self, directory: int) -> InodeNo: ...


def resolve(
    tree: Walkable, path: bytes, spend: Callable[[], bool] = lambda: True
) -> InodeNo | None:
    """The inode ``path`` names in ``tree`` (from its root), symlinks followed inside the
    tree; None when a component is missing or no directory, or past the bounds.

    ``spend()`` is asked before each step, and False ends the walk: a budget
    shared by many walks (the default spends nothing).
    """
    if len(path) > MAX_PATH:
        return None
    todo = list(reversed(path.split(b"/")))
    current = ROOT_INO
    links = steps = 0
    while todo:
        steps += 1
        if steps > MAX_STEPS or not spend():
            return None
        name = todo.pop()
        if name in (b"", b"."):
            continue
        directory = tree.inode(current)
        if directory is None or not stat.S_ISDIR(directory.mode):
            return None
        if name == b"..":
            current = tree.parent(current)  # the root is its own parent
            continue
        child = tree.lookup(current, name)
        found = tree.inode(child) if child is not None else None
        if found is None:
            return None
        if stat.S_ISLNK(found.mode):
            links += 1
            if links > MAX_LINKS or len(found.target) > MAX_PATH:
                return None
            if found.target.startswith(b"/"):
                current = ROOT_INO
            todo.extend(reversed(found.target.split(b"/")))
            continue
        current = found.ino
    return current


def find_library(
    tree: Walkable,
    name: bytes,
    search: Collection[bytes] = (),
    spend: Callable[[], bool] = lambda: True,
    is_file: Callable[[InodeNo], bool] | None = None,
) -> InodeNo | None:
    """The regular file ld.so would load for DT_NEEDED ``name``: in ``search`` (RUNPATH),
    then ``STANDARD_DIRS``. None for a name that is a path, or found nowhere; ``spend``
    as ``resolve`` has it; ``is_file`` says whether a found inode is a file with bytes
    (default: a regular file)."""
    if not name or len(name) > MAX_NAME or b"/" in name or name in (b".", b".."):
        return None
    if is_file is None:
        is_file = functools.partial(_is_regular, tree)
    # $ORIGIN and the like need the file's own path, which a read does not give.
    usable = [d for d in search if d.startswith(b"/") and b"$" not in d]
    for directory in (*usable, *STANDARD_DIRS):
        found = resolve(tree, directory.rstrip(b"/") + b"/" + name, spend)
        if found is not None and is_file(found):
            return found
    return None


def _is_regular(tree: Walkable, ino: InodeNo) -> bool:
    found = tree.inode(ino)
    return found is not None and stat.S_ISREG(found.mode)


def _regular(tree: LowerTree, ino: InodeNo) -> DataRef | None:
    found = tree.inode(ino)
    if found is None or not stat.S_ISREG(found.mode) or found.data is None:
        return None
    return found.data


class _Reads(Protocol):
    on_head: Callable[[DataRef, bytes], None] | None

    @property
    def source(self) -> TarRangeReader: ...


class _Mounted(Protocol):
    @property
    def tree(self) -> LowerTree: ...

    @property
    def chunks(self) -> _Reads: ...


def attach(ops: _Mounted, remote: Collection[Digest], executable: Sequence[str] = ()) -> Predictor:
    """Predict for the files of layers ``remote`` that ``ops`` (a mount's operations) reads;
    read the first of ``executable`` found, and what it loads, ahead now (``Predictor.start``)."""
    predictor = Predictor(ops.tree, ops.chunks.source, remote)
    ops.chunks.on_head = predictor.head_read
    predictor.start(executable)
    return predictor


class Predictor:
    """What files an ELF file read from its start will have loaded, read ahead (module docstring).

    ``head_read`` is called in the event loop: it only queues. The work is
    done by ``WORKERS`` daemon threads, started on first use, which read
    through ``source`` (blocking, thread-safe, as ``TarRangeReader`` says).
    """

    def __init__(self, tree: LowerTree, source: TarRangeReader, layers: Collection[Digest]) -> None:
        self.tree = tree
        self.source = source
        self.layers = frozenset(layers)
        self._lock = threading.Lock()
        self._seen: set[tuple[Digest, int]] = set()
        self._bytes_left = MAX_BYTES
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], object]]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._started = False
        self.stopped = threading.Event()  # set once nothing more is read ahead
        self._steps = itertools.count()  # taken from by every resolution: MAX_TOTAL_STEPS
        self.predicted: list[DataRef] = []  # in the order they were asked, for the log and tests

    def start(self, candidates: Sequence[str]) -> None:
        """Read ahead the first of ``candidates`` (image paths) that is a file, as if its
        head had been read: the program a container is about to run, known at mount."""
        try:
            for path in candidates[:MAX_FILES]:
                found = resolve(self.tree, os.fsencode(path), self._spend)
                data = None if found is None else _regular(self.tree, found)
                if data is not None and found is not None and self._runnable(found):
                    if self._claim(data):
                        self.predicted.append(data)
                        self._put(_PARSE, functools.partial(self._parse, data, 1))
                        self._warm(data)
                    return
        except Exception as error:  # a hint: never the mount's failure
            log.info("reading the program ahead failed: %s", error)

    def head_read(self, data: DataRef, head: bytes) -> None:
        """``head``, the first bytes of the file at ``data``, were just read; quick."""
        if head[:4] != ELF_MAGIC or not self._claim(data):
            return
        try:
            self._warm(data)
            self._put(_PARSE, functools.partial(self._parse, data, 1))
        except Exception as error:  # e.g. no thread to be had: never the read's failure
            log.info("reading ahead of an executable failed: %s", error)

    def stop(self) -> None:
        """Read nothing more ahead: what is queued is dropped, and the workers end."""
        self.stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        for _ in range(WORKERS):
            self._queue.put((-1, -1, _nothing))  # wakes a waiting worker to see the stop

    def _is_file(self, ino: InodeNo) -> bool:
        return _regular(self.tree, ino) is not None

    def _spend(self) -> bool:
        return next(self._steps) < MAX_TOTAL_STEPS

    def _runnable(self, ino: InodeNo) -> bool:
        """Whether the file may be the program: runc execs only a file with an exec bit."""
        found = self.tree.inode(ino)
        return found is not None and bool(found.mode & 0o111)

    def _claim(self, data: DataRef) -> bool:
        """Whether ``data`` is a remote file not predicted yet, within the bounds; marks it."""
        if data.digest not in self.layers or data.extents is not None or data.size <= 0:
            return False
        key = (data.digest, data.offset)
        with self._lock:
            if key in self._seen or len(self._seen) >= MAX_FILES:
                return False
            self._seen.add(key)
        return True

    def _parse(self, data: DataRef, depth: int) -> None:
        deps = elf_deps(lambda offset, length: self._read(data, offset, length), self._interp)
        if deps is None:
            return
        for name in deps.needed:
            found = find_library(self.tree, name, deps.runpath, self._spend, self._is_file)
            if found is not None:
                self._predict(found, depth)

    def _interp(self, path: bytes) -> None:
        found = resolve(self.tree, path, self._spend)
        if found is not None:
            self._predict(found, MAX_DEPTH)  # the loader needs nothing loaded for it

    def _predict(self, ino: InodeNo, depth: int) -> None:
        data = _regular(self.tree, ino)
        if data is None or not self._claim(data):
            return
        log.debug("reading ahead inode %d (%d bytes of %s)", ino, data.size, data.digest)
        self.predicted.append(data)
        if depth < MAX_DEPTH:
            # Its head first: parsing it finds what it needs in turn.
            self._put(_PARSE, functools.partial(self._parse, data, depth + 1))
        self._warm(data)

    def _warm(self, data: DataRef) -> None:
        """Queue reads of ``data``'s bytes, piece by piece, within the byte bounds."""
        with self._lock:
            length = min(data.size, MAX_FILE_BYTES, self._bytes_left)
            self._bytes_left -= length
        # Last piece first: the head is read (parsed) anyway, and the file's later chunks are
        # then asked for beside it, not after it.
        for start in reversed(range(0, length, PIECE)):
            piece = min(PIECE, length - start)
            self._put(_WARM, functools.partial(self._read, data, start, piece))

    def _read(self, data: DataRef, offset: int, length: int) -> bytes:
        length = min(length, data.size - offset)
        if offset < 0 or length <= 0:
            return b""
        return self.source.read_range(data.digest, data.offset + offset, length)

    def _put(self, priority: int, work: Callable[[], object]) -> None:
        self._queue.put((priority, next(self._order), work))
        with self._lock:
            if self._started:
                return
            self._started = True
        for number in range(WORKERS):
            name = f"lazyfs-predict-{number}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        # A trace recorded on this start keeps the program's reads in its order, not these.
        unrecorded()
        while not self.stopped.is_set():
            _, _, work = self._queue.get()
            if self.stopped.is_set():
                return
            try:
                work()
            except Exception as error:
                # A hint: the program's own read meets the failure and says so. The
                # next would most likely meet it too (the cache daemon gone: a wait
                # each), so nothing more is read ahead.
                log.info("reading ahead stopped: %s", error)
                self.stop()


def _nothing() -> None:
    pass
