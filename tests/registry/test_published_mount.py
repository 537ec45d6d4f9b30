"""Lazy fuse mounts of an unmodified gzip image, through the index published beside it.

One machine pulls the rich image whole (fuse backend) and publishes its
index (``lazyfs index push``); a second, with an empty store, work dir and
cache, provisions it with ``--trust_published_indexes``: every layer stays
remote, read by range through the cache daemon, and the tree equals the
first machine's.  Without that flag no referrer is asked for, and even an
index with forged checkpoints or windows (which digests in a forged head
cannot catch) is never used: the image is pulled whole.  Tampered indexes
never give a wrong byte: a span digest that does not match is EIO for the
reads that need it, with a logged reason; an index blob that fails its
digest, or that names another layer, is refused and that layer is pulled
whole.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from lazyfs.fs.mount_layers import WHOLE_AT_MOUNT
from lazyfs.index.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    WINDOW,
    WINDOWS_MEDIA_TYPE,
    Span,
    decode,
    encode,
)
from lazyfs.index.artifact_manifest import CONFIG_BYTES, artifact_layers, artifact_manifest
from lazyfs.index.model import IndexEntry, Kind
from lazyfs.index.published import SET_ASIDE_NAME
from providers.digest import Digest, digest_bytes, hex_part
from providers.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor
from providers.referrers import referrers_tag
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.fuse_mounts import need_fuse
from tests.support.images import Entry, build_oci_image
from tests.support.lazy_machine import Machine, machine
from tests.support.registry_seed import Seed
from tests.support.registry_servers import (
    Registry,
    copy_storage,
    run_registry,
    skopeo_push,
    tamper_stored_blob,
)
from tests.support.tree import Node, diff_trees, tree_digest

TRUST = "--trust_published_indexes"


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


@dataclasses.dataclass
class Published:
    image: str
    artifact: Digest
    whole_tree: dict[str, Node]
    layers: list[Digest]


@pytest.fixture
def published(registry: Registry, seed: Seed, tmp_path: Path) -> Iterator[Published]:
    """The rich image pulled whole on one machine, mounted, described, and its index pushed."""
    need_fuse()
    image = f"{registry.host}/rich:oci"
    with machine(tmp_path / "first") as first:
        rootfs = first.provision("whole", f"docker:{image}")
        tree = tree_digest(rootfs)
        pushed = json.loads(first.run("index", "push", image).stdout)
    yield Published(image, Digest(pushed["artifact"]), tree, [Digest(d) for d in pushed["layers"]])


def _provision(second: Machine, image: str) -> tuple[Path, dict[str, object], str]:
    """``provision lazy IMAGE --backend fuse``: the rootfs, the info printed, the stderr."""
    done = second.run("provision", "lazy", f"docker:{image}", "--backend", "fuse")
    info: dict[str, object] = json.loads(done.stdout)
    second.rootfses["lazy"] = Path(str(info["rootfs"]))
    return Path(str(info["rootfs"])), info, done.stderr


def _store_blobs(work: Path) -> set[str]:
    root = work / "store" / "docker" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir()} if root.is_dir() else set()


def test_a_second_machine_mounts_lazily_the_same_tree(published: Published, tmp_path: Path) -> None:
    with machine(tmp_path / "second", TRUST) as second:
        rootfs, info, _ = _provision(second, published.image)
        assert sorted(info["remote_layers"]) == sorted(published.layers)  # type: ignore[call-overload]
        differences = diff_trees(published.whole_tree, tree_digest(rootfs))
        assert differences == []
        # Every file was read, and no layer blob came into the store: read by range.
        assert not _store_blobs(second.work) & set(published.layers)


def test_a_small_layer_is_fetched_whole_as_it_is_mounted(
    registry: Registry, tmp_path: Path
) -> None:
    """Before anything reads it, with background fetch off: the program need not wait on it.

    Its own image: no file of the small layer is one a start is predicted to read.
    """
    need_fuse()
    noise = random.Random(13).randbytes(300_000)  # does not compress: a large layer
    layout = build_oci_image(tmp_path / "image", [
        [Entry("usr", "dir"), Entry("usr/lib", "dir"), Entry("usr/lib/blob", data=noise)],
        [Entry("srv", "dir"), Entry("srv/app.py", data=b"print('hello')\n")],
    ])  # fmt: skip
    skopeo_push(layout, "latest", f"{registry.host}/small:latest", "oci")
    manifest = requests.get(f"{registry.url}/v2/small/manifests/latest",
                            headers={"Accept": OCI_MANIFEST}, timeout=10).json()  # fmt: skip
    big, small = (layer["digest"] for layer in manifest["layers"])
    assert [layer["size"] > WHOLE_AT_MOUNT for layer in manifest["layers"]] == [True, False]
    with machine(tmp_path / "first") as first:
        first.run("index", "push", f"{registry.host}/small:latest")
    with machine(tmp_path / "second", TRUST) as second:
        _, info, _ = _provision(second, f"{registry.host}/small:latest")
        assert info["remote_layers"] == [big, small]
        deadline = time.monotonic() + 30
        while True:
            shown = json.loads(second.run("cache", "--json").stdout)
            rows = {row["digest"]: row for row in shown["layers"]}
            # A poll the daemon did not answer shows the cache as it lies on disk.
            if shown["daemon_running"] and rows.get(small, {}).get("complete") == 1.0:
                break
            assert time.monotonic() < deadline, f"not fetched whole: {shown}"
            time.sleep(0.1)  # polling the daemon until its fetch is in
        assert shown["background_fetch"] is False
        # The large one is read as ever: nothing of it before a read.
        assert big not in rows or rows[big]["cached_bytes"] == 0, rows


def _client(registry: Registry) -> RegistryPush:
    return RegistryPush(RegistryHttp(HttpOptions()), registry.url, "rich", "test")


def _republish(registry: Registry, seed: Seed, blobs: dict[Digest, bytes]) -> None:
    """Publish an artifact of ``blobs`` (layer -> index blob) as the image's only referrer."""
    push = _client(registry)
    raw = requests.get(
        f"{registry.url}/v2/rich/manifests/{seed.rich_oci}",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    ).content
    subject = Descriptor(OCI_MANIFEST, Digest(seed.rich_oci), len(raw))
    config = push.push_blob(CONFIG_BYTES, CONFIG_MEDIA_TYPE)
    indexes = {layer: push.push_blob(data, INDEX_MEDIA_TYPE) for layer, data in blobs.items()}
    manifest = artifact_manifest(subject, config, indexes)
    digest = digest_bytes(manifest)
    push.put_manifest(digest, manifest, OCI_MANIFEST)
    listing = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
         "artifactType": ARTIFACT_TYPE}]}  # fmt: skip
    tag = referrers_tag(Digest(seed.rich_oci))
    push.put_manifest(tag, json.dumps(listing).encode(), OCI_INDEX)


