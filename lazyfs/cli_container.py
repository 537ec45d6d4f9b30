"""``lazyfs run``: a container provisioned, run by runc in the foreground, then destroyed.

As ``docker run --rm``: the container's exit status is the command's. Ctrl-C,
SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 cancel the provision and the
making of the runtime bundle, which run as one piece of async work
(``run_trio``; a read of the rootfs under way finishes first). While runc
runs, or is being started, they and every other signal it can take reach
the container through runc, as docker run's --sig-proxy has it
(``runtime.run_bundle``); the container is destroyed after either. Those
but Ctrl-C between them are noted
(``cli_run.noting_signals``): one noted before runc starts stops the
command as Ctrl-C does, one while runc is being started reaches it once
it runs, and one after runc ended is let go, so that the destroy
finishes: an agent that stops a run does not choose the moment. The prefetch trace the run's
mount kept after a signal it passed on is marked cut: it may be of the
start of the workload only (``lazyfs.cli_run_trace``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lazyfs.cache.remote import tidy_dir
from lazyfs.cli_flags import source
from lazyfs.cli_run import noting_signals, run_trio
from providers.errors import UsageError
from providers.manifest import RuntimeConfig

if TYPE_CHECKING:
    from lazyfs.cli_exec import ContainerView
    from lazyfs.images.docker import DockerProvider
    from lazyfs.provision.provisioner import Provisioner, ProvisionInfo
    from providers.image_pb2 import Image


class App(Protocol):
    """What ``run`` takes of the command's ``lazyfs.cli.App``."""

    work_dir: Path
    store_dir: Path
    backend: str | None

    @property
    def provisioner(self) -> Provisioner: ...

    @property
    def docker(self) -> DockerProvider | None: ...


log = logging.getLogger(__name__)


