"""The ``lazyfs`` command: parses flags, calls the library, prints one line on error.

Global flags come before or after the command and are named as the Mesos
agent names them; each is accepted with underscores (``--work_dir``) and with
dashes (``--work-dir``), or from a ``LAZYFS_*`` variable (``cli_flags`` says
how); ``cli_parser`` holds the commands and their help.

Every command loads what it uses when it runs, not before: this module
and the parser load no backend, registry client, provider or provisioner,
so ``provision`` of a local image loads no HTTP library and ``daemon`` (which
a lazy mount starts and waits for) none of the provisioner.
``tests/unit/test_cli_imports.py`` holds them to it.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from backends.names import NAMES as BACKENDS
from lazyfs import cli_cache, cli_parser
from lazyfs.cli_daemon import cache_dir, daemon_spec, image_gc_chore, run_daemon
from lazyfs.cli_flags import cwd_gone, image_providers, parse_size, path_flag, source, work_dir
from lazyfs.cli_registry import docker_registry, parsed_url, unauthorized_hint
from lazyfs.cli_registry import registry_options as registry_options  # tests build options here
from lazyfs.cli_run import (
    READER_GONE,
    failure_line,
    run_handed_over,
    run_stoppable,
    run_trio,
    stdout_reader_gone,
)
from providers.errors import LazyfsError, NotFound, Unauthorized, UsageError
from providers.layer_limits import LayerLimits
from providers.private_dir import private_dir

if TYPE_CHECKING:
    from lazyfs.images.docker import DockerProvider
    from lazyfs.provision.provisioner import Provisioner, ProvisionInfo
    from lazyfs.store.disk import Store
    from providers.image_pb2 import Image
    from providers.manifest import ImageManifest
    from providers.registry_options import RegistryOptions


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``lazyfs`` parser (``cli_parser``) for the backends there are."""
    return cli_parser.build_parser(BACKENDS, environ)


