"""A trace kept because its mount ended before the workload settled is marked cut, and a
``lazyfs run`` stopped early drops the trace its mount kept cut or after the stop
(``lazyfs.index.trace``, ``lazyfs.blobs.trace_run``, ``lazyfs.cli_run_trace``): it holds
only the start of the workload, and, kept, it would be replayed (and published) instead
of the whole one the next run records."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import pytest

from lazyfs.blobs.trace_run import Recorder
from lazyfs.cache.remote import trace_key
from lazyfs.cli_run_trace import RunTrace, drop_if_stopped, file_id, noted, stopped
from lazyfs.index.trace import (
    Read,
    Trace,
    TraceError,
    decode,
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


def _keep(cache: Path, *, cut: bool, key: str = KEY) -> Path:
    return store_trace(cache, Trace(key, (Read(A, 0, 10),), cut=cut))


def test_a_stopped_run_drops_the_cut_trace_its_mount_kept(tmp_path: Path) -> None:
    path = trace_path(tmp_path, KEY)
    ours = RunTrace(path, before=None)
    assert not drop_if_stopped(ours, signalled=False)  # none kept
    _keep(tmp_path, cut=False)
    assert not drop_if_stopped(ours, signalled=False)  # settled: whole
    assert load_trace(tmp_path, KEY) is not None
    _keep(tmp_path, cut=True)
    assert drop_if_stopped(ours, signalled=False)
    assert not path.exists()
    path.write_bytes(b"{torn")  # not one this lazyfs wrote cut: left as it is
    assert not drop_if_stopped(ours, signalled=False)
    assert path.exists()


def test_a_trace_the_run_did_not_write_is_not_its_own_to_drop(tmp_path: Path) -> None:
    # A short job's earlier trace, whole but cut, there as the provision returned.
    path = _keep(tmp_path, cut=True)
    there = RunTrace(path, before=file_id(path))
    assert not drop_if_stopped(there, signalled=True, at_signal=None)
    assert not drop_if_stopped(there, signalled=True, at_signal=file_id(path))
    assert load_trace(tmp_path, KEY) is not None
    # Written again since (as a mount that found a damaged one there records over it): its.
    _keep(tmp_path, cut=True)
    assert drop_if_stopped(there, signalled=False)


def test_a_trace_written_after_the_first_signal_is_dropped_one_before_it_kept(
    tmp_path: Path,
) -> None:
    # A quiet shutdown may outlast the settle time: what the mount kept then is the start.
    ours = RunTrace(trace_path(tmp_path, KEY), before=None)
    path = _keep(tmp_path, cut=False)
    assert not drop_if_stopped(
        ours, signalled=True, at_signal=file_id(path)
    )  # settled before the signal
    assert path.exists()
    at_signal = file_id(path)
    _keep(tmp_path, cut=False)  # settled again after it
    assert drop_if_stopped(ours, signalled=True, at_signal=at_signal)
    assert not path.exists()
    _keep(tmp_path, cut=False)  # no trace at the signal, one after it
    assert drop_if_stopped(ours, signalled=True, at_signal=None)


@pytest.mark.parametrize(
    ("status", "failed", "signalled", "want"),
    [
        (0, False, False, False),
        (1, False, False, False),
        (127, False, False, False),  # its command was not found: it ended by itself
        (128 + signal.SIGSEGV, False, False, False),  # a crash ends the workload where it is
        (0, False, True, True),  # a signal passed on, whatever the container made of it
        (128 + signal.SIGINT, False, False, True),  # `run -t`: Ctrl-C through its terminal
        (128 + signal.SIGKILL, False, False, True),  # out of memory, or an agent
        (128 + signal.SIGTERM, False, False, True),
        (None, True, False, True),  # an error, an interrupt before runc ran
    ],
)
def test_which_runs_did_not_end_by_themselves(
    status: int | None, failed: bool, signalled: bool, want: bool
) -> None:
    assert stopped(status, failed, signalled) is want


def test_a_trace_is_noted_only_where_the_runs_mount_records_one(tmp_path: Path) -> None:
    config = RuntimeConfig(entrypoint=("/bin/sh", "-c"), cmd=("exit 0",), working_dir="/srv")
    image = ImageManifest("registry.example:5000/app:1", IMAGE, (), config=config)
    args = argparse.Namespace(cache_dir=str(tmp_path / "cache"), work_dir=str(tmp_path))
    key = trace_key(IMAGE, config.entrypoint, ["sleep 60"], "/tmp")
    own = trace_key(IMAGE, config.entrypoint, config.cmd, "/srv")  # the image's own command
    assert key is not None and own is not None
    assert noted(args, image, ["sleep 60"], "/tmp", lazy=True) == RunTrace(
        trace_path(tmp_path / "cache", key), before=None
    )
    assert noted(args, image, ["sleep 60"], "/tmp", lazy=False) is None  # nothing records
    _keep(tmp_path / "cache", cut=True, key=own)
    assert noted(args, image, [], "", lazy=True) is None  # its mount replays that one
    damaged = trace_path(tmp_path / "cache", own)
    damaged.write_bytes(b"{torn")  # ignored by the mount, which records in its place
    assert noted(args, image, [], "", lazy=True) == RunTrace(damaged, file_id(damaged))
