"""Prefetch traces published beside an image by several machines, found by the command's key.

Each machine that publishes pushes the traces its own cache keeps, as an
artifact of its own (``lazyfs.publish.traces``): the newest artifact may
lack the command another machine ran. ``fetch_trace`` takes a key's trace
from the newest artifact that lists it, keeps it when it replaces the cut
one the mount has (in its cache or the store), and asks nothing when the
mount has a whole one. Against Debian's ``docker-registry`` (no Referrers
API: the artifacts are listed through the referrers tag), through a proxy
that counts the requests.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.index.trace import Read, Trace, encode, load_trace, store_trace
from lazyfs.publish.listing import MAX_TRIED
from lazyfs.publish.push import repository_push
from lazyfs.publish.traces import fetch_trace, publish_traces
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes
from providers.manifest import ImageManifest
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_push import RegistryPush
from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.registry_pulls import FAST
from tests.support.registry_seed import Seed
from tests.support.registry_servers import (
    Registry,
    copy_storage,
    run_registry,
    tamper_stored_blob,
)


@dataclass(frozen=True)
class Repo:
    """The seed's ``rich:oci`` image in a registry of the test's own, through a counter."""

    registry: Registry
    proxy: CountingProxy
    client: RegistryClient  # through the proxy, which answers GET and HEAD only
    manifest: ImageManifest
    push: RegistryPush  # to the registry itself

    @property
    def layer(self) -> Digest:
        """The image's biggest layer, of 1,989 bytes."""
        layer = max(self.manifest.layers, key=lambda layer: layer.size)
        assert layer.size == 1989, layer
        return layer.digest

    def key(self, command: str) -> str:
        return f"{self.manifest.digest}@{command * 32}"

    def publish(self, machine: Path, *traces: Trace) -> None:
        """A machine whose cache keeps ``traces`` publishes them."""
        for trace in traces:
            store_trace(machine / "cache", trace)
        assert publish_traces(machine / "cache", self.push, self.manifest) is not None

    def fetch(self, machine: Path, key: str, remote: Collection[Digest] | None = None) -> bool:
        """``fetch_trace`` for a machine whose mount reads the layers ``remote`` remotely,
        every layer by default."""
        store = Store(machine / "store")
        sizes = {
            layer.digest: layer.size
            for layer in self.manifest.layers
            if remote is None or layer.digest in remote
        }
        return fetch_trace(store, self.client, self.manifest, key, machine / "cache", sizes)

    def gets(self, what: str, since: int) -> int:
        """GET requests since ``since`` for ``what``: "manifests" or "blobs"."""
        return len(self.proxy.select(lambda e: e.method == "GET" and f"/{what}/" in e.path, since))


@pytest.fixture
def repo(seed: Seed, tmp_path: Path) -> Iterator[Repo]:
    proxy = CountingProxy()
    storage = copy_storage(seed.storage, tmp_path / "storage")
    with (
        run_registry(tmp_path, storage) as registry,
        run_counting_proxy(registry.url, proxy) as host,
    ):
        client = RegistryClient(RegistryOptions(registry=f"http://{host}", http=FAST))
        manifest = client.resolve(f"{host}/rich:oci")
        direct = RegistryClient(RegistryOptions(registry=registry.url, http=FAST))
        push = repository_push(direct, f"{registry.host}/rich:oci")
        yield Repo(registry, proxy, client, manifest, push)


def _stored(machine: Path, key: str) -> Trace | None:
    return load_trace(machine / "store", key)


def test_each_command_s_trace_is_found_in_the_newest_artifact_listing_it(
    repo: Repo, tmp_path: Path
) -> None:
    ran, other = repo.key("a"), repo.key("b")
    first = Trace(ran, (Read(repo.layer, 0, 4096),))
    # One machine ran `ran`, then another ran `other` and published after it.
    repo.publish(tmp_path / "one", first)
    repo.publish(tmp_path / "two", Trace(other, (Read(repo.layer, 0, 100),)))
    here = tmp_path / "here"
    assert repo.fetch(here, ran)
    assert _stored(here, ran) == first
    assert _stored(here, other) is None  # only the command this start runs
    # A whole one the mount has: nothing is asked.
    since = repo.proxy.mark()
    assert repo.fetch(here, ran)
    assert repo.proxy.select(since=since) == []


