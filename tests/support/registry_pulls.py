"""Small helpers shared by the registry tests: provisioning and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lazyfs.images.docker import DockerProvider
from lazyfs.progress import Progress
from lazyfs.provision.provisioner import Provisioner
from lazyfs.store.disk import Store
from providers.image_pb2 import Image
from providers.registry import RegistryOptions
from providers.registry_http import HttpOptions
from tests.support.fault_proxy import Faults
from tests.support.tree import diff_trees, tree_digest

# Fast retries: the faults are injected, not real, so waiting proves nothing.
FAST = HttpOptions(backoff=0.01, max_backoff=0.05)


def docker(name: str, *, cached: bool = True, config: str = "") -> Image:
    image = Image(type=Image.DOCKER, cached=cached)
    image.docker.name = name
    if config:
        image.docker.config = config
    return image


def provider(work: Path, url: str, options: RegistryOptions | None = None) -> DockerProvider:
    store = Store(work / "store")
    return DockerProvider(store, url, options or RegistryOptions(http=FAST))


async def provision_tree_diff(
    work: Path, url: str, name: str, expected: Path, options: RegistryOptions | None = None
) -> list[str]:
    """Provision ``name`` from ``url`` with the copy backend; differences from ``expected``."""
    docker_provider = provider(work, url, options)
    prov = Provisioner(work, docker_provider.store, {"docker": docker_provider}, "copy")
    info = await prov.provision("c1", docker(name), progress=Progress())
    try:
        return diff_trees(tree_digest(expected), tree_digest(info.rootfs))
    finally:
        await prov.destroy("c1")


def lazyfs(work: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def ranges(faults: Faults) -> list[str]:
    """The Range headers of the requests for the faulted blob, in order."""
    return [h.get("Range", "") for path, h in faults.seen if faults.target in path]
