"""What the process that starts a lazy mount asks for while the mount process loads.

With a prefetch trace to replay, it sends the first ``SENT_AHEAD`` requests
of the trace's ranges, the windows blobs of published indexes among them,
and guesses nothing else: a guess's asks are reads', which the replay
would yield to. The mount process, told so, notes all of them and sends
only the rest. Without a trace (or one with nothing of the mount's layers),
the program is asked for from the published indexes.
"""

from __future__ import annotations

import bisect
import dataclasses
import gzip
import io
import logging
import os
import random
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import lazyfs.cache.spawn
import lazyfs.cache.tails
import lazyfs.fs.mount
import lazyfs.fs.mount_ahead
import lazyfs.fs.predict_published
from lazyfs.blobs.published_ahead import compressed_span
from lazyfs.blobs.trace_run import SENT_AHEAD, ReadWatcher, start_trace
from lazyfs.cache.client import CacheUnavailable
from lazyfs.cache.layout import socket_path
from lazyfs.cache.remote import Remote, RemoteOrigin
from lazyfs.cache.spawn import DaemonSpec
from lazyfs.fs.mount import mount
from lazyfs.fs.mount_ahead import ask_ahead, has_trace, replay_early, send_trace
from lazyfs.fs.mount_wire import INDEXED, READY
from lazyfs.index.published import forget_kept, load_published, store_published
from lazyfs.index.trace import Read, Trace, store_trace, trace_path
from providers.digest import Digest, digest_bytes
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.images import Entry, write_layer
from tests.support.published_artifacts import artifact_of, blobs_of

_random = random.Random(7)
ENTRIES = [
    Entry("usr", "dir", mode=0o755),
    Entry("usr/bin", "dir", mode=0o755),
    Entry("filler", data=_random.randbytes(300_000)),
    Entry("usr/bin/python3", data=_random.randbytes(200_000), mode=0o755),
]
INDEX_BLOB = Digest("sha256:" + "c" * 64)  # a name only
OTHER = Digest("sha256:" + "d" * 64)  # a blob no mount of the image reads
KEY = "sha256:" + "e" * 64 + "@" + "f" * 32


class _Size:
    def __init__(self, size: int, *, piece: bool = False) -> None:
        self.size = size
        self.piece = piece  # read as pieces: a windows blob's ranges


class _Client:
    """The daemon's client, as the asks use it: what was prefetched and replayed."""

    def __init__(self, cache_dir: Path, data: dict[Digest, bytes], layer: Layer) -> None:
        self.cache_dir = cache_dir
        self.data = data
        self.blobs: dict[Digest, _Size] = {layer.digest: _Size(layer.size)}
        self.prefetched: list[tuple[Digest, int, int]] = []
        self.replayed: list[tuple[Digest, list[tuple[int, int]]]] = []
        self.replaying: list[tuple[Digest, list[tuple[int, int]]]] = []
        self.watcher: ReadWatcher | None = None
        self.closed = threading.Event()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.data[digest])

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.data[digest][offset : offset + length]

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        self.prefetched.append((digest, offset, length))
        return 1

    def add_blob(self, digest: Digest, like: Digest, size: int) -> None:
        self.blobs.setdefault(digest, _Size(size, piece=True))  # as the daemon's client has it

    def replay(self, digest: Digest, ranges: Sequence[tuple[int, int]]) -> int:
        self.replayed.append((digest, list(ranges)))
        return len(ranges)

    def close(self) -> None:
        self.closed.set()


class _Image:
    """One gzip layer with its index published and kept in ``layers_dir``, and its blobs."""

    def __init__(self, tmp: Path) -> None:
        self.store = tmp / "store"
        self.layers_dir = self.store / "layers"
        blob = gzip.compress(write_layer(ENTRIES, tmp / "layer.tar").read_bytes())
        (tmp / "blob").write_bytes(blob)
        digest = digest_bytes(blob)
        artifact, windows = artifact_of(tmp / "blob", digest, tmp / "scratch", spacing=1 << 16)
        assert artifact.windows is not None
        self.windows = artifact.windows
        self.blobs = blobs_of(artifact, blob, windows)
        self.layer = Layer(digest, "", len(blob), None, ((INDEX_BLOB_ANNOTATION, INDEX_BLOB),))
        store_published(self.layers_dir, INDEX_BLOB, artifact)
        # What a first run read: the layer, a window, another image's blob, the layer again.
        self.trace = Trace(KEY, (
            Read(digest, 0, 4096),
            Read(self.windows, 0, 1000),
            Read(OTHER, 0, 4096),
            Read(digest, 200_000, 8192),
        ))  # fmt: skip

    def client(self, tmp: Path) -> _Client:
        return _Client(tmp / "cache", self.blobs, self.layer)


