"""The ``lazyfs`` command: parses flags, calls the library, prints one line on error.

Global flags come before the command and are named as the Mesos agent names
them; each is accepted with underscores (``--work_dir``) and with dashes
(``--work-dir``), or from a ``LAZYFS_*`` variable (``cli_flags`` says how).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from backends.names import NAMES as BACKENDS
from lazyfs.cli_daemon import daemon_spec, run_daemon
from lazyfs.cli_flags import (
    ENV_PREFIX,
    FlagParser,
    global_flags,
    image_providers,
    layer_limits,
)
from lazyfs.cli_flags import registry_options as registry_options  # tests build options here
from lazyfs.cli_run import failure_line, run_trio
from lazyfs.fs import mount as lazy_mount
from lazyfs.images.appc import AppcProvider
from lazyfs.images.docker import DockerProvider
from lazyfs.images.spec import image_from_file, parse_image
from lazyfs.progress import Progress
from lazyfs.provision import devmount, runtime
from lazyfs.provision.provisioner import ImageProvider, Provisioner, ProvisionInfo
from lazyfs.store.disk import Store
from providers.appc_store import AppcStore
from providers.errors import NotFound, UsageError
from providers.image_pb2 import Image


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``lazyfs`` parser; global flags not given come from ``environ`` (default
    ``os.environ``) as ``LAZYFS_*``, else their defaults."""
    parser = FlagParser(
        prog="lazyfs",
        description="Provision container root filesystems from images.",
        epilog=(
            f"Every global flag may also be set in the environment as {ENV_PREFIX}NAME "
            f"(e.g. {ENV_PREFIX}WORK_DIR); the command line wins over the environment, "
            "the environment over the default."
        ),
        environ=environ,
    )
    for flag in global_flags(BACKENDS):
        parser.add_flag(flag)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def image_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "image", nargs="?", help="docker:REFERENCE, appc:NAME[,label=value...] or REFERENCE"
        )
        sub.add_argument("--image-file", "--image_file", dest="image_file", type=Path)
        sub.add_argument("--backend", choices=BACKENDS, default=None)
        sub.add_argument("--writable", action="store_true", help="ask for a writable rootfs")

    sub = commands.add_parser("provision", help="build a rootfs; prints JSON")
    sub.add_argument("container_id")
    image_args(sub)
    sub = commands.add_parser("pull", help="fetch an image into the store; prints its manifest")
    sub.add_argument(
        "image", nargs="?", help="docker:REFERENCE or REFERENCE (fetched again even if stored)"
    )
    sub.add_argument("--image-file", "--image_file", dest="image_file", type=Path)
    sub = commands.add_parser("destroy", help="unmount and remove a container's rootfs")
    sub.add_argument("container_id")
    sub = commands.add_parser("recover", help="keep the named containers, clean up the rest")
    sub.add_argument("--keep", nargs="*", default=[], metavar="ID")
    commands.add_parser("images", help="list the images in the store")
    sub = commands.add_parser("mount", help="mount an image at a directory to look inside")
    sub.add_argument("image", help="docker:REFERENCE, appc:NAME[,label=value...] or REFERENCE")
    sub.add_argument("mountpoint", type=Path, help="an existing empty directory")
    sub.add_argument(
        "--writable", action="store_true", help="copy-on-write; writes are discarded on umount"
    )
    sub.add_argument("--foreground", action="store_true", help="stay until Ctrl-C, then unmount")
    sub.add_argument("--suid", action="store_true", help="honour setuid bits (default: nosuid)")
    sub.add_argument("--dev", action="store_true", help="allow device nodes (default: nodev)")
    sub.set_defaults(image_file=None)
    sub = commands.add_parser("umount", help="take down what `lazyfs mount` mounted")
    sub.add_argument("mountpoint", type=Path)
    sub = commands.add_parser("run", help="provision, run a command with runc, destroy")
    image_args(sub)
    sub.add_argument(
        "--read-only",
        "--read_only",
        dest="read_only",
        action="store_true",
        help="a read-only rootfs (run is writable by default, as docker run)",
    )
    sub.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS")
    commands.add_parser("daemon", help="run the machine's cache daemon in the foreground")
    return parser


