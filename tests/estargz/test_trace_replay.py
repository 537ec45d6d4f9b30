"""Learned prefetch end to end: the first ``lazyfs run`` of an image records what it read,
the next one, on a fresh cache given that trace, replays it (issue 13).

The image is the eStargz Debian + python3 one (``tests.support.debian_like``,
converted by ``ctr-remote`` with no landmark prefetch of its own), in a
loopback registry reached through a byte-counting proxy. Each run has a
work dir and cache of its own, both empty, and no background fetch; the
second run's cache is given the first run's ``traces/`` directory only. The
daemon counts the times a mount's read waited on a fetch (its status'
``waits``, the misses): with the trace replayed before and while the
program starts, fewer of the reads wait. (Not the reads it got: a replayed
trace's partial chunks are read from the daemon's memory, ``lazyfs.cache.partial``,
and those reads wait on nothing once the replay has brought them.)

A trace published beside the image (``lazyfs.publish.traces``) is found
by a machine with an empty cache that trusts published indexes, and
replayed; one that does not trust them does not even look.

A ``lazyfs run`` with ``--publish_indexes`` pushes the trace it recorded
beside the image once its rootfs is gone (the mount keeps the trace as it
ends), and a later start with nothing new to push adds nothing.

A damaged trace in the cache is ignored with one line in the mount's log;
the mount serves right bytes, and records a good trace in its place.

A first run stopped by Ctrl-C before its workload settled keeps its trace cut, and the
next run, which replays it, keeps its own instead when it goes further.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.cache.remote import trace_key
from lazyfs.index.trace import TRACE_ARTIFACT_TYPE, TRACES_DIR, load_trace, trace_path
from lazyfs.publish.push import repository_push
from lazyfs.publish.traces import publish_traces, trace_blobs
from providers.manifest import OCI_MANIFEST, ImageManifest
from providers.referrers import list_referrers
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_push import RegistryPush
from tests.support import debian_like, images
from tests.support.cache_daemons import daemon_status, kill_recorded
from tests.support.containerd import Containerd, import_archive, push, to_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.registry_pulls import FAST
from tests.support.registry_servers import Registry, copy_storage, run_registry
from tests.support.tcp_counter import Counted, run_counting_proxy

pytestmark = pytest.mark.integration

IMAGE = "debpy:esgz"


@pytest.fixture(scope="module")
def python_registry(
    containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A loopback registry holding the eStargz Debian + python3 image as ``debpy:esgz``."""
    lacking = debian_like.missing()
    if lacking:
        pytest.skip(f"needs the host's Debian packages {', '.join(lacking)}")
    work = tmp_path_factory.mktemp("debpy-trace")
    layout = debian_like.build(work / "image")
    source, converted = "localhost/lazyfs/debpy-trace:src", "localhost/lazyfs/debpy-trace:esgz"
    import_archive(containerd, images.to_oci_archive(layout, "latest", work / "src.tar", source))
    to_estargz(containerd, source, converted)
    with run_registry(work, work / "storage") as registry:
        push(containerd, converted, f"{registry.host}/{IMAGE}")
        # Before any test publishes a trace to it: for tests that need a registry of their own.
        copy_storage(registry.storage, work / "pristine")
        yield registry


@pytest.fixture(scope="module")
def pristine(python_registry: Registry) -> Path:
    """A copy of ``python_registry``'s storage holding the image and nothing beside it."""
    return python_registry.storage.parent / "pristine"


@pytest.fixture(scope="module")
def link(python_registry: Registry) -> Iterator[Counted]:
    with run_counting_proxy(int(python_registry.host.rsplit(":", 1)[1])) as counted:
        yield counted


def _manifest(registry: Registry) -> ImageManifest:
    client = RegistryClient(RegistryOptions(registry=registry.url, http=FAST))
    return client.resolve(f"{registry.host}/{IMAGE}")


def _argv(link: Counted, work: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lazyfs", "--work_dir", str(work),
            "--docker_registry", f"http://{link.host}", "--cache_dir", str(work / "cache"),
            "--no_background_fetch", *args]  # fmt: skip