def _replays_started(since: set[threading.Thread]) -> list[threading.Thread]:
    """The replay threads started since ``since`` was taken (others' are not this test's)."""
    return [t for t in set(threading.enumerate()) - since if t.name == "lazyfs-trace-replay"]


def test_a_short_trace_is_sent_whole_for_the_layers_not_their_windows(tmp_path: Path) -> None:
    image = _Image(tmp_path)
    store_trace(image.store, image.trace)  # as fetched from the registry
    client = image.client(tmp_path)
    # Told of the windows blob (the layer opened): its ranges are the mount's to ask for.
    client.add_blob(image.windows, image.layer.digest, 1 << 20)

    assert send_trace(client, image.store, [image.layer], KEY)

    assert client.replayed == [(image.layer.digest, [(0, 4096), (200_000, 8192)])]
    # The client knows the whole trace as it sends its head: its partial chunks are
    # asked as the parts the trace needs (``lazyfs.cache.partial``), as the mount's are.
    assert client.replaying == client.replayed


def test_the_mount_notes_what_was_sent_and_sends_nothing_again(tmp_path: Path) -> None:
    image = _Image(tmp_path)
    store_trace(tmp_path / "cache", image.trace)
    sender, mount = image.client(tmp_path), image.client(tmp_path)
    assert send_trace(sender, image.store, [image.layer], KEY)
    before = set(threading.enumerate())

    assert start_trace(mount, KEY, image.store, sent=True) is None

    assert mount.replaying == sender.replayed and len(mount.replaying) == 1
    # A thread sending the replay would be running still, or would have sent it.
    assert not _replays_started(before)
    assert mount.replayed == []


def test_a_long_trace_is_sent_once_its_head_from_the_caller_the_rest_from_the_mount(
    tmp_path: Path,
) -> None:
    image = _Image(tmp_path)
    layer = image.layer.digest
    # Each read a request of its own: the layer and another of the image's, by turns.
    reads = [Read(blob, 200 * n, 100) for n in range(SENT_AHEAD) for blob in (layer, OTHER)]
    store_trace(tmp_path / "cache", Trace(KEY, tuple(reads)))
    sender, mount = image.client(tmp_path), image.client(tmp_path)
    for client in (sender, mount):
        client.blobs[OTHER] = _Size(1 << 20)
    assert send_trace(sender, image.store, [image.layer], KEY)
    before = set(threading.enumerate())

    start_trace(mount, KEY, image.store, sent=True)
    for thread in _replays_started(before):
        thread.join(timeout=60)

    assert len(sender.replayed) == SENT_AHEAD
    assert sender.replayed + mount.replayed == mount.replaying
    assert [(r.digest, [(r.offset, r.length)]) for r in reads] == mount.replaying


def test_a_mount_not_told_sends_the_trace_itself(tmp_path: Path) -> None:
    image = _Image(tmp_path)
    store_trace(tmp_path / "cache", image.trace)
    client = image.client(tmp_path)
    before = set(threading.enumerate())

    assert start_trace(client, KEY) is None

    for thread in _replays_started(before):
        thread.join(timeout=60)
    # Its client was told of no windows blob: the layer's two reads are one request.
    assert client.replayed == [(image.layer.digest, [(0, 4096), (200_000, 8192)])]


