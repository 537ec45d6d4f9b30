"""The learned prefetch trace: its format (round trip, bounds, refusal), its key, and the
mount's recorder and replay plan, with a clock the test moves."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.blobs.trace_run import Recorder, replay_steps, start_trace
from lazyfs.cache.remote import trace_key
from lazyfs.index.trace import (
    MAX_RANGE,
    MAX_READS,
    MAX_TRACE_BYTES,
    TRACE_ARTIFACT_TYPE,
    TRACE_MEDIA_TYPE,
    Read,
    Trace,
    TraceError,
    decode,
    encode,
    load_trace,
    store_trace,
    trace_path,
)
from lazyfs.publish.traces import KEY_ANNOTATION, _may_list, trace_blobs
from providers.digest import Digest
from providers.errors import BadImage

IMAGE = Digest("sha256:" + "ab" * 32)
A = Digest("sha256:" + "01" * 32)
B = Digest("sha256:" + "02" * 32)
KEY = f"{IMAGE}@{'c' * 32}"

reads = st.lists(
    st.builds(
        Read,
        st.sampled_from([A, B]),
        st.integers(0, 1 << 40),
        st.integers(1, MAX_RANGE),
    ),
    max_size=50,
)


@given(reads)
def test_a_trace_round_trips(found: list[Read]) -> None:
    trace = Trace(KEY, tuple(found))
    assert decode(encode(trace), KEY) == trace


def test_a_trace_is_stored_whole_and_read_back(tmp_path: Path) -> None:
    trace = Trace(KEY, (Read(A, 0, 10), Read(B, 4096, 70000), Read(A, 10, 5)))
    path = store_trace(tmp_path, trace)
    assert path == trace_path(tmp_path, KEY)
    assert load_trace(tmp_path, KEY) == trace
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == [path.name]  # no temporary file left


def _body(**changes: object) -> bytes:
    body: dict[str, object] = {
        "lazyfs_trace": 1,
        "key": KEY,
        "layers": [A],
        "reads": [[0, 0, 10]],
    }
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff garbage",
        _body()[:-7],  # truncated
        b"[]",
        _body(lazyfs_trace=2),
        _body(key="sha256:" + "ab" * 32),  # no command hash
        _body(key="../../etc@" + "c" * 32),
        _body(key=f"{IMAGE}@{'d' * 32}"),  # another command's
        _body(layers=["sha256:zz"]),
        _body(layers=[5]),
        _body(reads=[[1, 0, 10]]),  # no such layer
        _body(reads=[[0, -1, 10]]),
        _body(reads=[[0, 0, 0]]),
        _body(reads=[[0, 0, MAX_RANGE + 1]]),
        _body(reads=[[0, 0, True]]),
        _body(reads=[[0, 0.5, 10]]),
        _body(reads=[[0, 0]]),
        _body(reads={"0": 1}),
        _body(reads=[[0, 0, 1]] * (MAX_READS + 1)),
        _body(layers=[A] * 300),
        b" " * (MAX_TRACE_BYTES + 1),
    ],
)
def test_a_damaged_or_hostile_trace_is_refused_whole(data: bytes) -> None:
    with pytest.raises(TraceError):
        decode(data, KEY)


def test_a_bad_trace_file_is_ignored_with_one_logged_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = trace_path(tmp_path, KEY)
    path.parent.mkdir()
    path.write_bytes(_body()[:20])
    with caplog.at_level(logging.WARNING):
        assert load_trace(tmp_path, KEY) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ignored" in caplog.records[0].getMessage()
    assert load_trace(tmp_path / "none", KEY) is None  # absent: nothing to say


def test_a_trace_too_big_to_read_is_not_written() -> None:
    with pytest.raises(TraceError):
        encode(Trace(KEY, (Read(A, 0, 1),) * (MAX_READS + 1)))
    with pytest.raises(TraceError):
        encode(Trace("not a key", ()))


def test_the_key_names_the_image_and_what_runs_where() -> None:
    key = trace_key(IMAGE, ["/bin/sh", "-c"], ["echo hi"], "/srv")
    assert key is not None and key.startswith(f"{IMAGE}@")
    decode(encode(Trace(key, ())), key)  # a key the format takes
    others = {
        trace_key(IMAGE, ["/bin/sh", "-c"], ["echo ho"], "/srv"),
        trace_key(IMAGE, ["/bin/sh"], ["-c", "echo hi"], "/srv"),
        trace_key(IMAGE, ["/bin/sh", "-c"], ["echo hi"], "/"),
        trace_key(Digest("sha256:" + "ef" * 32), ["/bin/sh", "-c"], ["echo hi"], "/srv"),
    }
    assert key not in others and len(others) == 4
    assert trace_key(IMAGE, [], ["x"], "") == trace_key(IMAGE, [], ["x"], "/")
    # An image's WorkingDir as written, and a ``-w`` of the same directory (tidied): one key.
    tidy = trace_key(IMAGE, [], ["x"], "/srv/app")
    assert tidy == trace_key(IMAGE, [], ["x"], "/srv/app/")
    assert tidy == trace_key(IMAGE, [], ["x"], "//srv/./lib/../app")
    assert trace_key(IMAGE, [], ["x"], "/srv/../") == trace_key(IMAGE, [], ["x"], "/")
    assert trace_key(Digest("sha512:" + "ab" * 64), [], ["x"], "/") is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_recorder_keeps_new_ranges_in_order_until_the_workload_settles(
    tmp_path: Path,
) -> None:
    clock = Clock()
    recorder = Recorder(tmp_path, KEY, settle=2.0, limit=60.0, clock=clock)
    recorder.read(B, 1 << 20, 100)
    recorder.read(A, 0, 65536)
    recorder.read(A, 65536, 4096)  # continues the last: one range
    recorder.read(B, 1 << 20, 50)  # read before: not new
    recorder.read(A, 69000, 600)  # within what was read: not new
    recorder.read(A, 69600, 50)  # in the same 64 KiB, but new bytes: new (a replay fetches
    # the bytes a trace names, not the chunks around them: ``lazyfs.cache.partial``)
    clock.now += 10
    assert not recorder.due()  # not serving yet: the container has not started
    recorder.serving()
    clock.now += 1.5
    recorder.read(A, 1 << 22, 10)
    clock.now += 1.5
    assert not recorder.due()
    clock.now += 0.6
    assert recorder.due()
    recorder.finish()
    recorder.read(B, 0, 10)  # after it: not recorded
    trace = load_trace(tmp_path, KEY)
    assert trace is not None
    assert trace.reads == (
        Read(B, 1 << 20, 100),
        Read(A, 0, 69632),
        Read(A, 69600, 50),
        Read(A, 1 << 22, 10),
    )


def test_the_recorder_stops_at_its_time_limit_and_writes_nothing_unserved(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder(tmp_path, KEY, settle=2.0, limit=5.0, clock=clock)
    recorder._serving_since = clock.now  # as serving() sets it, without its thread
    for step in range(6):
        recorder.read(A, step << 20, 10)
        clock.now += 1
    assert recorder.due()
    unserved = Recorder(tmp_path / "other", KEY, clock=clock)
    unserved.read(A, 0, 10)
    assert unserved.finish() is None
    assert not (tmp_path / "other").exists()


def test_the_settle_clock_waits_for_the_container_to_read(tmp_path: Path) -> None:
    # An agent may start the container seconds after the mount serves: the
    # reads of indexing before it must not end the recording by themselves.
    clock = Clock()
    recorder = Recorder(tmp_path, KEY, settle=2.0, limit=60.0, clock=clock)
    recorder.read(A, 0, 100)  # before serving: the mount's own
    clock.now += 1
    recorder._serving_since = clock.now  # as serving() sets it, without its thread
    clock.now += 10
    assert not recorder.due()
    recorder.read(A, 1 << 20, 100)  # the container's first read
    clock.now += 1.9
    assert not recorder.due()
    clock.now += 0.2
    assert recorder.due()


class Blob:
    size: int | None = 1 << 20


class Client:
    """The cache client's face a trace uses, with no daemon behind it."""

    def __init__(self, cache_dir: Path) -> None:
        self.replaying: object = []
        self.watcher: object = None
        self.cache_dir = cache_dir
        self.blobs = {B: Blob()}
        self.asked: list[tuple[Digest, list[tuple[int, int]]]] = []

    def replay(self, digest: Digest, ranges: list[tuple[int, int]]) -> int:
        self.asked.append((digest, list(ranges)))
        return len(ranges)


