"""Lazy starts of an unmodified gzip image through the index published beside it (issue 13).

The Debian + python3 image (``tests.support.debian_like``: gzip layers as
umoci writes them, about 36 MB) is pushed by ``skopeo`` to a loopback
registry twice: as Docker v2 schema 2 and as OCI.  A first machine publishes
each form's index (``lazyfs index push``: it pulls the image whole into its
own store, builds the index there and pushes it).  A second machine, with an
empty store, work dir and cache and ``--trust_published_indexes``, reaches
the registry only through a byte-counting proxy, which is what the image
reference names, so the cache daemon's range reads cross it too:

- ``lazyfs run`` of the image prints its program's line while under a
  quarter of the image has crossed (no background fetch: what the program
  needs only);
- a fuse provision keeps every layer remote, and its tree equals what
  ``umoci unpack`` makes of the image;
- the prefetch trace a first run records names the layers' windows blobs
  too, and a machine given it replays every range of it.

A registry that holds no index: a trusting machine pulls the image whole,
as a machine that does not trust does, with nothing more asked of the
registry than the referrers lookup.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.cache.remote import trace_key
from lazyfs.index.trace import TRACES_DIR, load_trace
from providers.registry import RegistryClient, RegistryOptions
from tests.support import debian_like, images
from tests.support.counting_proxy import CountingProxy
from tests.support.counting_proxy import run_counting_proxy as run_http_proxy
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import Machine, machine
from tests.support.registry_pulls import FAST
from tests.support.registry_servers import Registry, copy_storage, run_registry, skopeo_push
from tests.support.tcp_counter import Counted, run_counting_proxy
from tests.support.tree import Node, diff_trees, tree_digest

pytestmark = pytest.mark.integration

TRUST = "--trust_published_indexes"
TAG = "latest"
FORMATS = ("v2s2", "oci")
# What a kernel or filesystem adds on its own, not the image.
IGNORED_XATTRS = ("security.selinux",)


@dataclass(frozen=True)
class Pushed:
    registry: Registry
    pristine: Path  # a copy of its storage before any index was published to it
    unpacked: dict[str, Node]  # umoci unpack's tree of the image
    layers: tuple[str, ...]  # layer digests, the same in both forms
    image_bytes: int  # the sum of the layers' sizes


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """The image in a loopback registry as ``debpy:v2s2`` and ``debpy:oci``, with no index."""
    lacking = debian_like.missing()
    if lacking:
        pytest.skip(f"needs the host's Debian packages {', '.join(lacking)}")
    need_fuse()
    work = tmp_path_factory.mktemp("debpy-gzip")
    layout = debian_like.build(work / "image", TAG)
    rootfs = images.umoci_unpack(layout, TAG, work / "bundle")
    unpacked = tree_digest(rootfs, ignore_xattrs=IGNORED_XATTRS)
    with run_registry(work, work / "storage") as registry:
        for fmt in FORMATS:
            skopeo_push(layout, TAG, f"{registry.host}/debpy:{fmt}", fmt)
        pristine = copy_storage(work / "storage", work / "pristine")
        manifest = RegistryClient(RegistryOptions(registry=registry.url, http=FAST)).resolve(
            f"{registry.host}/debpy:oci"
        )
        layers = tuple(layer.digest for layer in manifest.layers)
        size = sum(layer.size for layer in manifest.layers)
        yield Pushed(registry, pristine, unpacked, layers, size)


@pytest.fixture(scope="module")
def published(pushed: Pushed, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """``pushed``, with each form's index published from a first machine's store."""
    with machine(tmp_path_factory.mktemp("first")) as first:
        for fmt in FORMATS:
            done = json.loads(
                first.run("index", "push", f"{pushed.registry.host}/debpy:{fmt}").stdout
            )
            assert sorted(done["layers"]) == sorted(pushed.layers), done
    return pushed


def _store_blobs(work: Path) -> set[str]:
    root = work / "store" / "docker" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir()} if root.is_dir() else set()


def _run_until_line(second: Machine, image: str, link: Counted) -> tuple[str, int, str]:
    """``lazyfs run --backend fuse IMAGE``: its first line, the bytes down by then, stderr."""
    run = second.popen("run", "--backend", "fuse", f"docker:{image}")
    try:
        assert run.stdout is not None
        line = run.stdout.readline()
        crossed = link.down
        _, errors = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, errors
    return line.strip(), crossed, errors


@dataclass(frozen=True)
class LazyRun:
    line: str
    crossed: int  # bytes from the registry, when the line arrived
    image_bytes: int
    stored: frozenset[str]  # layer blobs in the second machine's store afterwards


@pytest.fixture(scope="module", params=FORMATS)
def lazy_run(
    request: pytest.FixtureRequest, published: Pushed, tmp_path_factory: pytest.TempPathFactory
) -> LazyRun:
    """``lazyfs run --backend fuse`` of one form on a second machine, through the counter, once."""
    fmt = request.param
    port = int(published.registry.host.rsplit(":", 1)[1])
    work = tmp_path_factory.mktemp(f"second-{fmt}")
    with run_counting_proxy(port) as link, machine(work, TRUST) as second:
        line, crossed, _ = _run_until_line(second, f"{link.host}/debpy:{fmt}", link)
        stored = frozenset(_store_blobs(second.work) & set(published.layers))
    return LazyRun(line, crossed, published.image_bytes, stored)


def test_a_second_machine_prints_the_programs_line_reading_by_range(lazy_run: LazyRun) -> None:
    assert lazy_run.line == debian_like.APP_LINE
    # No layer came into the second machine's store whole, nor crossed whole.
    assert lazy_run.stored == frozenset()
    assert lazy_run.crossed < lazy_run.image_bytes * 3 / 4, lazy_run


def test_under_a_quarter_of_the_image_crossed_by_then(lazy_run: LazyRun) -> None:
    """About 24% (8.8 of 36.4 MB; 41% with index format 1, whose windows crossed whole)."""
    assert lazy_run.crossed < lazy_run.image_bytes / 4, lazy_run


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_second_machine_mounts_lazily_the_tree_umoci_unpacks(
    fmt: str, published: Pushed, tmp_path: Path
) -> None:
    with machine(tmp_path / "second", TRUST) as second:
        done = second.run("provision", "lazy", f"docker:{published.registry.host}/debpy:{fmt}",
                          "--backend", "fuse")  # fmt: skip
        info = json.loads(done.stdout)
        second.rootfses["lazy"] = rootfs = Path(info["rootfs"])
        assert sorted(info["remote_layers"]) == sorted(published.layers), info
        assert (
            diff_trees(published.unpacked, tree_digest(rootfs, ignore_xattrs=IGNORED_XATTRS)) == []
        )
        # Every file was read, and still no layer blob came into the store.
        assert not _store_blobs(second.work) & set(published.layers)


def _asked(proxy: CountingProxy) -> list[str]:
    return sorted(f"{e.method} {e.path}" for e in proxy.select())


def _lookups(asked: list[str]) -> list[str]:
    """The requests of a referrers lookup: the Referrers API, then the referrers tag."""
    return [line for line in asked if "/referrers/" in line or "/manifests/sha256-" in line]


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_a_published_index_a_trusting_machine_pulls_whole(
    fmt: str, pushed: Pushed, tmp_path: Path
) -> None:
    storage = copy_storage(pushed.pristine, tmp_path / "storage")
    trees: dict[bool, dict[str, Node]] = {}
    asked: dict[bool, list[str]] = {}
    for trust in (False, True):
        proxy = CountingProxy()
        flags = (TRUST,) if trust else ()
        with (
            run_registry(tmp_path / f"registry-{trust}", storage) as registry,
            run_http_proxy(registry.url, proxy) as host,
            machine(tmp_path / f"trust-{trust}", *flags) as one,
        ):
            done = one.run("provision", "whole", f"docker:{host}/debpy:{fmt}", "--backend", "fuse")
            info = json.loads(done.stdout)
            one.rootfses["whole"] = rootfs = Path(info["rootfs"])
            assert info["remote_layers"] == [], info
            assert set(pushed.layers) <= _store_blobs(one.work)
            assert "WARNING" not in done.stderr, done.stderr
            trees[trust] = tree_digest(rootfs, ignore_xattrs=IGNORED_XATTRS)
            asked[trust] = _asked(proxy)
    assert diff_trees(pushed.unpacked, trees[True]) == []
    # Today's pull, and one referrers listing beside it, shared by the index
    # and the trace lookups: the Referrers API (404 from docker-registry),
    # then the referrers tag; unfiltered, once each. Nothing else asked.
    lookups = _lookups(asked[True])
    digest = json.loads(done.stdout)["image"]["digest"]
    assert lookups == sorted([
        f"GET /v2/debpy/referrers/{digest}",
        f"GET /v2/debpy/manifests/{digest.replace(':', '-')}",
    ]), asked[True]  # fmt: skip
    assert [line for line in asked[True] if line not in lookups] == asked[False]
    assert _lookups(asked[False]) == []


def test_a_trace_recorded_through_a_published_index_is_replayed_whole(
    published: Pushed, tmp_path: Path
) -> None:
    """A replay leaves out what its mount does not read, and the windows blobs' ranges: the
    mount asks for the windows its intervals need itself, as pieces."""
    image = f"{published.registry.host}/debpy:oci"
    manifest = RegistryClient(RegistryOptions(registry=published.registry.url, http=FAST)).resolve(
        image
    )
    config = manifest.config
    key = trace_key(manifest.digest, config.entrypoint, config.cmd, config.working_dir)
    assert key is not None
    with machine(tmp_path / "first", TRUST) as first:
        assert first.run("run", "--backend", "fuse", f"docker:{image}").stdout.strip() == (
            debian_like.APP_LINE
        )
        trace = load_trace(first.cache_dir, key)
    assert trace is not None, "the first run kept no trace"
    windows = {read.digest for read in trace.reads} - set(published.layers)
    assert windows, "the trace names no windows blob: nothing inflated from a checkpoint?"
    with machine(tmp_path / "second", TRUST) as second:
        second.cache_dir.mkdir(parents=True, mode=0o700)
        shutil.copytree(first.cache_dir / TRACES_DIR, second.cache_dir / TRACES_DIR)
        rootfs = second.provision("c", f"docker:{image}")
        assert (rootfs / "srv/app/main.py").read_bytes() == debian_like.APP.encode()
        said = [line for line in second.mount_log("c").splitlines() if "replaying" in line]
        replayed = [read for read in trace.reads if read.digest not in windows]
        # The first run's trace is a short job's, cut: recorded again beside the replay.
        wanted = f"replaying the trace of {key} (recorded again): {len(replayed)} ranges"
        assert said and said[0].endswith(wanted), said
