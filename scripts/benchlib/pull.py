"""The pull measurement: lazyfs' registry puller against `skopeo copy`.

A `docker-registry` started for the run on a free loopback port holds the
image, pushed once (untimed) as Docker v2 schema 2, so its layers are gzip
as a registry serves them. Each timed run then fetches the whole image into
a new, empty place: lazyfs into a new store (manifest, config, every layer
downloaded and verified), skopeo into a new OCI layout directory.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import trio

from benchlib.measure import Contender, Context, Result, Timing, compare
from benchlib.util import now, run, scratch_dir, settle
from lazyfs.images.docker import DockerProvider
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.image_pb2 import Image


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def registry(work: Path) -> Iterator[str]:
    """A docker-registry on loopback with storage under ``work``; yields host:port."""
    port = _free_port()
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {work / 'storage'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with open(work / "registry.log", "wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"docker-registry exited {process.returncode}")
                try:
                    requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise RuntimeError("docker-registry did not start in 20s") from None
                    time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure_pull(ctx: Context) -> Result:
    with scratch_dir(ctx.scratch, "registry-") as work, registry(work) as host:
        name = f"{host}/bench/{ctx.image.name}:{ctx.image.tag}"
        run(
            [
                "skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2",
                f"oci:{ctx.image.oci_layout}:{ctx.image.tag}", f"docker://{name}",
            ]
        )  # fmt: skip
        contenders = [Contender("lazyfs pull", True, _lazyfs_once(ctx, host, name))]
        if ctx.peers:
            contenders.append(Contender("skopeo copy", False, _skopeo_once(ctx, name)))
        label = f"pull {ctx.image.name}"
        return Result("pull", ctx.image.name, compare(contenders, ctx.runs, ctx.log, label))


def _lazyfs_once(ctx: Context, host: str, name: str) -> Callable[[], Timing]:
    image = Image(type=Image.DOCKER)
    image.docker.name = name

    def once() -> Timing:
        with scratch_dir(ctx.scratch, "pull-lazyfs-") as work:
            provider = DockerProvider(Store(work / "store"), f"http://{host}")
            settle()
            start = now()
            manifest = trio.run(provider.fetch, image, Progress(enabled=False))
            seconds = now() - start
            size = sum(layer.size for layer in manifest.layers)
            return Timing(seconds, facts={"layers": len(manifest.layers), "bytes": size})

    return once


def _skopeo_once(ctx: Context, name: str) -> Callable[[], Timing]:
    def once() -> Timing:
        with scratch_dir(ctx.scratch, "pull-skopeo-") as work:
            settle()
            start = now()
            run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                 f"docker://{name}", f"oci:{work / 'layout'}:{ctx.image.tag}"])  # fmt: skip
            return Timing(now() - start)

    return once