def test_a_trace_of_other_layers_is_recorded_again_and_leaves_the_landmark_prefetch_on(
    tmp_path: Path,
) -> None:
    """One recorded where this mount's remote layers were local: as good as none here."""
    store_trace(tmp_path, Trace(KEY, (Read(A, 0, 100),)))
    client = Client(tmp_path)
    recorder = start_trace(client, KEY)  # type: ignore[arg-type]
    assert isinstance(recorder, Recorder) and client.watcher is recorder
    assert not client.replaying
    store_trace(tmp_path, Trace(KEY, (Read(A, 0, 100), Read(B, 0, 100))))
    client = Client(tmp_path)
    assert start_trace(client, KEY) is None  # type: ignore[arg-type]
    assert client.replaying and client.watcher is None


def test_a_cut_trace_is_replayed_and_recorded_again_a_whole_one_replayed_only(
    tmp_path: Path,
) -> None:
    cut = Trace(KEY, (Read(B, 0, 100),), cut=True)
    store_trace(tmp_path, cut)
    client = Client(tmp_path)
    recorder = start_trace(client, KEY, sent=True)  # type: ignore[arg-type]
    assert isinstance(recorder, Recorder) and recorder.replacing is not None
    assert recorder.replacing.trace == cut and set(recorder.replacing.sizes) == {B}
    assert client.watcher is recorder and client.replaying == [(B, [(0, 100)])]
    store_trace(tmp_path, Trace(KEY, cut.reads))
    client = Client(tmp_path)
    assert start_trace(client, KEY, sent=True) is None  # type: ignore[arg-type]
    assert client.watcher is None and client.replaying == [(B, [(0, 100)])]