def _index_blobs(registry: Registry, published: Published, seed: Seed) -> dict[Digest, bytes]:
    manifest = requests.get(
        f"{registry.url}/v2/rich/manifests/{published.artifact}",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    ).content
    found = artifact_layers(manifest, Digest(seed.rich_oci))
    return {
        layer: requests.get(f"{registry.url}/v2/rich/blobs/{blob.digest}", timeout=10).content
        for layer, blob in found.items()
    }


def _read_all(rootfs: Path, expected: dict[str, Node]) -> tuple[int, int]:
    """Read every file; (files read right, files refused with EIO); any wrong byte fails."""
    import hashlib

    right = refused = 0
    for rel, node in expected.items():
        if node.kind != "file":
            continue
        try:
            data = (rootfs / rel).read_bytes()
        except OSError as error:
            assert error.errno == errno.EIO, (rel, error)
            refused += 1
            continue
        assert hashlib.sha256(data).hexdigest() == node.sha256, rel
        right += 1
    return right, refused


def test_a_tampered_span_digest_is_eio_never_a_wrong_byte(
    published: Published, registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    blobs = _index_blobs(registry, published, seed)
    # The largest layer's spans all promise other bytes; the others stay honest.
    target = max(blobs, key=lambda layer: decode(blobs[layer]).index.tar_size)
    artifact = decode(blobs[target])
    spans = tuple(dataclasses.replace(s, sha256="0" * 64) for s in artifact.spans)
    blobs[target] = encode(dataclasses.replace(artifact, spans=spans))
    _republish(registry, seed, blobs)
    with machine(tmp_path / "second", TRUST) as second:
        rootfs, info, _ = _provision(second, published.image)
        assert sorted(info["remote_layers"]) == sorted(published.layers)  # type: ignore[call-overload]
        right, refused = _read_all(rootfs, published.whole_tree)
        assert refused > 0 and right > 0
        assert "does not match its published index" in second.mount_log("lazy")


@pytest.mark.parametrize("how", ["index blob not its digest", "another layer's index"])
def test_a_refused_index_means_that_layer_is_pulled_whole(
    how: str, published: Published, registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    blobs = _index_blobs(registry, published, seed)
    gzipped = [layer for layer, data in blobs.items() if decode(data).points]
    target = gzipped[0]
    if how == "index blob not its digest":
        manifest = requests.get(
            f"{registry.url}/v2/rich/manifests/{published.artifact}",
            headers={"Accept": OCI_MANIFEST},
            timeout=10,
        ).content
        listed = artifact_layers(manifest, Digest(seed.rich_oci))
        tamper_stored_blob(registry, listed[target].digest)
        reason = "its published index"
    else:
        other = next(layer for layer in blobs if layer != target)
        blobs[target] = blobs[other]
        _republish(registry, seed, blobs)
        reason = f"indexes layer {other}, not {target}"
    with machine(tmp_path / "second", TRUST) as second:
        rootfs, info, stderr = _provision(second, published.image)
        assert reason in stderr
        remote = set(info["remote_layers"])  # type: ignore[call-overload]
        assert target not in remote and remote  # the others stay lazy
        assert target in _store_blobs(second.work)
        assert diff_trees(published.whole_tree, tree_digest(rootfs)) == []


def test_without_a_published_index_the_image_is_pulled_whole(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    need_fuse()
    with machine(tmp_path / "only") as only:
        _, info, stderr = _provision(only, f"{registry.host}/rich:oci")
        assert info["remote_layers"] == []
        layers = info["image"]["layers"]  # type: ignore[index]
        assert set(layers) <= _store_blobs(only.work)
        assert "WARNING" not in stderr


def _forged_checkpoints(push: RegistryPush, blob: bytes) -> bytes:
    """A head like ``blob`` whose windows are all zeros, pushed, with their digests.

    Self-consistent: nothing in the artifact can tell these windows (what
    inflating starts from) from the real ones.  A layer too small for a
    window gets its one checkpoint moved to the blob's start instead.
    """
    artifact = decode(blob)
    if artifact.windows is None:
        first = dataclasses.replace(artifact.points[0], offset=0, bits=0)
        return encode(dataclasses.replace(artifact, points=(first, *artifact.points[1:])))
    forged = zlib.compress(bytes(WINDOW))
    points = []
    for number, point in enumerate(artifact.points):
        window = None
        if point.window is not None:
            window = Span(
                (number - 1) * len(forged), len(forged), hashlib.sha256(forged).hexdigest()
            )
        points.append(dataclasses.replace(point, window=window))
    windows = forged * (len(points) - 1)
    pushed = push.push_blob(windows, WINDOWS_MEDIA_TYPE)
    head = encode(dataclasses.replace(
        artifact, points=tuple(points), windows=pushed.digest, windows_size=len(windows)
    ))  # fmt: skip
    assert decode(head, layer=artifact.layer) is not None  # accepted as well-formed
    return head


@pytest.mark.parametrize("index", ["as published", "forged checkpoints"])
def test_without_trust_no_published_index_is_looked_up_or_used(
    index: str, published: Published, registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    if index == "forged checkpoints":
        blobs = _index_blobs(registry, published, seed)
        push = _client(registry)
        forged = {layer: _forged_checkpoints(push, data) if decode(data).points else data
                  for layer, data in blobs.items()}  # fmt: skip
        assert forged != blobs
        _republish(registry, seed, forged)
    proxy = CountingProxy()
    with run_counting_proxy(registry.url, proxy) as host, machine(tmp_path / "second") as second:
        rootfs, info, stderr = _provision(second, f"{host}/rich:oci")
        assert info["remote_layers"] == []
        assert set(published.layers) <= _store_blobs(second.work)
        assert diff_trees(published.whole_tree, tree_digest(rootfs)) == []
        asked = [e.path for e in proxy.select()]
        assert not [p for p in asked if "/referrers/" in p or "/manifests/sha256-" in p], asked
        assert "WARNING" not in stderr


def _republish_top_forged(
    registry: Registry,
    published: Published,
    seed: Seed,
    forge: Callable[[tuple[IndexEntry, ...]], tuple[IndexEntry, ...]],
) -> Digest:
    """Publish the image's indexes again, the top layer's entries as ``forge`` makes them
    (each index re-encoded whole: its head's digests still hold); that layer."""
    blobs = _index_blobs(registry, published, seed)
    top = next(layer for layer in reversed(published.layers) if layer in blobs)
    artifact = decode(blobs[top])
    index = dataclasses.replace(artifact.index, entries=forge(artifact.index.entries))
    blobs[top] = encode(dataclasses.replace(artifact, index=index))
    _republish(registry, seed, blobs)
    return top


def test_a_trusted_index_with_a_forged_file_entry_is_eio_for_that_file(
    published: Published, registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    found: list[IndexEntry] = []

    def forge(entries: tuple[IndexEntry, ...]) -> tuple[IndexEntry, ...]:
        # The top layer's first file with data: no layer above hides it.
        found.append(next(e for e in entries if e.kind is Kind.FILE and e.size))
        return tuple(
            dataclasses.replace(e, mode=0o4755, uid=0, gid=0) if e == found[0] else e
            for e in entries
        )

    top = _republish_top_forged(registry, published, seed, forge)
    name = "/".join(found[0].path)
    with machine(tmp_path / "second", TRUST) as second:
        rootfs, info, _ = _provision(second, published.image)
        assert top in info["remote_layers"]  # type: ignore[operator]
        with pytest.raises(OSError) as raised:
            (rootfs / name).read_bytes()
        assert raised.value.errno == errno.EIO
        assert "published index refused" in second.mount_log("lazy")
        expected = {rel: node for rel, node in published.whole_tree.items() if rel != name}
        _read_all(rootfs, expected)  # every other file: right bytes or EIO, never wrong


def test_an_index_the_tree_refuses_is_set_aside_and_the_next_start_reads_the_layer_whole(
    published: Published, registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    # Each entry passes the checks that need no other; the tree refuses a hardlink to no
    # file. Before, every later start of the image failed the same way.
    forged = IndexEntry(("forged-link",), Kind.HARDLINK, target="no/such/file")
    top = _republish_top_forged(registry, published, seed, lambda entries: (*entries, forged))
    with machine(tmp_path / "second", TRUST) as second:
        failed = second.run("provision", "lazy", f"docker:{published.image}", "--backend",
                            "fuse", check=False)  # fmt: skip
        assert failed.returncode != 0
        said = [line for line in failed.stderr.splitlines() if "forged-link" in line]
        assert len(said) == 1 and "no/such/file" in said[0]
        # The refused layer's index alone: the layers below it stay lazy.
        layers = second.work / "store" / "docker" / "layers"
        aside = [p.relative_to(layers).parts[0] for p in layers.glob(f"*/*/*/{SET_ASIDE_NAME}")]
        assert aside == [hex_part(top)]
        rootfs, _, _ = _provision(second, published.image)
        assert diff_trees(published.whole_tree, tree_digest(rootfs)) == []
        # Read whole this time, into the store (verified there as any blob) before the mount.
        assert top in _store_blobs(second.work)
