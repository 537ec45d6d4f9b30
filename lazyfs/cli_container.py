"""``lazyfs run``: a container provisioned, run by runc in the foreground, then destroyed.

As ``docker run --rm``: the container's exit status is the command's. What
would stop the command stops the container and leaves nothing behind, at
any point: Ctrl-C, SIGTERM and SIGHUP cancel a provision (``run_trio``),
reach the container through runc while it runs (``runtime.run_bundle``),
and raise in between (``stopped_by_signals``), so that the destroy in the
``finally`` runs whenever they come.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyfs.cli_run import run_trio, stopped_by_signals
from providers.errors import UsageError

if TYPE_CHECKING:
    from lazyfs.cli import App
    from lazyfs.provision.provisioner import ProvisionInfo
    from providers.image_pb2 import Image


def run_container(app: App, args: argparse.Namespace, image: Callable[[], Image]) -> int:
    """Run ``args.command_args`` (or the image's command) in a container of ``image()``."""
    from lazyfs.cli_early import started_ahead
    from lazyfs.cli_exec import exec_problem
    from lazyfs.cli_volumes import container_request, volume_mounts
    from lazyfs.progress import Progress
    from lazyfs.provision import runtime

    command = list(args.command_args)
    if command and command[0] == "--":
        command = command[1:]
    if args.read_only and args.writable:
        raise UsageError("give --read-only or --writable, not both")
    if args.tty and not sys.stdin.isatty():
        raise UsageError("run -t: stdin is not a terminal (run -t needs one, as docker run -t)")
    spec = container_request(args, image)
    container_id = f"run-{uuid.uuid4().hex[:12]}"
    info: ProvisionInfo | None = None
    # Held from provision to destroy: recover elsewhere sees the container busy.
    with (
        stopped_by_signals(),
        started_ahead(args, spec.image, args.backend or app.backend, app.store_dir.absolute()),
        app.provisioner.hold(container_id),
    ):
        try:
            info = run_trio(
                lambda: app.provisioner.provision(
                    container_id,
                    spec.image,
                    args.backend,
                    writable=not args.read_only,
                    volumes=spec.volumes,
                    progress=Progress(),
                    command=command,  # the prefetch trace is of the image and this command
                )
            )
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
            config["mounts"].extend(volume_mounts(info))
            process = config["process"]
            # As a shell says it, not as runc's failure to start (status 1).
            problem = exec_problem(info.rootfs, process["args"], process["env"], process["cwd"])
            if problem is not None:
                print(f"lazyfs: {problem[0]}", file=sys.stderr)
                return problem[1]
            process["terminal"] = args.tty
            bundle = app.provisioner.containers / container_id / "bundle"
            runtime.write_bundle(bundle, config)
            return runtime.run_bundle(bundle, container_id, runtime.state_root(app.work_dir))
        finally:
            # Whenever it came, even between the provision's end and its result kept
            # here; a container that was never made is no error.
            run_trio(lambda: app.provisioner.destroy(container_id))
            if info is not None and args.publish_indexes:  # the trace its mount kept
                from lazyfs.cli_index import publish_run_traces

                publish_run_traces(args, app.docker, info.image)