def test_a_replay_asks_for_the_blobs_this_mount_reads_in_trace_order() -> None:
    other = Digest("sha256:" + "03" * 32)
    trace = Trace(
        KEY,
        (
            Read(A, 0, 100),
            Read(A, 500, 100),
            Read(other, 0, 10),  # not a layer of this mount
            Read(B, 90, 100),  # past B's end: cut there
            Read(B, 200, 10),  # wholly past it: left out
            Read(A, 1000, 10),
        ),
    )
    steps = replay_steps(trace, {A: None, B: 120})
    assert steps == [(A, [(0, 100), (500, 100)]), (B, [(90, 30)]), (A, [(1000, 10)])]


def _artifact(layers: list[object], subject: str = IMAGE) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "artifactType": TRACE_ARTIFACT_TYPE,
            "layers": layers,
            "subject": {"digest": subject},
        }
    ).encode()


def _listed(key: str, size: int = 100) -> dict[str, object]:
    return {"mediaType": TRACE_MEDIA_TYPE, "digest": A, "size": size,
            "annotations": {KEY_ANNOTATION: key}}  # fmt: skip


def test_a_published_trace_manifest_lists_the_traces_of_its_image_only() -> None:
    found = trace_blobs(_artifact([_listed(KEY), {"mediaType": "other/later"}]), IMAGE)
    assert list(found) == [KEY] and found[KEY].digest == A
    other = f"sha256:{'ef' * 32}@{'c' * 32}"
    for bad in (
        _artifact([_listed(other)]),  # a trace of another image, listed under this one
        _artifact([_listed(KEY)], subject="sha256:" + "ef" * 32),
        _artifact([_listed("../x")]),
        _artifact([_listed(KEY, MAX_TRACE_BYTES + 1)]),
        _artifact([{"mediaType": TRACE_MEDIA_TYPE, "digest": A}]),
        b"not json",
    ):
        with pytest.raises(BadImage):
            trace_blobs(bad, IMAGE)


def test_an_artifact_may_list_a_command_its_entry_names_or_when_it_names_none() -> None:
    """``dev.lazyfs.trace.commands``: 8 hex digits of each command hash; a value longer
    than a push of lazyfs writes (64 commands') says nothing, as none does."""
    key = f"{IMAGE}@{'c' * 32}"
    assert _may_list(None, key)  # earlier lazyfs
    assert _may_list("aaaaaaaa,cccccccc", key)
    assert not _may_list("aaaaaaaa,bbbbbbbb", key)
    assert not _may_list("cccccccc0", key)  # names, not prefixes
    assert not _may_list(",".join(["aaaaaaaa"] * 64), key)
    assert _may_list(",".join(["aaaaaaaa"] * 65), key)
