"""A trace kept because its mount ended before the workload settled is marked cut, and the
next mount, which replays it, records again and replaces it when it goes further (counted
as that mount reads it); a ``lazyfs run`` that passed a signal on marks cut a trace its
mount kept after it (``lazyfs.index.trace``, ``lazyfs.blobs.trace_run``,
``lazyfs.cli_run_trace``): it may hold only the start of the workload, and, kept whole,
it would be replayed (and published) for ever instead of the whole one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lazyfs.blobs.trace_run import Recorder, Replacing
from lazyfs.cache.remote import trace_key
from lazyfs.cli_run_trace import RunTrace, cut_if_written, file_id, noted
from lazyfs.index.trace import (
    Read,
    Trace,
    TraceError,
    counted,
    decode,
    encode,
    find_trace,
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


def _recording(
    cache: Path, clock: Clock, length: int = 4096, replacing: Replacing | None = None
) -> Recorder:
    recorder = Recorder(cache, KEY, settle=2.0, limit=60.0, clock=clock, replacing=replacing)
    recorder._serving_since = clock.now  # as serving() sets it, without its thread
    recorder.read(A, 0, length)
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


def _keep(cache: Path, *, cut: bool, key: str = KEY, length: int = 10) -> Path:
    return store_trace(cache, Trace(key, (Read(A, 0, length),), cut=cut))


def test_a_cut_trace_is_replaced_by_a_run_that_goes_further(tmp_path: Path) -> None:
    clock = Clock()
    _keep(tmp_path, cut=True, length=4000)  # a run stopped early, or a short job
    old = load_trace(tmp_path, KEY)
    assert old is not None
    replacing = Replacing(old, {A: None})
    # A short job again: about what it read before; the trace stays as it was.
    before = file_id(trace_path(tmp_path, KEY))
    assert _recording(tmp_path, clock, 4999, replacing).finish(mount_ended=True) is None
    assert file_id(trace_path(tmp_path, KEY)) == before
    # A run that went on past where the first one was stopped: its trace replaces it.
    assert _recording(tmp_path, clock, 5000, replacing).finish(mount_ended=True) is not None
    further = load_trace(tmp_path, KEY)
    assert further is not None and further.cut and further.reads == (Read(A, 0, 5000),)


def test_a_settled_recording_too_must_go_further_to_replace_a_cut_trace(
    tmp_path: Path,
) -> None:
    """A run stopped early whose shutdown was quiet settles its recording with the start of
    the workload only; and runs that read about the same must not take turns."""
    clock = Clock()
    _keep(tmp_path, cut=True, length=4000)
    old = load_trace(tmp_path, KEY)
    assert old is not None
    for length, kept in [(4999, old.reads), (5000, (Read(A, 0, 5000),))]:
        settled = _recording(tmp_path, clock, length, Replacing(old, {A: None}))
        clock.now += 2.5
        settled.finish(mount_ended=True)
        found = load_trace(tmp_path, KEY)
        assert found is not None and found.reads == kept
    assert found is not None and not found.cut


def test_a_cut_trace_is_counted_as_this_mount_reads_it(tmp_path: Path) -> None:
    """Ranges of blobs the mount does not replay (another layer, local here, or a published
    index's windows, read as pieces), lengths past a blob's end and bytes read twice (a
    trace recorded where more layers were remote, or a hostile one) count for nothing:
    else no run here could read a quarter more, or one could by reading windows."""
    clock = Clock()
    other = Digest("sha256:" + "02" * 32)
    reads = (Read(A, 0, 4000), Read(other, 0, 1 << 20), Read(A, 8192, 1 << 20), Read(A, 0, 10))
    old = Trace(KEY, reads, True)
    replacing = Replacing(old, {A: 10000})  # A holds 10,000 bytes: 4,000 + 1,808 of it, once
    assert counted(old, replacing.sizes) == 5808
    short = _recording(tmp_path, clock, 7259, replacing)
    short.read(other, 0, 1 << 20)  # not counted
    assert short.finish(mount_ended=True) is None
    assert _recording(tmp_path, clock, 7260, replacing).finish(mount_ended=True) is not None


def test_a_trace_kept_after_the_first_signal_is_marked_cut_one_kept_before_it_stays(
    tmp_path: Path,
) -> None:
    # A quiet shutdown may outlast the settle time: what the mount kept then is the start.
    ours = RunTrace(tmp_path, KEY)
    assert not cut_if_written(ours, None)  # none kept
    path = _keep(tmp_path, cut=False)
    at_signal = file_id(path)
    assert not cut_if_written(ours, at_signal)  # settled before the signal
    kept = load_trace(tmp_path, KEY)
    assert kept is not None and not kept.cut
    _keep(tmp_path, cut=False)  # settled again after it
    assert cut_if_written(ours, at_signal)
    assert load_trace(tmp_path, KEY) == Trace(KEY, kept.reads, cut=True)
    assert not cut_if_written(ours, at_signal)  # cut already
    path.write_bytes(b"{torn")  # not one this lazyfs wrote: left as it is
    assert not cut_if_written(ours, None)
    assert path.read_bytes() == b"{torn"


def test_a_trace_is_noted_for_lazy_rootfses_only(tmp_path: Path) -> None:
    config = RuntimeConfig(entrypoint=("/bin/sh", "-c"), cmd=("exit 0",), working_dir="/srv")
    image = ImageManifest("registry.example:5000/app:1", IMAGE, (), config=config)
    cache = tmp_path / "cache"
    args = argparse.Namespace(cache_dir=str(cache), work_dir=str(tmp_path))
    key = trace_key(IMAGE, config.entrypoint, ["sleep 60"], "/tmp")
    own = trace_key(IMAGE, config.entrypoint, config.cmd, "/srv")  # the image's own command
    assert key is not None and own is not None
    assert noted(args, image, ["sleep 60"], "/tmp", lazy=True) == RunTrace(cache, key)
    assert noted(args, image, [], "", lazy=True) == RunTrace(cache, own)
    assert noted(args, image, ["sleep 60"], "/tmp", lazy=False) is None  # no mount records


def test_a_trace_fetched_from_the_registry_is_replayed_when_it_replaces_the_cache_s(
    tmp_path: Path,
) -> None:
    """As a recording would replace it: a cut one in the cache by one a quarter longer,
    whole or cut (a truncated trace published by earlier lazyfs reads as whole)."""
    cache, store = tmp_path / "cache", tmp_path / "store"
    here = Read(A, 0, 20)

    def published(length: int, *, cut: bool) -> Read:
        read = Read(A, 1000, length)  # told apart from the cache's by its offset
        store_trace(store, Trace(KEY, (read,), cut=cut))
        return read

    whole = published(20, cut=False)
    assert find_trace(cache, KEY, store) == Trace(KEY, (whole,))  # none in the cache
    store_trace(cache, Trace(KEY, (here,), cut=True))
    for length, cut, replayed in [(24, False, here), (24, True, here), (25, True, None)]:
        further = published(length, cut=cut)
        found = find_trace(cache, KEY, store)
        assert found is not None and found.reads == ((replayed or further),), (length, cut)
    store_trace(cache, Trace(KEY, (here,)))
    found = find_trace(cache, KEY, store)
    assert found is not None and found.reads == (here,)  # a whole one: the cache's


def test_a_fetched_trace_is_weighed_on_the_blobs_the_mount_reads_remotely(
    tmp_path: Path,
) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    other = Digest("sha256:" + "02" * 32)
    store_trace(cache, Trace(KEY, (Read(A, 0, 20),), cut=True))
    store_trace(store, Trace(KEY, (Read(other, 0, 1 << 20), Read(A, 0, 20), Read(A, 0, 20))))
    assert find_trace(cache, KEY, store) == load_trace(store, KEY)  # counted whole
    assert find_trace(cache, KEY, store, {A: None}) == load_trace(cache, KEY)


def test_a_replacing_trace_keeps_the_reads_of_layers_this_mount_reads_locally(
    tmp_path: Path,
) -> None:
    """Adopted into the store since the trace was recorded, or local here only: the mount
    could not record them, and machines that read them remotely replay them still."""
    clock = Clock()
    local = Digest("sha256:" + "02" * 32)
    old = Trace(KEY, (Read(local, 0, 500), Read(A, 0, 4000), Read(local, 9000, 10)), cut=True)
    assert _recording(tmp_path, clock, 5000, Replacing(old, {A: None})).finish(mount_ended=True)
    kept = load_trace(tmp_path, KEY)
    assert kept == Trace(KEY, (Read(A, 0, 5000), Read(local, 0, 500), Read(local, 9000, 10)), True)