def _fresh(work: Path, traces: Path | None = None) -> None:
    """An empty work dir and cache; with ``traces``, a copy of them in the cache."""
    (work / "cache").mkdir(parents=True, mode=0o700)
    if traces is not None:
        shutil.copytree(traces, work / "cache" / TRACES_DIR)


@dataclass(frozen=True)
class Run:
    line: str
    crossed: int  # bytes from the registry when the line arrived
    waits: int  # times a read of the mount waited on a fetch: its misses


def _run(link: Counted, work: Path, *flags: str) -> Run:
    """``lazyfs run`` of the image's program, on a lazy mount; the daemon's count after it."""
    argv = _argv(link, work, *flags, "run", "--backend", "fuse", f"docker:{link.host}/{IMAGE}",
                 "--", *debian_like.COMMAND)  # fmt: skip
    start = link.down
    run = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert run.stdout is not None
        line = run.stdout.readline()
        crossed = link.down - start
        _, errors = run.communicate(timeout=300)
        assert run.returncode == 0, errors
        status = daemon_status(work / "cache")
        assert status is not None, "the cache daemon is gone"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        kill_recorded(work / "cache")
    return Run(line.strip(), crossed, status.waits)


def test_the_second_run_replays_the_first_runs_trace_and_misses_less(
    python_registry: Registry, link: Counted, tmp_path: Path
) -> None:
    need_fuse()
    manifest = _manifest(python_registry)
    config = manifest.config
    key = trace_key(manifest.digest, config.entrypoint, debian_like.COMMAND, config.working_dir)
    assert key is not None
    first_work, second_work = tmp_path / "first", tmp_path / "second"
    _fresh(first_work)
    first = _run(link, first_work)
    assert first.line == debian_like.APP_LINE
    trace = load_trace(first_work / "cache", key)
    assert trace is not None and trace.reads, "the first run kept no trace"
    assert {read.digest for read in trace.reads} <= {layer.digest for layer in manifest.layers}

    _fresh(second_work, first_work / "cache" / TRACES_DIR)
    second = _run(link, second_work)
    assert second.line == debian_like.APP_LINE
    print(f"first run: {first}; second, replaying {len(trace.reads)} ranges: {second}")
    assert second.waits < first.waits, (first, second)