class App:
    """The objects one invocation needs, built from the global flags when first used.

    Checking the flags touches nothing; the store and the provisioner are
    made (with their directories) only by the commands that use them, so
    that ``images`` creates nothing on disk (but a root directory
    to be made in a directory others may write: ``lazyfs.cli_roots``).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work_dir = work_dir(args)  # absolute: runc and mounts see other cwds
        self.store_dir = path_flag(args, "docker_store_dir", self.work_dir / "store" / "docker")
        # Checked as parsed (``cli_flags.Flag``): a bad one is a usage error, status 2.
        self.limits = LayerLimits(parse_size(args.max_layer_size) or 0, int(args.max_layer_ratio))
        self.kinds = image_providers(args)
        self.appc_dir = path_flag(args, "appc_store_dir", self.work_dir / "store" / "appc")
        from lazyfs.cli_roots import check_roots

        roots = {"work_dir": self.work_dir, "docker_store_dir": self.store_dir,
                 "appc_store_dir": self.appc_dir, "cache_dir": cache_dir(args)}  # fmt: skip
        check_roots(args, roots)
        # Roots an older lazyfs or a umask left open are closed at every start,
        # whatever the command; one that does not exist is not made here.
        for root in (self.work_dir, self.store_dir, self.appc_dir):
            if root.is_dir():
                try:
                    private_dir(root)
                except OSError as error:
                    # One on a read-only filesystem can be read (ps, images), not closed.
                    if error.errno != errno.EROFS:
                        raise
        # Set when the docker provider is made: a refusal then says where credentials were.
        self.registry_options: RegistryOptions | None = None
        # None: the provisioner chooses (a trial mount) only when it needs a backend.
        self.backend = args.image_provisioner_backend
        if self.backend is not None and self.backend not in BACKENDS:
            where = source(args, "image_provisioner_backend")
            raise UsageError(
                f"{where}: unknown backend {self.backend!r} (known: {', '.join(BACKENDS)})"
            )

    @cached_property
    def store(self) -> Store:
        from lazyfs.store.disk import Store

        return Store(self.store_dir, self.limits)

    @cached_property
    def provisioner(self) -> Provisioner:
        from lazyfs.images.docker import DockerProvider
        from lazyfs.provision.provisioner import ImageProvider, Provisioner

        args = self.args
        providers: dict[str, ImageProvider] = {}
        for kind in self.kinds:
            if kind == "docker":
                self.registry_options = registry_options(args)
                registry = docker_registry(args)
                after = None
                if args.publish_indexes and registry.startswith(("http://", "https://")):
                    from lazyfs.cli_index import index_publisher

                    after = index_publisher(self.store, registry, self.registry_options)
                providers["docker"] = DockerProvider(
                    self.store,
                    registry,
                    self.registry_options,
                    after,
                    trust_published=args.trust_published_indexes,
                )
            else:
                from lazyfs.images.appc import AppcProvider  # loads Appc discovery's HTTP
                from providers.appc_store import AppcStore

                prefix = args.appc_simple_discovery_uri_prefix
                parsed_url(prefix, source(args, "appc_simple_discovery_uri_prefix"))
                appc = AppcStore(self.appc_dir, self.limits)  # an ACI unpacks as a layer may
                providers["appc"] = AppcProvider(self.store, appc, prefix)
        return Provisioner(
            self.work_dir,
            self.store,
            providers,
            self.backend,
            limits=self.limits,
            daemon=daemon_spec(args),
        )

    @property
    def docker(self) -> DockerProvider | None:
        """The Docker provider, unless ``--image_providers`` leaves it out."""
        from lazyfs.images.docker import DockerProvider

        found = self.provisioner.providers.get("docker")
        return found if isinstance(found, DockerProvider) else None


def _image(args: argparse.Namespace) -> Image:
    from lazyfs.images.spec import image_from_file, parse_image

    if args.image_file is not None:
        if args.image:
            raise UsageError("give an image or --image-file, not both")
        return image_from_file(args.image_file)
    try:
        return parse_image(args.image)  # given: the parser refuses a command line without one
    except FileNotFoundError:  # a local image's relative path, from a deleted directory
        raise cwd_gone(args.image) from None


def _provision(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_early import started_ahead
    from lazyfs.cli_volumes import container_request
    from lazyfs.progress import Progress

    spec = container_request(args, lambda: _image(args))

    def publish(info: ProvisionInfo) -> None:
        # Before the container counts as provisioned: a closed stdout undoes it, and
        # that is said (a listing whose reader goes away ends quietly: main).
        try:
            print(json.dumps(info.to_json(), indent=1), flush=True)
        except BrokenPipeError:
            cid = info.container_id
            raise LazyfsError(
                f"stdout was closed before container {cid} was handed over: not provisioned"
            ) from None

    _need_fuse(args.backend or app.backend)
    with started_ahead(args, spec.image, args.backend or app.backend, app.store_dir.absolute()):
        # Once provisioned (printed, marked complete), a Ctrl-C ends nothing: it stands.
        info: ProvisionInfo = run_handed_over(
            lambda: app.provisioner.provision(
                args.container_id,
                spec.image,
                args.backend,
                writable=args.writable,
                volumes=spec.volumes,
                progress=Progress(),
                publish=publish,
            )
        )
    if args.publish_indexes:  # traces earlier starts of the image recorded here
        from lazyfs.cli_index import publish_run_traces

        run_stoppable(f"{info.image.reference}: publishing its prefetch traces",
                      lambda: publish_run_traces(args, app.docker, info.image))  # fmt: skip
    return 0


def _need_fuse(backend: str | None) -> None:
    if backend == "fuse":  # that /dev/fuse opens, said before a pull and a container record
        from backends.fuse import check_fuse_device

        check_fuse_device()


def _pull(app: App, args: argparse.Namespace) -> int:
    from lazyfs.progress import Progress
    from lazyfs.store.usage_lock import in_use
    from providers.image_pb2 import Image

    image = _image(args)
    if image.type != Image.DOCKER:
        raise UsageError("pull takes a Docker image")
    if app.docker is None:
        raise UsageError("pull needs the docker image provider (--image_providers)")
    # A pull asks the registry again, as docker pull does; stored blobs are reused.
    image.cached = False
    docker = app.docker
    # Held shared while pulling: a GC pass meanwhile would take blobs it found stored.
    progress = Progress()
    with in_use(app.store.root):
        manifest = run_trio(lambda: docker.fetch(image, progress))
    if progress.fetched == 0:
        # As docker pull says "Image is up to date": on stderr, stdout is the manifest. Of
        # the layers, not the image: a first pull may find them all, from other images.
        line = f"lazyfs: {manifest.reference}: every layer already stored, nothing fetched"
        print(line, file=sys.stderr)
    print(json.dumps(manifest.to_json(), indent=1))
    return 0


def _mount(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_early import started_ahead
    from lazyfs.cli_mount import list_mounts, run_mount
    from lazyfs.provision import devmount

    if args.image is None:  # nor a mount point (``cli_parser``): list the mounts
        return list_mounts(app.work_dir, as_json=args.json)
    image = _image(args)
    # What the user typed first (--writable as a user, the mount point), then the
    # machine (/dev/fuse); both before the daemon and the pull.
    devmount.check_mountpoint(args.mountpoint, suid=args.suid, dev=args.dev, writable=args.writable)
    _need_fuse("fuse")
    # `mount` is always the fuse backend's.
    with started_ahead(args, image, "fuse", app.store_dir.absolute()):
        return run_mount(args, image, lambda: app.store, lambda: app.provisioner, app.work_dir)


def _umount(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_mount import run_umount

    return run_umount(args, app.work_dir)


def _destroy(app: App, args: argparse.Namespace) -> int:
    from lazyfs.provision.force_stop import before_destroy
    from lazyfs.provision.records import check_container_id

    check_container_id(args.container_id)  # before it names a path
    # A container runc still runs stays, or with --force is killed, and its run waited
    # for, first: a rootfs never goes from under a live one (``force_stop``).
    killed = before_destroy(app.work_dir, app.provisioner, args.container_id, force=args.force)
    # A run whose container was killed destroys it itself: not found then is done.
    if not run_trio(lambda: app.provisioner.destroy(args.container_id)) and not killed:
        raise NotFound(f"container {args.container_id} is not provisioned")
    return 0


def _recover(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_recover import run_recover

    return run_recover(app.provisioner, args)


def _images(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_images import run_images

    store = lambda: app.store  # noqa: E731 - made only when used: listing creates nothing

    def local(manifest: ImageManifest) -> str:
        return cli_cache.local_share(manifest, app.store.has_blob, cache_dir(app.args))

    return run_images(args, app.store_dir, store, app.work_dir, stale_tree=_stale_tree, local=local)


def _gc(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_gc import run_gc  # the GC code loads for this command only

    return run_gc(args, lambda: app.store, app.work_dir, stale_tree=_stale_tree)


def _stale_tree(name: str) -> bool:
    """``backends.extracted.stale_name``, loaded by the commands that call it only."""
    from backends.extracted import stale_name

    return stale_name(name)


def _run(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_container import run_container

    _need_fuse(args.backend or app.backend)
    return run_container(app, args, lambda: _image(args))


def _index(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_index import run_index

    return run_index(args, app.store, app.docker, app.registry_options)


def _ps(app: App, args: argparse.Namespace) -> int:
    from lazyfs.cli_ps import ps

    return ps(app.work_dir, as_json=args.json)


COMMANDS: dict[str, Callable[[App, argparse.Namespace], int]] = {
    "provision": _provision,
    "pull": _pull,
    "destroy": _destroy,
    "recover": _recover,
    "images": _images,
    "gc": _gc,
    "index": _index,
    "ps": _ps,
    "run": _run,
    "mount": _mount,
    "umount": _umount,
    "daemon": lambda app, args: run_daemon(
        args, every=image_gc_chore(args, lambda: app.store, app.work_dir, _stale_tree)
    ),
    "cache": lambda app, args: cli_cache.run_cache(args, app.store_dir, lambda: app.store),
}


def _help(args: argparse.Namespace) -> int:
    topic = cli_parser.help_topic(args)
    (build_parser() if topic is None else topic).print_help()
    return 0


def _flush_stdout() -> None:
    # None when lazyfs was started with its stdout closed (`>&-`): nothing to write then.
    if sys.stdout is not None:
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    app: App | None = None
    args: argparse.Namespace | None = None
    try:
        try:
            argv = sys.argv[1:] if argv is None else argv
            args = cli_parser.parse_command_line(build_parser(), argv)
            if args.command == "help":
                status = _help(args)
            else:
                logging.basicConfig(
                    level=logging.DEBUG if args.debug else logging.WARNING,
                    format="lazyfs: %(levelname)s: %(message)s",
                )
                app = App(args)
                status = COMMANDS[args.command](app, args)
        except SystemExit:
            _flush_stdout()  # what --help or --version printed: as below
            raise
        # Written here, not at exit, so that a reader gone away is answered as below.
        _flush_stdout()
        return status
    except BaseException as exc:
        if stdout_reader_gone():
            # Nothing more can reach stdout; keep the exit-time flush quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if isinstance(exc, BrokenPipeError):
                # `lazyfs images | head -1`: whatever printed, no line, as SIGPIPE ends docker.
                return READER_GONE
        failure = failure_line(exc)
        if failure is None:
            raise
        line, status = failure
        refused = isinstance(exc, Unauthorized) and exc.status in (401, 403)
        if refused and args is not None and app is not None and app.registry_options is not None:
            line += unauthorized_hint(args, app.registry_options.http.credentials)
        print(f"lazyfs: {line}", file=sys.stderr)
        # run's own errors, before or without its command, are docker run's 125: a
        # script tells them from the command's status 1. Signals keep theirs.
        return 125 if status == 1 and getattr(args, "command", None) == "run" else status