class App:
    """The objects one invocation needs, built from the global flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.work_dir = Path(args.work_dir).absolute()  # runc and mounts see other cwds
        store_dir = args.docker_store_dir or self.work_dir / "store" / "docker"
        limits = layer_limits(args)
        self.store = Store(Path(store_dir), limits)
        providers: dict[str, ImageProvider] = {}
        self.docker: DockerProvider | None = None
        for kind in image_providers(args):
            if kind == "docker":
                self.docker = DockerProvider(
                    self.store, args.docker_registry, registry_options(args)
                )
                providers["docker"] = self.docker
            else:
                appc_dir = args.appc_store_dir or self.work_dir / "store" / "appc"
                providers["appc"] = AppcProvider(
                    self.store, AppcStore(Path(appc_dir)), args.appc_simple_discovery_uri_prefix
                )
        # None: the provisioner chooses (a trial mount) only when it needs a backend.
        backend = args.image_provisioner_backend
        if backend is not None and backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        self.provisioner = Provisioner(
            self.work_dir, self.store, providers, backend, limits=limits, daemon=daemon_spec(args)
        )


def _image(args: argparse.Namespace) -> Image:
    if args.image_file is not None:
        if args.image:
            raise UsageError("give an image or --image-file, not both")
        return image_from_file(args.image_file)
    if not args.image:
        raise UsageError("no image given")
    return parse_image(args.image)


def _provision(app: App, args: argparse.Namespace) -> int:
    image = _image(args)

    def publish(info: ProvisionInfo) -> None:
        # Before the container counts as provisioned: a closed stdout undoes it.
        print(json.dumps(info.to_json(), indent=1), flush=True)

    run_trio(
        lambda: app.provisioner.provision(
            args.container_id,
            image,
            args.backend,
            writable=args.writable,
            progress=Progress(),
            publish=publish,
        )
    )
    return 0


def _pull(app: App, args: argparse.Namespace) -> int:
    image = _image(args)
    if image.type != Image.DOCKER:
        raise UsageError("pull takes a Docker image")
    if app.docker is None:
        raise UsageError("pull needs the docker image provider (--image_providers)")
    # A pull asks the registry again, as docker pull does; stored blobs are reused.
    image.cached = False
    docker = app.docker
    manifest = run_trio(lambda: docker.fetch(image, Progress()))
    print(json.dumps(manifest.to_json(), indent=1))
    return 0


def _mount(app: App, args: argparse.Namespace) -> int:
    image = _image(args)
    mounted = run_trio(
        lambda: devmount.mount_image(
            app.provisioner,
            app.work_dir,
            image,
            args.mountpoint,
            writable=args.writable,
            debug=args.debug,
            suid=args.suid,
            dev=args.dev,
            progress=Progress(),
        )
    )
    summary = {
        "mountpoint": str(mounted.mountpoint),
        "pid": mounted.pid,
        "writable": mounted.writable,
        "image": {
            "reference": mounted.image.reference,
            "digest": mounted.image.digest,
            "layers": [layer.digest for layer in mounted.image.layers],
        },
    }
    print(json.dumps(summary, indent=1), flush=True)
    if not args.foreground:
        return 0
    # SIGTERM takes Ctrl-C's path: unmount, then exit 0.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _follow_log(mounted.record / "mount.log", mounted.mountpoint)
    except KeyboardInterrupt:
        pass
    finally:
        devmount.unmount_image(app.work_dir, mounted.mountpoint)
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _follow_log(log: Path, mountpoint: Path) -> None:
    """Copy the mount process's log to stderr until the mount goes away."""
    with open(log, encoding="utf-8", errors="replace") as lines:
        while lazy_mount.is_mounted(mountpoint):
            text = lines.read()
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()
            else:
                time.sleep(0.2)


def _umount(app: App, args: argparse.Namespace) -> int:
    devmount.unmount_image(app.work_dir, args.mountpoint)
    return 0


def _destroy(app: App, args: argparse.Namespace) -> int:
    if not run_trio(lambda: app.provisioner.destroy(args.container_id)):
        raise NotFound(f"container {args.container_id} is not provisioned")
    return 0


def _recover(app: App, args: argparse.Namespace) -> int:
    report = run_trio(lambda: app.provisioner.recover(args.keep))
    print(
        json.dumps(
            {
                "kept": list(report.kept),
                "destroyed": list(report.destroyed),
                "busy": list(report.busy),
                "failed": dict(report.failed),
                "remounted": list(report.remounted),
                "broken": dict(report.broken),
            }
        )
    )
    for cid, why in report.failed:
        print(f"lazyfs: container {cid} could not be destroyed: {why}", file=sys.stderr)
    for cid, why in report.broken:
        print(f"lazyfs: container {cid} is broken: {why}", file=sys.stderr)
    return 1 if report.failed or report.broken else 0


def _images(app: App, _args: argparse.Namespace) -> int:
    rows = [("REFERENCE", "DIGEST", "LAYERS", "SIZE")]
    for image in app.store.images():
        rows.append(
            (
                image.reference,
                image.manifest.digest[:19],
                str(len(image.manifest.layers)),
                _human(image.size),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _run(app: App, args: argparse.Namespace) -> int:
    command = list(args.command_args)
    if command and command[0] == "--":
        command = command[1:]
    if args.read_only and args.writable:
        raise UsageError("give --read-only or --writable, not both")
    image = _image(args)
    container_id = f"run-{uuid.uuid4().hex[:12]}"
    # Held from provision to destroy: recover elsewhere sees the container busy.
    with app.provisioner.hold(container_id):
        info: ProvisionInfo = run_trio(
            lambda: app.provisioner.provision(
                container_id, image, args.backend, writable=not args.read_only, progress=Progress()
            )
        )
        bundle = app.provisioner.containers / container_id / "bundle"
        try:
            config = runtime.bundle_config(
                info.rootfs,
                info.config,
                command,
                # The copy backend's rootfs is writable whatever was asked: runc
                # makes it read-only then.
                readonly=args.read_only or not info.writable,
                # Relative: runc puts it under the cgroup of the process that runs it.
                cgroups_path=f"lazyfs/{container_id}",
            )
            runtime.write_bundle(bundle, config)
            return runtime.run_bundle(bundle, container_id, runtime.state_root(app.work_dir))
        finally:
            run_trio(lambda: app.provisioner.destroy(container_id))


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


COMMANDS: dict[str, Callable[[App, argparse.Namespace], int]] = {
    "provision": _provision,
    "pull": _pull,
    "destroy": _destroy,
    "recover": _recover,
    "images": _images,
    "run": _run,
    "mount": _mount,
    "umount": _umount,
    "daemon": lambda _app, args: run_daemon(args),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.WARNING,
            format="lazyfs: %(levelname)s: %(message)s",
        )
        return COMMANDS[args.command](App(args), args)
    except BaseException as exc:
        if isinstance(exc, BrokenPipeError):
            # Nothing more can reach stdout; keep the exit-time flush quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        failure = failure_line(exc)
        if failure is None:
            raise
        line, status = failure
        print(f"lazyfs: {line}", file=sys.stderr)
        return status
