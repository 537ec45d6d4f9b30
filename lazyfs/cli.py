"""The ``lazyfs`` command: parses flags, calls the library, prints one line on error.

Global flags come before the command and are named as the Mesos agent names
them; each is accepted with underscores (``--work_dir``) and with dashes
(``--work-dir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from backends.names import NAMES as BACKENDS
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
from providers.registry import RegistryOptions, parse_platform
from providers.registry_auth import parse_docker_config
from providers.registry_http import HttpOptions
from providers.tar_stream import DEFAULT_MAX_LAYER_RATIO, DEFAULT_MAX_LAYER_SIZE, LayerLimits

DEFAULT_WORK_DIR = "/var/lib/lazyfs"
DEFAULT_REGISTRY = "https://registry-1.docker.io"


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: object) -> None:
    """Add ``--name_with_underscores`` and its dashed spelling as one option."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*spellings, dest=name, **kwargs)  # type: ignore[arg-type]


# --docker_registry_NAME: how long a registry may take (HttpOptions says why these
# defaults), as (NAME, type, default, may be 0 to turn it off, metavar, help).
REGISTRY_LIMITS = (
    ("timeout", float, 30.0, False, "SECONDS", "a request unanswered this long fails, retries too"),
    ("min_speed", int, 1024, True, "BYTES", "a transfer below this many bytes/s is cut"),
    ("min_speed_time", float, 30.0, False, "SECONDS", "the window min_speed is judged over"),
    ("blob_timeout", float, 0.0, True, "SECONDS", "a blob not fetched in this long fails"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyfs", description="Provision container root filesystems from images."
    )
    _flag(parser, "work_dir", default=DEFAULT_WORK_DIR, help="where containers' work lives")
    _flag(parser, "image_providers", default="docker", help="comma-separated: docker, appc")
    _flag(parser, "image_provisioner_backend", default=None, help=f"one of {', '.join(BACKENDS)}")
    _flag(
        parser,
        "docker_registry",
        default=DEFAULT_REGISTRY,
        help="a directory of image tarballs (/dir or file:///dir), or a registry URL",
    )
    _flag(parser, "docker_store_dir", default=None, help="default: WORK_DIR/store/docker")
    _flag(parser, "docker_config", default=None, help="docker config.json: a path or inline JSON")
    _flag(
        parser,
        "docker_registry_mirrors",
        default="",
        help="comma-separated registry URLs tried in order before the upstream for docker.io",
    )
    _flag(
        parser,
        "docker_insecure_registries",
        default="",
        help="comma-separated host[:port]s that may fall back to plain HTTP (loopback always may)",
    )
    _flag(
        parser,
        "docker_registry_ca_file",
        default=None,
        help="PEM CA bundle to verify registries with, instead of the system CAs",
    )
    for name, kind, default, off, metavar, text in REGISTRY_LIMITS:
        text += f" (default {default:g}{'; 0: never' if off else ''})"
        _flag(
            parser,
            f"docker_registry_{name}",
            type=kind,
            default=default,
            metavar=metavar,
            help=text,
        )
    _flag(parser, "appc_store_dir", default=None, help="default: WORK_DIR/store/appc")
    _flag(
        parser,
        "appc_simple_discovery_uri_prefix",
        default="",
        help="where simple discovery finds ACIs: an http(s):// URL prefix or a directory",
    )
    _flag(parser, "platform", default=None, help="os/arch[/variant] to pick from image indexes")
    _flag(
        parser,
        "max_layer_size",
        default=f"{DEFAULT_MAX_LAYER_SIZE >> 30}GB",
        help="the most a layer may unpack to: bytes, or a number with B, KB, MB, GB or TB",
    )
    _flag(
        parser,
        "max_layer_ratio",
        default=str(DEFAULT_MAX_LAYER_RATIO),
        help="the most times its compressed size a layer may unpack to (64 MB always may)",
    )
    parser.add_argument("--debug", action="store_true", help="log what happens on stderr")
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
        for kind in filter(None, (p.strip() for p in args.image_providers.split(","))):
            if kind == "docker":
                self.docker = DockerProvider(
                    self.store, args.docker_registry, registry_options(args)
                )
                providers["docker"] = self.docker
            elif kind == "appc":
                appc_dir = args.appc_store_dir or self.work_dir / "store" / "appc"
                providers["appc"] = AppcProvider(
                    self.store, AppcStore(Path(appc_dir)), args.appc_simple_discovery_uri_prefix
                )
            else:
                raise UsageError(f"unknown image provider {kind!r} (known: docker, appc)")
        # None: the provisioner chooses (a trial mount) only when it needs a backend.
        backend = args.image_provisioner_backend
        if backend is not None and backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        self.provisioner = Provisioner(self.work_dir, self.store, providers, backend, limits=limits)


# As Mesos writes byte sizes: 1024-based units.
_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def layer_limits(args: argparse.Namespace) -> LayerLimits:
    """The bounds on unpacking a layer from ``--max_layer_size`` and ``--max_layer_ratio``."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?B)?", args.max_layer_size.strip(), re.I)
    ratio = args.max_layer_ratio.strip()
    if found is None:
        raise UsageError(f"--max_layer_size {args.max_layer_size!r}: want bytes, e.g. 300GB")
    if not ratio.isdigit() or int(ratio) < 1:
        raise UsageError(f"--max_layer_ratio {args.max_layer_ratio!r}: want a whole number")
    number, unit = found.groups()
    size = int(float(number) * _UNITS[(unit or "B").upper()])
    if size < 1:
        raise UsageError(f"--max_layer_size {args.max_layer_size!r}: want more than 0 bytes")
    return LayerLimits(max_size=size, max_ratio=int(ratio))


def _split(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """The registry puller's settings from the global flags."""
    credentials = parse_docker_config(args.docker_config) if args.docker_config else {}
    limits = {name: getattr(args, f"docker_registry_{name}") for name, *_ in REGISTRY_LIMITS}
    for name, _kind, _default, off, _metavar, _text in REGISTRY_LIMITS:
        value = limits[name]
        if not (math.isfinite(value) and (value > 0 or (off and value == 0))):
            least = "0 or more" if off else "more than 0"
            raise UsageError(f"--docker_registry_{name} {value}: expected {least}")
    return RegistryOptions(
        registry=args.docker_registry,
        mirrors=_split(args.docker_registry_mirrors),
        insecure_registries=frozenset(_split(args.docker_insecure_registries)),
        platform=parse_platform(args.platform) if args.platform else None,
        http=HttpOptions(ca_file=args.docker_registry_ca_file, credentials=credentials, **limits),
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


COMMANDS = {
    "provision": _provision,
    "pull": _pull,
    "destroy": _destroy,
    "recover": _recover,
    "images": _images,
    "run": _run,
    "mount": _mount,
    "umount": _umount,
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
