"""Building a rootfs (``lazyfs.provision.build``): what runs beside the backend, and the record
the provisioner writes there (``RecordAhead``) before the build is done; and what the
provisioner hands a lazy provider's fetch."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

import lazyfs.fs.mount_ahead
from backends.base import Rootfs
from lazyfs.cache.remote import trace_key
from lazyfs.cache.spawn import DaemonSpec
from lazyfs.fs.mount import load_ahead_code
from lazyfs.images.docker_published import TraceHook
from lazyfs.progress import Progress
from lazyfs.provision.build import RecordAhead, RootfsBuilder, Workload
from lazyfs.provision.lazy import LazyBlobs
from lazyfs.provision.provisioner import Provisioner
from lazyfs.provision.records import ProvisionInfo
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BackendError
from providers.image_pb2 import Image
from providers.manifest import OCI_LAYER_GZIP, ImageManifest, Layer
from providers.source import LocalBlobSource

LAYER = Layer(Digest("sha256:" + "ab" * 32), OCI_LAYER_GZIP, 10, None)
MANIFEST = ImageManifest("busybox:latest", Digest("sha256:" + "cd" * 32), (LAYER,))
# Bounds a wait that the code under test ends at once when it works.
PATIENCE = 30.0


class Backend:
    """Builds only once ``go`` is set: whatever sets it ran while the build was under way."""

    name = "fake"

    def __init__(self) -> None:
        self.go = threading.Event()

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        if not self.go.wait(PATIENCE):
            raise AssertionError("nothing ran beside the build")
        rootfs.mkdir()
        return Rootfs(rootfs, self.name, writable=writable)

    def destroy(self, rootfs: Path) -> None:
        rootfs.rmdir()


def builder(home: Path, backend: Backend) -> RootfsBuilder:
    async def fetch(image: Image, workload: Workload) -> ImageManifest:
        return MANIFEST

    return RootfsBuilder(
        home,
        "fake",
        backend,
        Progress(enabled=False),
        fetch,
        lambda m, c: object(),  # type: ignore[arg-type,return-value]
    )


async def test_beside_runs_while_the_backend_builds_knowing_what_it_will_return(
    tmp_path: Path,
) -> None:
    backend = Backend()
    seen: list[tuple[ImageManifest, Path, tuple[Digest, ...]]] = []

    async def beside(manifest: ImageManifest, rootfs_dir: Path, remote: tuple[Digest, ...]) -> None:
        seen.append((manifest, rootfs_dir, remote))
        backend.go.set()

    manifest, rootfs, remote = await builder(tmp_path, backend)(
        Image(), True, "a rootfs", beside=beside
    )
    assert seen == [(manifest, rootfs.path, remote)] and rootfs.path.is_dir()


async def test_a_failure_beside_fails_the_build(tmp_path: Path) -> None:
    backend = Backend()

    async def beside(manifest: ImageManifest, rootfs_dir: Path, remote: tuple[Digest, ...]) -> None:
        backend.go.set()
        raise OSError(28, "No space left on device")

    # As a build alone fails: with the error itself, which the CLI says in one line.
    with pytest.raises(OSError, match="No space left"):
        await builder(tmp_path, backend)(Image(), True, "a rootfs", beside=beside)


async def test_a_failed_build_fails_with_its_own_error(tmp_path: Path) -> None:
    class Refusing(Backend):
        def provision(
            self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
        ) -> Rootfs:
            raise BackendError("the fuse backend needs /dev/fuse")

    ahead = RecordAhead(tmp_path, "c1", "fake", True)
    with pytest.raises(BackendError, match="needs /dev/fuse"):
        await builder(tmp_path, Refusing())(Image(), True, "a rootfs", beside=ahead)


async def test_when_both_fail_one_error_is_raised_and_the_other_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Refusing(Backend):
        def provision(
            self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
        ) -> Rootfs:
            if not self.go.wait(PATIENCE):
                raise AssertionError("nothing ran beside the build")
            raise BackendError("the fuse backend needs /dev/fuse")

    backend = Refusing()

    async def beside(manifest: ImageManifest, rootfs_dir: Path, remote: tuple[Digest, ...]) -> None:
        backend.go.set()
        raise OSError(28, "No space left on device")

    with pytest.raises((OSError, BackendError)) as raised:
        await builder(tmp_path, backend)(Image(), True, "a rootfs", beside=beside)
    other = "No space left" if isinstance(raised.value, BackendError) else "needs /dev/fuse"
    assert other in caplog.text


async def test_record_ahead_writes_the_record_of_the_rootfs_being_built(tmp_path: Path) -> None:
    ahead = RecordAhead(tmp_path, "c1", "fake", True)
    rootfs_dir = tmp_path / "backends" / "fake" / "rootfses" / "r"
    await ahead(MANIFEST, rootfs_dir, ())
    expected = ProvisionInfo("c1", rootfs_dir, "fake", True, MANIFEST)
    assert ahead.written == expected
    assert json.loads((tmp_path / "info.json").read_text()) == expected.to_json()
    assert (tmp_path / "info.json").stat().st_mode & 0o777 == 0o600


async def test_what_is_written_ahead_is_what_the_build_returns(tmp_path: Path) -> None:
    backend = Backend()
    backend.go.set()
    ahead = RecordAhead(tmp_path, "c1", "fake", False)
    manifest, rootfs, remote = await builder(tmp_path, backend)(
        Image(), False, "a rootfs", beside=ahead
    )
    # The provisioner writes again only what differs (``ahead.written != info``).
    assert ahead.written == ProvisionInfo(
        "c1", rootfs.path, "fake", rootfs.writable, manifest, remote
    )


class LazyFake:
    """A provider that is lazy (``LazyProvider``): what each fetch was given."""

    def __init__(self) -> None:
        self.given: list[tuple[str, object]] = []
        self.traced: list[TraceHook | None] = []

    async def fetch(self, image: Image, progress: Progress) -> ImageManifest:
        self.given.append(("fetch", None))
        return MANIFEST

    async def fetch_lazy(
        self,
        image: Image,
        progress: Progress,
        ahead: Callable[[], None] | None = None,
        traced: TraceHook | None = None,
    ) -> ImageManifest:
        self.given.append(("fetch_lazy", ahead))
        self.traced.append(traced)
        return MANIFEST


@pytest.mark.parametrize("daemon", [True, False])
def test_a_lazy_fetch_hands_the_provider_the_mount_code_to_load_ahead(
    tmp_path: Path, daemon: bool
) -> None:
    provider = LazyFake()
    spec = DaemonSpec(tmp_path / "cache", ()) if daemon else None
    provisioner = Provisioner(tmp_path / "work", Store(tmp_path / "store"), {"docker": provider},
                              "copy", daemon=spec)  # fmt: skip
    image = Image(type=Image.DOCKER)
    image.docker.name = "busybox"
    trio.run(partial(provisioner.fetch, image, lazy=True))
    trio.run(partial(provisioner.fetch, image, lazy=False))
    # Without a daemon nothing is read lazily: a plain fetch, and nothing to load.
    lazy = [("fetch_lazy", load_ahead_code)] if daemon else [("fetch", None)]
    assert provider.given == [*lazy, ("fetch", None)]


def test_a_traced_lazy_fetch_begins_the_replay_once_the_provider_has_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider is handed what begins the replay of the trace a mount of the image
    running the command would replay (``ReplayAhead``): by the same key, of its remote
    layers. A fetch traced for nothing is handed nothing."""
    provider = LazyFake()
    spec = DaemonSpec(tmp_path / "cache", ())
    provisioner = Provisioner(tmp_path / "work", Store(tmp_path / "store"), {"docker": provider},
                              "fuse", daemon=spec)  # fmt: skip
    image = Image(type=Image.DOCKER)
    image.docker.name = "busybox"
    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr(lazyfs.fs.mount_ahead, "replay_early", lambda *args: sent.append(args))
    progress = Progress(enabled=False)
    for workload in [(["app", "-v"], "/srv"), (None, "")]:
        fetch = partial(provisioner._fetch, provider, image, progress, lazy=True, workload=workload)
        trio.run(fetch)
    hook, untraced = provider.traced
    assert untraced is None and hook is not None
    hook(MANIFEST, MANIFEST.layers)
    key = trace_key(MANIFEST.digest, (), ["app", "-v"], "/srv")
    assert key is not None and blobs_key(provisioner, ["app", "-v"], "/srv") == key
    assert hook.key(MANIFEST) == key  # the trace the provider looks for beside the image
    [(cache_dir, store, layers, origins, sent_key)] = sent
    assert (cache_dir, sent_key, layers) == (spec.cache_dir, key, MANIFEST.layers)
    assert store == provisioner.blobs.store.root  # where fetched traces are kept
    assert set(origins) == {LAYER.digest}  # type: ignore[call-overload]  # not in the store


def blobs_key(provisioner: Provisioner, command: list[str], working_dir: str) -> str | None:
    """The trace key the mount of MANIFEST running ``command`` is given (``blobs_for``)."""
    blobs = provisioner.blobs_for("fuse", MANIFEST, command, working_dir)
    assert isinstance(blobs, LazyBlobs)
    return blobs.remote.trace