@pytest.mark.parametrize(
    "trace",
    ["good", "none", "of other layers", "damaged"],
)
def test_only_a_trace_with_something_to_send_stands_in_for_the_programs_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, trace: str
) -> None:
    image = _Image(tmp_path)
    made: list[_Client] = []

    def hint_client(*_: object) -> _Client:
        made.append(image.client(tmp_path))
        return made[-1]

    # The daemon's client: what the asks would send it is what this test looks at.
    monkeypatch.setattr(lazyfs.cache.tails, "hint_client", hint_client)
    monkeypatch.setattr(lazyfs.fs.predict_published, "hint_client", hint_client)
    cache = tmp_path / "cache"
    if trace == "good":
        store_trace(cache, image.trace)
    elif trace == "of other layers":
        store_trace(cache, Trace(KEY, (Read(OTHER, 0, 4096),)))
    elif trace == "damaged":
        store_trace(cache, image.trace)
        trace_path(cache, KEY).write_bytes(b"{not json")
    origins = {image.layer.digest: RemoteOrigin("127.0.0.1:9", "app")}
    caplog.set_level(logging.INFO)
    try:
        ask_ahead(cache, image.store, [image.layer], origins, ["/usr/bin/python3"],
                  None if trace == "none" else KEY)  # fmt: skip
    finally:
        forget_kept()
    for client in made:
        assert client.closed.wait(60), "a client of the asks was left open"
    prefetched = [asked for client in made for asked in client.prefetched]
    replayed = [step for client in made for step in client.replayed]
    if trace == "good":
        # No guess at the program: only the windows the replay needs.
        assert len(replayed) == 1 and {blob for blob, *_ in prefetched} == {image.windows}
    else:
        assert replayed == [] and prefetched
    # This process's warnings are the user's terminal's: the mount logs its trouble itself.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_trace_is_had_where_the_mount_looks_for_it(tmp_path: Path) -> None:
    """The cache's, or the store's (fetched from the registry); a key of no trace's: none."""
    image = _Image(tmp_path)
    cache = tmp_path / "cache"
    assert not has_trace(cache, image.store, KEY)
    store_trace(image.store, image.trace)
    assert has_trace(cache, image.store, KEY)
    trace_path(image.store, KEY).unlink()
    store_trace(cache, image.trace)
    assert has_trace(cache, image.store, KEY)
    assert not has_trace(cache, image.store, "sha256:" + "e" * 64)  # not a key


@pytest.mark.parametrize("kept", [True, False], ids=["a trace kept", "none"])
def test_the_mount_is_told_the_trace_is_sent_exactly_when_it_is_asked_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    """``mount()`` passes ``--trace-sent`` to the mount process when, and only when, it hands
    the trace's key to ``ask_ahead``: a replay neither sends, or both, otherwise."""
    image = _Image(tmp_path)
    cache = tmp_path / "cache"
    if kept:
        store_trace(cache, image.trace)
    started: list[list[str]] = []
    asked: list[object] = []
    stand_in = subprocess.Popen(["sleep", "60"])  # the mount process's pid: a harmless one

    def start(args: list[str], store: Path, *, ready_fd: int, log_fd: int,
              start_server: bool = True) -> int:  # fmt: skip
        started.append(args)
        os.write(ready_fd, INDEXED + READY)
        return stand_in.pid

    # The mount process and the daemon (answering) stand in: the wiring is what is tested.
    monkeypatch.setattr(lazyfs.fs.mount, "_start", start)
    monkeypatch.setattr(lazyfs.fs.mount, "start_daemon", lambda spec: None)
    monkeypatch.setattr(lazyfs.fs.mount_ahead, "ask_ahead", lambda *args: asked.append(args[-1]))
    remote = Remote(
        DaemonSpec(cache, ("lazyfs", "daemon")),
        {image.layer.digest: RemoteOrigin("127.0.0.1:9", "app")},
        KEY,
        ("/usr/bin/python3",),
    )
    try:
        pid = mount([image.layer], tmp_path, store=image.store, log_path=tmp_path / "log",
                    remote=remote)  # fmt: skip
    finally:
        stand_in.kill()
        stand_in.wait()
    assert pid == stand_in.pid
    assert ("--trace-sent" in started[0]) is kept
    assert asked == [KEY if kept else None]


@pytest.mark.parametrize("kept", [True, False], ids=["a trace kept", "none"])
def test_a_provision_sends_a_kept_trace_before_the_mount_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    """``replay_early``: once the provision has the trace, before the layers' indexes are
    kept, the trace's ranges of the remote layers go to the daemon; with none, nothing."""
    image = _Image(tmp_path)
    if kept:
        store_trace(image.store, image.trace)  # as fetched from the registry
    client = image.client(tmp_path)
    given: list[list[Layer]] = []

    def hint_client(cache_dir: Path, layers: list[Layer], origins: object) -> _Client:
        given.append(layers)
        return client

    monkeypatch.setattr(lazyfs.cache.tails, "hint_client", hint_client)
    monkeypatch.setattr(lazyfs.cache.spawn, "answers", lambda cache_dir: True)
    # As the provision has it then: its index not named yet (so not found in the store).
    layer = dataclasses.replace(image.layer, annotations=())
    other = Layer(OTHER, "", 4096, None)  # of the image, not remote (no origin)
    origins = {layer.digest: RemoteOrigin("127.0.0.1:9", "app")}

    replay_early(tmp_path / "cache", image.store, [other, layer], origins, KEY)

    if kept:
        assert given == [[layer]] and client.closed.is_set()
        assert client.replayed == [(layer.digest, [(0, 4096), (200_000, 8192)])]
    else:
        assert given == [] and client.replayed == []


