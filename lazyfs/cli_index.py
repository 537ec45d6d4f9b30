"""``lazyfs index push IMAGE``: publish an image's layer indexes beside it in its registry.

The image is pulled into the store first (what is stored is reused, as
``lazyfs pull`` does), each gzip or tar layer's index is built there if it
is missing, and the indexes go to the image's repository as one OCI
artifact whose subject is the image manifest (``lazyfs.publish.push``).
Prints what was published as JSON.  Needs push rights to the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyfs.cli_run import run_trio
from providers.errors import LazyfsError, UsageError

if TYPE_CHECKING:
    from lazyfs.images.docker import DockerProvider
    from lazyfs.store.disk import Store
    from providers.manifest import ImageManifest
    from providers.registry import RegistryOptions

log = logging.getLogger(__name__)

MakeParser = Callable[..., argparse.ArgumentParser]


def add_index_parser(sub: argparse.ArgumentParser, command: MakeParser) -> None:
    """``index`` (``sub``) and its actions; ``command(subparsers, name, text)`` makes one."""
    actions = sub.add_subparsers(
        dest="index_action", required=True, metavar="ACTION", help="what to do with indexes"
    )
    push = command(
        actions, "push", "pull an image, then push its layer indexes beside it; prints JSON"
    )
    push.add_argument("image", help="a registry image: REFERENCE or docker://REFERENCE")


def index_publisher(
    store: Store, registry: str, options: RegistryOptions
) -> Callable[[ImageManifest], None]:
    """What ``--publish_indexes`` runs after a registry image is pulled whole (blocking)."""
    from lazyfs.publish.push import publish_indexes, repository_push
    from providers.registry import RegistryClient

    client = RegistryClient(dataclasses.replace(options, registry=registry.rstrip("/")))

    def publish(image: ImageManifest) -> None:
        done = publish_indexes(store, repository_push(client, image.reference), image)
        log.info("%s: published the indexes of %d layers", image.reference, len(done.layers))

    return publish


def publish_run_traces(
    args: argparse.Namespace, docker: DockerProvider | None, image: ImageManifest
) -> None:
    """``--publish_indexes`` after a ``run`` or ``provision`` of ``image``: push the prefetch
    traces this machine's cache keeps of it that its repository lacks, or no longer lists
    (none, each looked for since it was pushed: nothing is asked of the registry). A
    failure is a warning: the start stands. Blocking."""
    if not args.publish_indexes or docker is None or image.reference.startswith("/"):
        return  # not asked, or an image from a directory or archive
    if not docker.registry.startswith(("http://", "https://")):
        return
    from lazyfs.cli_daemon import cache_dir
    from lazyfs.publish.traces import publish_due, publish_pending

    try:
        if not publish_due(cache_dir(args), image):
            return  # the common case: no registry client made
        from providers.registry import RegistryClient

        options = dataclasses.replace(docker.options, registry=docker.registry.rstrip("/"))
        done = publish_pending(cache_dir(args), RegistryClient(options), image)
        if done is not None:  # None: nothing needed pushing
            log.info("%s: published its prefetch traces as %s", image.reference, done)
    except (LazyfsError, OSError) as error:
        log.warning("%s: publishing its prefetch traces failed: %s", image.reference, error)


def run_index(
    args: argparse.Namespace,
    store: Store,
    docker: DockerProvider | None,
    options: RegistryOptions | None,
) -> int:
    """``index push``: exit status 0, or raises a LazyfsError the CLI prints in one line."""
    from lazyfs.images.spec import parse_image
    from lazyfs.progress import Progress
    from lazyfs.publish.push import publish_indexes, repository_push
    from lazyfs.store.usage_lock import in_use
    from providers.image_pb2 import Image
    from providers.registry import RegistryClient
    from providers.transports import parse_transport

    image = parse_image(args.image)
    if image.type != Image.DOCKER or parse_transport(image.docker.name) is not None:
        raise UsageError("index push takes a registry image (REFERENCE or docker://REFERENCE)")
    if docker is None or options is None:
        raise UsageError("index push needs the docker image provider (--image_providers)")
    if not docker.registry.startswith(("http://", "https://")):
        raise UsageError("index push needs --docker_registry to be a registry URL")
    client = RegistryClient(dataclasses.replace(options, registry=docker.registry.rstrip("/")))
    # Held shared from pull to push: a GC pass meanwhile would take the blobs.
    with in_use(store.root):
        manifest = run_trio(lambda: docker.fetch(image, Progress()))
        push = repository_push(client, manifest.reference)
        done = publish_indexes(store, push, manifest)
        # The learned prefetch traces this machine's cache keeps of the image, beside them.
        from lazyfs.cli_daemon import cache_dir
        from lazyfs.publish.traces import publish_traces

        traces = publish_traces(cache_dir(args), push, manifest)
    report = {
        "image": manifest.reference,
        "subject": done.subject,
        "artifact": done.artifact,
        "layers": list(done.layers),
        "skipped": list(done.skipped),
        "referrers_tag_updated": done.tag_updated,
        "traces": traces,
    }
    print(json.dumps(report, indent=1))
    return 0
