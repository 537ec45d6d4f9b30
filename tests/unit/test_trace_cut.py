"""A trace kept because its mount ended before the workload settled is marked cut, and a
``lazyfs run`` stopped by a signal or an error drops such a trace (``lazyfs.index.trace``,
``lazyfs.blobs.trace_run``, ``lazyfs.cli_index.drop_stopped_trace``): it holds only the
start of the workload, and, kept, it would be replayed (and published) instead of the
whole one the next run records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lazyfs.blobs.trace_run import Recorder
from lazyfs.cache.remote import trace_key
from lazyfs.cli_index import drop_stopped_trace
from lazyfs.index.trace import (
    Read,
    Trace,
    TraceError,
    decode,
    drop_cut_trace,
    encode,
    load_trace,
    store_trace,
    trace_path,
)
from providers.digest import Digest
from providers.manifest import ImageManifest, RuntimeConfig

IMAGE = Digest("sha256:" + "ab" * 32)
A = Digest("sha256:" + "01" * 32)
KEY = f"{IMAGE}@{'c' * 32}"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _recording(cache: Path, clock: Clock) -> Recorder:
    recorder = Recorder(cache, KEY, settle=2.0, limit=60.0, clock=clock)
    recorder._serving_since = clock.now  # as serving() sets it, without its thread
    recorder.read(A, 0, 4096)
    return recorder


def test_a_trace_kept_as_its_mount_ends_before_the_workload_settles_is_cut(
    tmp_path: Path,
) -> None:
    clock = Clock()
    clock.now += 1.0
    _recording(tmp_path / "early", clock).finish(mount_ended=True)
    early = load_trace(tmp_path / "early", KEY)
    assert early is not None and early.cut and early.reads == (Read(A, 0, 4096),)

    settled = _recording(tmp_path / "settled", clock)
    clock.now += 2.5
    settled.finish(mount_ended=True)  # over already, though its watcher had not seen it
    kept = load_trace(tmp_path / "settled", KEY)
    assert kept is not None and not kept.cut

    watched = _recording(tmp_path / "watched", clock)
    watched.finish()  # as the watcher ends it
    found = load_trace(tmp_path / "watched", KEY)
    assert found is not None and not found.cut


def test_cut_is_written_only_when_true_and_read_back() -> None:
    whole, cut = Trace(KEY, (Read(A, 0, 10),)), Trace(KEY, (Read(A, 0, 10),), cut=True)
    assert "cut" not in json.loads(encode(whole))  # as earlier lazyfs wrote it
    assert json.loads(encode(cut))["cut"] is True
    assert decode(encode(whole), KEY) == whole
    assert decode(encode(cut), KEY) == cut


@pytest.mark.parametrize("value", [1, "yes", None, [True]])
def test_a_cut_that_is_not_a_boolean_refuses_the_trace(value: object) -> None:
    body = json.loads(encode(Trace(KEY, (Read(A, 0, 10),))))
    body["cut"] = value
    with pytest.raises(TraceError, match="cut"):
        decode(json.dumps(body).encode(), KEY)


def test_dropping_a_cut_trace_leaves_a_whole_one(tmp_path: Path) -> None:
    assert not drop_cut_trace(tmp_path, KEY)  # none kept
    store_trace(tmp_path, Trace(KEY, (Read(A, 0, 10),)))
    assert not drop_cut_trace(tmp_path, KEY)
    assert load_trace(tmp_path, KEY) is not None
    store_trace(tmp_path, Trace(KEY, (Read(A, 0, 10),), cut=True))
    assert drop_cut_trace(tmp_path, KEY)
    assert not trace_path(tmp_path, KEY).exists()
    trace_path(tmp_path, KEY).write_bytes(b"{torn")  # nobody could replay it
    assert drop_cut_trace(tmp_path, KEY)
    assert not trace_path(tmp_path, KEY).exists()


def test_a_stopped_run_drops_the_cut_trace_of_its_image_and_command(tmp_path: Path) -> None:
    config = RuntimeConfig(entrypoint=("/bin/sh", "-c"), cmd=("exit 0",), working_dir="/srv")
    image = ImageManifest("registry.example:5000/app:1", IMAGE, (), config=config)
    args = argparse.Namespace(cache_dir=str(tmp_path / "cache"), work_dir=str(tmp_path))
    command = ["sleep 60"]
    key = trace_key(IMAGE, config.entrypoint, command, "/tmp")
    other = trace_key(IMAGE, config.entrypoint, config.cmd, "/srv")  # the image's own command
    assert key is not None and other is not None
    for kept in (key, other):
        store_trace(tmp_path / "cache", Trace(kept, (Read(A, 0, 10),), cut=True))
    drop_stopped_trace(args, image, command, "/tmp")
    assert load_trace(tmp_path / "cache", key) is None
    assert load_trace(tmp_path / "cache", other) is not None  # another command's stays
    drop_stopped_trace(args, image, [], "")  # the image's command, in its directory
    assert load_trace(tmp_path / "cache", other) is None
