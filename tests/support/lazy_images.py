"""eStargz images made to measure for the lazy-fetch tests, pushed to a loopback registry.

ctr-remote's ``optimize --no-optimize`` always writes ``.no.prefetch.landmark``
(and profiling a workload to get a ``.prefetch.landmark`` needs a container
run, which failed here on such images), so the prefetch and background-fetch
tests build their layers with ``tests.support.estargz_writer`` and push them
over the Registry API: an OCI manifest whose layers carry the
``toc.digest`` annotation, and a config naming each layer's diff_id (the
digest of the gunzipped blob), or a wrong one when a test asks for it.

``lazyfs`` runs the CLI the way a user does, with the registry, work and
cache directories of a test.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.estargz_writer import Blob
from tests.support.registry_servers import push_oci_image

TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
ROOT = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def diff_id(blob: Blob) -> str:
    return sha256(gzip.decompress(blob.data))


@dataclass(frozen=True)
class Pushed:
    layers: tuple[str, ...]  # the layers' blob digests, bottom first
    sizes: tuple[int, ...]


def push_estargz_image(
    registry_url: str,
    repository: str,
    tag: str,
    blobs: Sequence[Blob],
    *,
    diff_ids: Sequence[str] | None = None,
) -> Pushed:
    """Push an image of the eStargz ``blobs``; ``diff_ids`` overrides what the config says."""
    named = list(diff_ids) if diff_ids is not None else [diff_id(blob) for blob in blobs]
    layers = [(blob.data, {TOC_ANNOTATION: blob.toc_digest}) for blob in blobs]
    digests = push_oci_image(registry_url, repository, tag, layers, named, {"Cmd": ["/bin/true"]})
    return Pushed(tuple(digests), tuple(len(blob.data) for blob in blobs))


def lazyfs_argv(work: Path, registry_url: str, *args: str, background: bool = True) -> list[str]:
    """The command line of ``lazyfs ARGS`` with this test's work dir, cache dir and registry."""
    argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "--docker_registry",
            registry_url, "--cache_dir", str(work / "cache")]  # fmt: skip
    if not background:
        argv.append("--no_background_fetch")
    return [*argv, *args]


def lazyfs(
    work: Path, registry_url: str, *args: str, background: bool = True
) -> subprocess.CompletedProcess[str]:
    """``lazyfs ARGS`` with this test's work dir, cache dir and registry."""
    return subprocess.run(
        lazyfs_argv(work, registry_url, *args, background=background), cwd=ROOT,
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