def _gone(cache: Path) -> None:
    """A daemon's socket left behind, no daemon: connections are refused."""
    cache.mkdir()
    with socket.socket(socket.AF_UNIX) as gone:  # bound, then closed
        gone.bind(str(socket_path(cache)))


def test_an_early_replay_with_no_daemon_answering_sends_nothing_and_warns_of_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon gone with its socket left (the mount starts another): the provision's
    warnings reach the user's terminal, and this one is only a hint."""
    image = _Image(tmp_path)
    store_trace(image.store, image.trace)
    cache = tmp_path / "cache"
    _gone(cache)
    clients: list[object] = []
    real = lazyfs.cache.tails.hint_client

    def hint_client(*args: Any) -> object:
        clients.append(args)
        return real(*args)

    monkeypatch.setattr(lazyfs.cache.tails, "hint_client", hint_client)
    layer = dataclasses.replace(image.layer, annotations=())
    origins = {layer.digest: RemoteOrigin("127.0.0.1:9", "app")}
    caplog.set_level(logging.DEBUG)

    replay_early(cache, image.store, [layer], origins, KEY)

    assert clients == []  # nothing asked of it
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_hint_client_says_a_daemon_is_gone_at_info_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Should the daemon go between the check and the asks: what a hint asks fails, and
    the terminal hears nothing of it."""
    image = _Image(tmp_path)
    cache = tmp_path / "cache"
    _gone(cache)
    origins = {image.layer.digest: RemoteOrigin("127.0.0.1:9", "app")}
    client = lazyfs.cache.tails.hint_client(cache, [image.layer], origins)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CacheUnavailable):
            client.replay(image.layer.digest, [(0, 4096)])
    finally:
        client.close()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "unreachable" in r.getMessage()]
    assert said and all(level == logging.INFO for level, _ in said)


@pytest.mark.parametrize("on_its_way", [True, False], ids=["starting", "not started"])
def test_an_early_replay_waits_for_a_daemon_on_its_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_its_way: bool
) -> None:
    """A daemon ``lazyfs.cli_early`` started is still loading when the provision has the
    trace: the replay goes to it once it answers. One that no one starts is not waited for."""
    image = _Image(tmp_path)
    store_trace(image.store, image.trace)
    client = image.client(tmp_path)
    asked: list[Path] = []

    def answers(cache_dir: Path) -> bool:
        asked.append(cache_dir)
        return on_its_way and len(asked) == 3  # up at the third status request

    monkeypatch.setattr(lazyfs.cache.tails, "hint_client", lambda *args: client)
    monkeypatch.setattr(lazyfs.cache.spawn, "answers", answers)
    monkeypatch.setattr(lazyfs.cache.spawn, "starting", lambda cache_dir: on_its_way)
    layer = dataclasses.replace(image.layer, annotations=())
    origins = {layer.digest: RemoteOrigin("127.0.0.1:9", "app")}

    replay_early(tmp_path / "cache", image.store, [layer], origins, KEY)

    if on_its_way:
        assert len(asked) == 3
        assert client.replayed == [(layer.digest, [(0, 4096), (200_000, 8192)])]
    else:
        assert len(asked) == 1 and client.replayed == []


def test_the_windows_a_replay_needs_are_asked_for_ahead_of_the_mount(tmp_path: Path) -> None:
    """Once the layer's published index is kept: the window of each interval the trace
    reaches that cannot inflate from the one before, as one exact range each."""
    image = _Image(tmp_path)
    store_trace(image.store, image.trace)
    client = image.client(tmp_path)
    found = load_published(image.layers_dir, image.layer, entries=False)
    assert found is not None
    data = found[2]
    assert data.points is not None and len(data.points) > 3
    # The trace's second read of the layer is in an interval past the first's.
    starts = [compressed_span(data, n)[0] for n in range(len(data.points))]
    number = bisect.bisect_right(starts, 200_000) - 1
    window = data.points[number].window
    assert number > 1 and window is not None

    assert send_trace(client, image.store, [image.layer], KEY)

    assert client.prefetched == [(image.windows, window.offset, window.length)]
    assert client.blobs[image.windows].piece
    # Without the index kept (a provision's early replay): no window asked.
    bare = image.client(tmp_path)
    assert send_trace(bare, image.store, [dataclasses.replace(image.layer, annotations=())], KEY)
    assert bare.prefetched == []