@pytest.mark.parametrize(
    "damage",
    [b"\x00garbage\xff" * 100, b'{"lazyfs_trace": 1, "key": "sha256:'],
    ids=["garbage", "truncated"],
)
def test_a_damaged_trace_is_ignored_with_one_logged_line_and_the_mount_serves_right_bytes(
    python_registry: Registry, link: Counted, tmp_path: Path, damage: bytes
) -> None:
    need_fuse()
    manifest = _manifest(python_registry)
    config = manifest.config
    # What ``lazyfs provision`` traces: the image's own entrypoint and Cmd.
    key = trace_key(manifest.digest, config.entrypoint, config.cmd, config.working_dir)
    assert key is not None
    work = tmp_path / "work"
    _fresh(work)
    path = trace_path(work / "cache", key)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(damage)
    image = f"docker:{link.host}/{IMAGE}"
    try:
        done = subprocess.run(_argv(link, work, "provision", "c1", image, "--backend", "fuse"),
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        rootfs = Path(json.loads(done.stdout)["rootfs"])
        assert (rootfs / "srv/app/main.py").read_bytes() == debian_like.APP.encode()
        stdlib = Path(sys.base_prefix) / "lib" / "python3.11" / "json" / "decoder.py"
        if stdlib.is_file():  # this host's python3.11 is the image's
            assert (rootfs / "usr/lib/python3.11/json/decoder.py").read_bytes() == (
                stdlib.read_bytes()
            )
        logs = list((work / "provisioner").rglob("mount.log"))
        assert len(logs) == 1, logs
        lines = logs[0].read_text().splitlines()
        ignored = [line for line in lines if "ignored" in line and "trace" in line]
        assert len(ignored) == 1, lines
        assert str(path) in ignored[0]
    finally:
        gone = subprocess.run(_argv(link, work, "destroy", "c1"), capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        kill_recorded(work / "cache")
    assert gone.returncode == 0, gone.stderr
    # The mount recorded what it read instead, kept when it was unmounted.
    kept = load_trace(work / "cache", key)
    assert kept is not None and kept.reads


def test_a_trace_published_beside_the_image_is_replayed_only_when_trusted(
    python_registry: Registry, link: Counted, tmp_path: Path
) -> None:
    """Another machine (its own work dir, store and cache) finds the trace in the registry."""
    need_fuse()
    manifest = _manifest(python_registry)
    first = tmp_path / "first"
    _fresh(first)
    recorded = _run(link, first)
    client = RegistryClient(RegistryOptions(registry=python_registry.url, http=FAST))
    push = repository_push(client, manifest.reference)
    artifact = publish_traces(first / "cache", push, manifest)
    assert artifact is not None
    listed = list_referrers(push, manifest.digest, TRACE_ARTIFACT_TYPE)
    assert [entry.digest for entry in listed] == [artifact]
    # Pushing the same traces again changes nothing.
    assert publish_traces(first / "cache", push, manifest) == artifact
    assert len(list_referrers(push, manifest.digest)) == 1

    untrusting, trusting = tmp_path / "untrusting", tmp_path / "trusting"
    _fresh(untrusting)
    plain = _run(link, untrusting)
    _fresh(trusting)
    replayed = _run(link, trusting, "--trust_published_indexes")
    print(f"recorded: {recorded}; not trusted: {plain}; trusted: {replayed}")
    assert plain.line == replayed.line == debian_like.APP_LINE
    assert replayed.waits < plain.waits, (plain, replayed)
    assert (trusting / "store" / "docker" / TRACES_DIR).is_dir()
    assert not (untrusting / "store" / "docker" / TRACES_DIR).exists()  # nothing was asked


@dataclass(frozen=True)
class Own:
    """A registry of the test's own, holding the image alone, reached through a counter."""

    link: Counted
    manifest: ImageManifest
    push: RegistryPush  # to the image's repository

    def key(self, command: Sequence[str]) -> str:
        """The trace key of the image running ``command``."""
        config = self.manifest.config
        key = trace_key(self.manifest.digest, config.entrypoint, command, config.working_dir)
        assert key is not None
        return key


@contextmanager
def _own_registry(pristine: Path, tmp_path: Path) -> Iterator[Own]:
    storage = copy_storage(pristine, tmp_path / "storage")
    with run_registry(tmp_path / "registry", storage) as registry:
        port = int(registry.host.rsplit(":", 1)[1])
        with run_counting_proxy(port) as link:
            manifest = _manifest(registry)
            client = RegistryClient(RegistryOptions(registry=registry.url, http=FAST))
            yield Own(link, manifest, repository_push(client, manifest.reference))


def test_a_run_that_publishes_indexes_pushes_the_trace_it_recorded_once(
    pristine: Path, tmp_path: Path
) -> None:
    need_fuse()
    with _own_registry(pristine, tmp_path) as own:
        manifest, push = own.manifest, own.push
        key = own.key(debian_like.COMMAND)
        assert list_referrers(push, manifest.digest) == ()
        work = tmp_path / "work"
        _fresh(work)
        first = _run(own.link, work, "--publish_indexes")
        assert first.line == debian_like.APP_LINE
        recorded = trace_path(work / "cache", key).read_bytes()

        listed = list_referrers(push, manifest.digest)
        assert [entry.artifact_type for entry in listed] == [TRACE_ARTIFACT_TYPE], listed
        got = push.get_manifest(listed[0].digest, OCI_MANIFEST)
        assert got is not None
        blobs = trace_blobs(got[0], manifest.digest)
        assert list(blobs) == [key]
        assert push.get_blob(blobs[key].digest, len(recorded) + 1) == recorded

        # The same machine again: it replays its trace, records nothing new, pushes nothing.
        again = _run(own.link, work, "--publish_indexes")
        assert again.line == debian_like.APP_LINE
        assert list_referrers(push, manifest.digest) == listed


def _lazyfs(link: Counted, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_argv(link, work, *args), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_a_provision_that_publishes_indexes_pushes_traces_recorded_before(
    pristine: Path, tmp_path: Path
) -> None:
    """An agent's container still runs when ``provision`` returns: its trace goes next time."""
    need_fuse()
    with _own_registry(pristine, tmp_path) as own:
        own_link, manifest, push = own.link, own.manifest, own.push
        key = own.key(manifest.config.cmd)
        work = tmp_path / "work"
        _fresh(work)
        image = f"docker:{own_link.host}/{IMAGE}"
        try:
            done = _lazyfs(own_link, work, "provision", "c1", image, "--backend", "fuse")
            rootfs = Path(json.loads(done.stdout)["rootfs"])
            assert (rootfs / "srv/app/main.py").read_bytes() == debian_like.APP.encode()
            _lazyfs(own_link, work, "destroy", "c1")  # the mount keeps its trace as it ends
            assert load_trace(work / "cache", key) is not None
            assert list_referrers(push, manifest.digest) == ()  # not asked to publish

            _lazyfs(own_link, work, "--publish_indexes", "provision", "c2", image,
                    "--backend", "fuse")  # fmt: skip
            listed = list_referrers(push, manifest.digest)
            assert [entry.artifact_type for entry in listed] == [TRACE_ARTIFACT_TYPE]
            got = push.get_manifest(listed[0].digest, OCI_MANIFEST)
            assert got is not None and list(trace_blobs(got[0], manifest.digest)) == [key]
        finally:
            for container in ("c1", "c2"):
                subprocess.run(_argv(own_link, work, "destroy", container),
                               capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
                               check=False)  # fmt: skip
            kill_recorded(work / "cache")


def test_a_first_run_stopped_by_ctrl_c_keeps_a_cut_trace_the_next_run_completes(
    python_registry: Registry, link: Counted, tmp_path: Path
) -> None:
    """Its mount kept the reads of the workload's start, cut (``lazyfs.cli_run_trace``): the
    next run replays them, records again, and keeps its own, which goes further. The
    workload reads new files until it is stopped, so it has not settled when Ctrl-C comes;
    run with ``ALL`` (not part of the trace's key), it reads all of ``/usr`` and ends."""
    need_fuse()
    manifest = _manifest(python_registry)
    config = manifest.config
    code = ("import os, pathlib, time\n"
            "print('reading', flush=True)\n"
            "every = os.environ.get('ALL')\n"
            "top = pathlib.Path('/usr' if every else '/usr/lib/python3.11')\n"
            "for path in sorted(top.rglob('*')):\n"
            "    if path.is_file() and not path.is_symlink():\n"
            "        path.read_bytes()\n"
            "if not every:\n"
            "    time.sleep(120)\n")  # fmt: skip
    command = ("python3", "-c", code)
    key = trace_key(manifest.digest, config.entrypoint, command, config.working_dir)
    assert key is not None
    work = tmp_path / "work"
    _fresh(work)

    def run(*flags: str) -> subprocess.Popen[str]:
        argv = _argv(link, work, "run", *flags, "--backend", "fuse",
                     f"docker:{link.host}/{IMAGE}", "--", *command)  # fmt: skip
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    first, second = run(), None
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == "reading\n", first.communicate(timeout=300)
        first.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C reaches `lazyfs run`
        _, errors = first.communicate(timeout=300)
        assert first.returncode == 130, errors  # the container's status, ended by the signal
        stopped = load_trace(work / "cache", key)
        assert stopped is not None and stopped.cut, stopped

        second = run("-e", "ALL=1")
        out, errors = second.communicate(timeout=600)
        assert second.returncode == 0 and out == "reading\n", errors
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        kill_recorded(work / "cache")
    completed = load_trace(work / "cache", key)
    assert completed is not None and completed != stopped
    read = sum(r.length for r in completed.reads)
    print(f"stopped: {len(stopped.reads)} ranges; completed: {len(completed.reads)}, {read} bytes")
    assert read > sum(r.length for r in stopped.reads) * 1.25, (stopped, completed)
    assert list((work / "provisioner" / "containers").iterdir()) == []