def run_container(app: App, args: argparse.Namespace, image: Callable[[], Image]) -> int:
    """Run ``args.command_args`` (or the image's command) in a container of ``image()``."""
    import trio

    from lazyfs import cli_run_trace as run_trace
    from lazyfs.cli_early import started_ahead
    from lazyfs.cli_exec import exec_problem, in_root
    from lazyfs.cli_volumes import container_request, container_view, volume_mounts
    from lazyfs.progress import Progress
    from lazyfs.provision import runtime
    from lazyfs.provision.etc_files import hostname_for

    if os.geteuid() != 0:
        # Said before the image is pulled and a rootfs built for a runc that would refuse:
        # the bundle has no user namespace, so runc runs no container for a user.
        raise UsageError(
            f"lazyfs run needs root (this is uid {os.geteuid()}): its containers are not"
            " rootless; `lazyfs mount IMAGE DIR` shows an image's tree as any user"
        )
    utf8_work_dir(app.work_dir, source(args, "work_dir"))
    command = list(args.command_args)
    if command and command[0] == "--":
        command = command[1:]
    if args.read_only and args.writable:
        raise UsageError("give --read-only or --writable, not both")
    if args.tty and not os.isatty(0):  # sys.stdin is None if it was closed
        raise UsageError("run -t: stdin is not a terminal (run -t needs one, as docker run -t)")
    for item in args.env:
        if not item.partition("=")[0]:
            raise UsageError(f"run -e {item!r}: no variable name (KEY[=VALUE])")
    workdir = clean_workdir(args.workdir)
    spec = container_request(args, image)
    container_id = f"run-{uuid.uuid4().hex[:12]}"
    bundle = app.provisioner.containers / container_id / "bundle"
    made: list[ProvisionInfo] = []
    traced: list[run_trace.RunTrace | None] = []  # what its mount records, if it does

    def write_bundle(info: ProvisionInfo) -> int | None:
        """The bundle of ``info``; the exit status instead, if its command cannot run."""
        wanted = with_run_flags(info.config, args.env, args.user, os.environ, workdir)
        wanted = with_tty_term(wanted, tty=args.tty)
        # What the command sees: runc's own mounts, then the volumes, each checked runc
        # can mount it.
        view = container_view(info, runtime.runc_mounts())
        config = runtime.bundle_config(
            info.rootfs,
            wanted,
            command,
            # The copy backend's rootfs is writable whatever was asked: runc
            # makes it read-only then.
            readonly=args.read_only or not info.writable,
            # Relative: runc puts it under the cgroup of the process that runs it.
            cgroups_path=f"lazyfs/{container_id}",
            # Who it runs as, from the container's /etc, which a volume may be: the
            # rootfs' own is never read then.
            etc=in_root(view, "/etc"),
            # Its /etc/hosts and /etc/hostname are written in its bundle, and go with it.
            bundle=bundle,
            hostname=hostname_for(container_id),
        )
        config["mounts"].extend(volume_mounts(info))
        process = config["process"]
        require_workdir(view, process["cwd"])
        # As a shell says it, not as runc's failure to start (status 1).
        problem = exec_problem(view, process["args"], process["env"], process["cwd"])
        if problem is not None:
            print(f"lazyfs: {problem[0]}", file=sys.stderr)
            return problem[1]
        process["terminal"] = args.tty
        runtime.write_bundle(bundle, config)
        return None

    async def provision_and_bundle() -> int | None:
        # One piece of work: a signal between the two (the bundle reads the rootfs,
        # which may wait on the network) cancels it as it cancels the provision.
        info = await app.provisioner.provision(
            container_id,
            spec.image,
            args.backend,
            writable=not args.read_only,
            volumes=spec.volumes,
            progress=Progress(),
            # The prefetch trace is of the image and this command, in this directory.
            command=command,
            working_dir=workdir,
        )
        made.append(info)
        lazy = bool(info.remote_layers)
        traced.append(run_trace.noted(args, info.image, command, workdir, lazy=lazy))
        return await trio.to_thread.run_sync(write_bundle, info)

    # Held from provision to destroy: recover elsewhere sees the container busy.
    with (
        noting_signals() as signals,
        started_ahead(args, spec.image, args.backend or app.backend, app.store_dir.absolute()),
        app.provisioner.hold(container_id),
    ):
        failure: BaseException | None = None
        ran = False  # the command ran: its status is the run's, whatever the destroy says
        # For each signal passed on to the container: which trace file was there then.
        signalled: list[list[run_trace.FileId]] = []

        def told(_: int) -> None:
            trace = traced[0] if traced else None
            seen: list[run_trace.FileId] = []
            signalled.append(seen)  # first, before a handler nested in this one adds its own
            seen.append(None if trace is None else run_trace.file_id(trace.path))

        try:
            signals.stop_if_noted()  # noted as the lock and the helpers were taken
            status = run_trio(provision_and_bundle)
            signals.stop_if_noted()  # noted as trio started or closed, out of its own handling
            if status is not None:
                return status
            root = runtime.state_root(app.work_dir)
            try:
                status = runtime.run_bundle(
                    bundle, container_id, root, told=told,
                    early=signals.noted, before=signals.stop_if_noted, terminal=args.tty,
                )  # fmt: skip
            except runtime.RuncFailed:
                # As docker run's 125: the command never ran, whatever status runc gave.
                # runc said why, in one line of its own (``runtime.runc_log``).
                return 125
            ran = True
            return status
        except BaseException as error:
            failure = error
            raise
        finally:
            try:
                _destroy(app, container_id, failure, ran=ran)
            finally:
                trace = traced[0] if traced else None
                if trace and signalled and signalled[0]:
                    run_trace.cut_if_written(trace, signalled[0][0])
            if made and args.publish_indexes:  # the trace its mount kept as it ended
                from lazyfs.cli_index import publish_run_traces

                publish_run_traces(args, app.docker, made[0].image)


def with_run_flags(
    config: RuntimeConfig,
    env: Sequence[str],
    user: str | None,
    own: Mapping[str, str],
    workdir: str | None = None,
) -> RuntimeConfig:
    """``config`` with run's ``-e``, ``-u`` and ``-w`` on it, as docker run puts them.

    ``KEY=VALUE`` replaces the image's ``KEY`` where it stands, or comes
    after the image's; ``KEY`` alone takes its value from ``own`` (lazyfs'
    environment), and is unset where ``own`` has none. ``user`` replaces
    the image's ``User``, ``workdir`` its ``WorkingDir`` (None or empty:
    not given).
    """
    values = list(config.env)
    for item in env:
        key, eq, _ = item.partition("=")
        if not eq and key in own:
            item = f"{key}={own[key]}"
        same = [i for i, v in enumerate(values) if v.partition("=")[0] == key]
        for i in reversed(same[1:]):  # an image may give one twice: none of it stays
            del values[i]
        if "=" not in item:
            if same:
                del values[same[0]]
        elif same:
            values[same[0]] = item
        else:
            values.append(item)
    # Empty is not given, as docker takes it: the image's User (WorkingDir) stays.
    working_dir = workdir or config.working_dir
    return replace(config, env=tuple(values), user=user or config.user, working_dir=working_dir)