@pytest.mark.parametrize("where", ["cache", "store"])
def test_a_published_trace_replaces_the_mount_s_cut_one_only_when_it_goes_further(
    repo: Repo, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Weighed once, a blob is not fetched again against the same trace."""
    key = repo.key("a")
    here = tmp_path / "here"
    mine = Trace(key, (Read(repo.layer, 0, 1000),), cut=True)  # of a layer of 1,989 bytes
    store_trace(here / where, mine)
    repo.publish(tmp_path / "one", Trace(key, (Read(repo.layer, 0, 1249),), cut=True))
    assert repo.fetch(here, key)
    assert _stored(here, key) == (mine if where == "store" else None)
    since = repo.proxy.mark()
    assert repo.fetch(here, key)
    assert repo.gets("blobs", since) == 0
    further = Trace(key, (Read(repo.layer, 0, 1250),), cut=True)
    repo.publish(tmp_path / "two", further)
    assert repo.fetch(here, key)
    assert _stored(here, key) == further
    since = repo.proxy.mark()
    assert repo.fetch(here, key)
    assert repo.gets("blobs", since) == 0
    assert "WARNING" not in caplog.text


def test_ranges_the_mount_does_not_read_remotely_count_for_nothing(
    repo: Repo, tmp_path: Path
) -> None:
    """A published trace of other digests (layers remote elsewhere, windows, a hostile one)
    does not stand in for the mount's own cut trace."""
    key = repo.key("a")
    here = tmp_path / "here"
    mine = Trace(key, (Read(repo.layer, 0, 1000),), cut=True)
    store_trace(here / "cache", mine)
    elsewhere = Digest("sha256:" + "0e" * 32)
    repo.publish(tmp_path / "one", Trace(key, (Read(elsewhere, 0, 1 << 20),), cut=True))
    assert repo.fetch(here, key)
    assert _stored(here, key) is None


def test_the_machine_s_own_published_trace_is_not_fetched_back(repo: Repo, tmp_path: Path) -> None:
    """Nor does it hide an older artifact of another machine's, which went further."""
    key = repo.key("a")
    here = tmp_path / "here"
    repo.publish(here, Trace(key, (Read(repo.layer, 0, 1000),), cut=True))  # a short job's
    since = repo.proxy.mark()
    assert repo.fetch(here, key)
    assert repo.gets("blobs", since) == 0
    assert _stored(here, key) is None
    further = Trace(key, (Read(repo.layer, 0, 1250),), cut=True)
    repo.publish(tmp_path / "one", further)
    # Pushed again after it, with the trace of another command it ran since.
    repo.publish(here, Trace(repo.key("b"), (Read(repo.layer, 0, 10),)))
    since = repo.proxy.mark()
    assert repo.fetch(here, key)
    assert repo.gets("blobs", since) == 1  # the other machine's
    assert _stored(here, key) == further


def test_a_command_no_machine_ran_has_no_trace(repo: Repo, tmp_path: Path) -> None:
    repo.publish(tmp_path / "one", Trace(repo.key("a"), (Read(repo.layer, 0, 100),)))
    assert not repo.fetch(tmp_path / "here", repo.key("c"))


def test_an_unreadable_artifact_is_passed_over_for_an_older_one(
    repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = repo.key("a")
    older = Trace(key, (Read(repo.layer, 0, 100),))
    newer = Trace(key, (Read(repo.layer, 0, 200),))
    repo.publish(tmp_path / "one", older)
    repo.publish(tmp_path / "two", newer)
    tamper_stored_blob(repo.registry, digest_bytes(encode(newer)))
    here = tmp_path / "here"
    assert repo.fetch(here, key)
    assert _stored(here, key) == older
    assert "ignored" in caplog.text  # the newer one, with one warning


def test_artifacts_naming_other_commands_are_passed_over_without_a_request(
    repo: Repo, tmp_path: Path
) -> None:
    """More of them than a lookup reads (``MAX_TRIED``): each entry names its commands."""
    wanted = Trace(repo.key("a"), (Read(repo.layer, 0, 100),))
    repo.publish(tmp_path / "first", wanted)
    for n in range(MAX_TRIED + 1):
        other = Trace(f"{repo.manifest.digest}@{n:032x}", (Read(repo.layer, 0, 100),))
        repo.publish(tmp_path / f"other-{n}", other)
    here = tmp_path / "here"
    since = repo.proxy.mark()
    assert repo.fetch(here, wanted.key)
    assert _stored(here, wanted.key) == wanted
    # The referrers tag, and the one artifact that names the command.
    assert repo.gets("manifests", since) == 2


def test_artifacts_that_take_turns_as_the_newest_are_each_fetched_once(
    repo: Repo, tmp_path: Path
) -> None:
    """Two machines re-publish their traces, each a blob the mount weighed and declined."""
    key = repo.key("a")
    here = tmp_path / "here"
    store_trace(here / "cache", Trace(key, (Read(repo.layer, 0, 1000),), cut=True))
    one = Trace(key, (Read(repo.layer, 0, 1100),), cut=True)  # not a quarter further
    two = Trace(key, (Read(repo.layer, 100, 1100),), cut=True)
    repo.publish(tmp_path / "one", one)
    assert repo.fetch(here, key)
    repo.publish(tmp_path / "two", two)
    assert repo.fetch(here, key)
    # Each pushes again with another command's trace: its artifact is the newest in turn.
    since = repo.proxy.mark()
    for n, machine in enumerate(["one", "two"]):
        other = Trace(f"{repo.manifest.digest}@{n:032x}", (Read(repo.layer, 0, 10),))
        repo.publish(tmp_path / machine, other)
        assert repo.fetch(here, key)
    assert repo.gets("blobs", since) == 0
    assert _stored(here, key) is None


def test_a_declined_trace_is_weighed_again_when_other_layers_are_read_remotely(
    repo: Repo, tmp_path: Path
) -> None:
    """As when a layer read remotely before is local now, or the other way round."""
    key = repo.key("a")
    here = tmp_path / "here"
    store_trace(here / "cache", Trace(key, (Read(repo.layer, 0, 1000),), cut=True))
    other = max((lay for lay in repo.manifest.layers if lay.digest != repo.layer),
                key=lambda lay: lay.size)  # fmt: skip
    assert other.size >= 250, other
    published = Trace(key, (Read(repo.layer, 0, 1000), Read(other.digest, 0, 250)), cut=True)
    repo.publish(tmp_path / "one", published)
    # Counted on the biggest layer alone, it reads no further than the mount's.
    assert repo.fetch(here, key, remote={repo.layer})
    assert _stored(here, key) is None
    # On both, it reads a quarter further.
    assert repo.fetch(here, key)
    assert _stored(here, key) == published