def with_tty_term(config: RuntimeConfig, *, tty: bool) -> RuntimeConfig:
    """``config`` with ``TERM=xterm`` for a ``tty``, as docker run -t adds it, unless the
    image or ``-e`` gave TERM: programs that draw on a terminal look it up."""
    if not tty or any(item.partition("=")[0] == "TERM" for item in config.env):
        return config
    return replace(config, env=(*config.env, "TERM=xterm"))


def utf8_work_dir(work_dir: Path, where: str) -> None:
    """UsageError unless ``work_dir``'s path is UTF-8 text, before ``run`` makes anything.

    runc's config.json names the rootfs, which is under the work dir, and JSON
    carries only text: bytes that are not UTF-8 (surrogate escapes here, as
    ``os.fsdecode`` gives them) would fail inside runc, after the provision.
    """
    try:
        str(work_dir).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(work_dir).decode("utf-8", "backslashreplace")
        raise UsageError(
            f"{where} {shown}: not UTF-8; run needs a work dir whose path is UTF-8 "
            "(runc's config.json, which is JSON, names the rootfs under it)"
        ) from None


def clean_workdir(workdir: str | None) -> str:
    """Run's ``-w`` tidied as docker tidies it (``/a/../b/`` is ``/b``); "" when not given
    (None or empty). UsageError unless it is an absolute path.

    runc makes it when it is missing, as docker does, and resolves it in the rootfs.
    """
    if not workdir:
        return ""
    if "\0" in workdir:
        raise UsageError(f"run -w {workdir!r}: a working directory holds no NUL byte")
    if not workdir.startswith("/"):
        raise UsageError(f"run -w {workdir!r}: the working directory must be an absolute path")
    return tidy_dir(workdir)


def require_workdir(root: Path | ContainerView, cwd: str, *, made: bool = False) -> None:
    """UsageError unless the container has the working directory ``cwd`` as a directory, or
    lacks it below a directory runc can make it in: on a writable rootfs, an ``rw`` volume
    or runc's tmpfs.

    ``root``: the container's view, or a rootfs alone (writable if ``made``). runc would
    fail in words of its own: to make it on a read-only mount or through a symlink to
    what is missing, or to make or enter one that is not a directory.
    """
    from lazyfs.cli_exec import ContainerView, shown

    view = root if isinstance(root, ContainerView) else ContainerView(root, made)
    # shown: the image's WorkingDir may hold escape sequences for the terminal.
    place = view.find(cwd)
    if place is None:
        raise UsageError(
            f"the working directory {shown(cwd)} has too many levels of symbolic links"
        )
    if not place.seen:
        # In /proc or /sys runc enters a directory the kernel has there and fails to make
        # one it has not, as anywhere; which it is, the kernel tells runc alone.
        return
    found = place.found
    where = view.named(found)
    if len(found) < len(place.parts):
        # Under a file (/etc/motd/x), runc could make it no more than enter it.
        if not view.is_dir(found):
            raise UsageError(f"the working directory {shown(cwd)} is under a file in {where}")
        if place.linked:
            # runc makes it as mkdir -p does, by its own names: a dangling link is one.
            missing = "/" + "/".join(place.parts[: place.there + 1])
            raise UsageError(
                f"the working directory {shown(cwd)} leads through a symbolic link to"
                f" {shown(missing)}, which runc cannot make"
            )
        if not view.can_make(found):
            what, fix = view.read_only(found)
            raise UsageError(f"{what} has no working directory {shown(cwd)} to run in ({fix})")
    elif not view.is_dir(found):
        raise UsageError(f"the working directory {shown(cwd)} is not a directory in {where}")


def _destroy(
    app: App, container_id: str, failure: BaseException | None, *, ran: bool = False
) -> None:
    """Destroy ``container_id`` (nothing made is no error). After ``failure``, which stays
    the error told, or once the command ``ran``, whose status stays the run's (not its
    own error's 125), a destroy that fails too is logged: the container stays for recover.
    The signals ``noting_signals`` notes are let go meanwhile (Ctrl-C still ends it)."""
    try:
        run_trio(lambda: app.provisioner.destroy(container_id), watch=False)
    except Exception as error:
        if failure is None and not ran:
            raise
        log.warning("container %s stays for recover: destroying it failed: %s", container_id, error)
