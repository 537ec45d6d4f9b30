"""OCI runtime bundles from an image's runtime config, run with runc.

The bundle follows the OCI runtime spec's defaults for a Linux container
(the same set ``runc spec`` writes): new pid, ipc, uts, mount and network
namespaces, /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue and /sys, and a
relative ``cgroupsPath`` so the container's cgroup sits under the caller's.

runc keeps its state under ``state_root(work_dir)``, by the provisioner's
container id; ``still_running`` asks runc there, for ``recover``, whether a
container still uses its rootfs, however its ``lazyfs run`` ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lazyfs.provision import etc_files, process_defaults, runc_log
from lazyfs.provision.image_user import check_tables, resolve_user
from lazyfs.provision.runc_signals import (
    FORWARDED,
    NOHUP,
    STOPPING,
    TERMINALS,
    from_terminal,
    interrupt,
    pass_on,
    term_when_parent_dies,
)
from lazyfs.store.atomic import write_atomic
from providers.errors import BackendError, BadImage, LazyfsError
from providers.manifest import RuntimeConfig
from providers.private_dir import private_dir

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RuncFailed(LazyfsError):
    """runc failed to run the container: the command never ran (``docker run``'s 125)."""


def command_line(config: RuntimeConfig, command: Sequence[str]) -> list[str]:
    """Docker's rule: the entrypoint, then the given command or else the image's Cmd."""
    args = list(config.entrypoint) + list(command or config.cmd)
    if not args:
        raise BadImage("the image has no Entrypoint or Cmd; give a command after --")
    return args


def environment(config: RuntimeConfig, home: str) -> list[str]:
    env = list(config.env)
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, DEFAULT_PATH)
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={home}")
    return env


def bundle_config(
    rootfs: Path,
    config: RuntimeConfig,
    command: Sequence[str],
    *,
    readonly: bool,
    cgroups_path: str,
    hostname: str = "lazyfs",
    etc: Path | None = None,
    bundle: Path | None = None,
) -> dict[str, Any]:
    """An OCI runtime spec ``config.json`` for running ``command`` in ``rootfs``.

    The image's user is looked up in ``etc``, the container's /etc as found
    in what is mounted there (``lazyfs.cli_volumes.container_view``: a volume
    may be it), else in the rootfs' own (``image_user.resolve_user``). The
    mounts are runc's own (``runc_mounts``); the caller adds its volumes (see
    ``write_bundle``).
    With ``bundle``, /etc/hosts and /etc/hostname naming ``hostname`` go there
    (``etc_files``). docker's process defaults: ``process_defaults``.
    BadImage where runc's own reading of /etc/passwd or /etc/group would hang.
    """
    # runc's init opens both whoever the user is: a FIFO there holds it for ever.
    check_tables(rootfs, etc, (mount["destination"] for mount in runc_mounts()))
    user = resolve_user(rootfs, config.user, etc)
    cwd = config.working_dir or "/"
    if not cwd.startswith("/"):
        cwd = "/" + cwd
    mounts = runc_mounts()
    if bundle is not None:
        etc_files.write(bundle, hostname)
        mounts += etc_files.mounts(bundle, rootfs, etc, readonly=readonly)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.groups)},
            "args": command_line(config, command),
            "env": environment(config, user.home),
            "cwd": cwd,
            "capabilities": process_defaults.capabilities(user.uid),
            "rlimits": process_defaults.rlimits(),
            "noNewPrivileges": process_defaults.NO_NEW_PRIVILEGES,
        },
        "root": {"path": str(rootfs), "readonly": readonly},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            # A network of its own, lo alone: no bridge as docker's; the host's (Mesos without
            # a network isolator) would be a flag of its own.
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def runc_mounts() -> list[dict[str, Any]]:
    """The runtime spec's mounts of the container's own filesystems, as ``runc spec`` writes
    them: /proc, a tmpfs at /dev (runc makes its device nodes there), /dev/pts, /dev/shm,
    /dev/mqueue, /sys. A new list each time: a caller adds to it."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ]


def state_root(work_dir: Path) -> Path:
    """The runc state root (``runc --root``) of the containers ``lazyfs run`` runs.

    Their runc container ids are the provisioner's container ids.
    """
    return work_dir / "runc"


# runc statuses in which a container's processes may still use its rootfs; state runc
# cannot read is one (``runc_status``): a rootfs never goes from under a live container.
LIVE = frozenset({"creating", "created", "running", "pausing", "paused", "unreadable"})


def run_bundle(
    bundle: Path,
    container_id: str,
    state_root: Path,
    *,
    told: Callable[[int], None] | None = None,
    early: list[int] | None = None,
    before: Callable[[], None] | None = None,
    terminal: bool = False,
) -> int:
    """Run the bundle in the foreground with runc; returns the container's exit code.

    stdin, stdout and stderr are the caller's. ``FORWARDED`` signals (SIGHUP
    unless ignored, as under nohup) reach runc, which forwards them to the
    container. runc has a process group of its own, so that one sent to the
    caller's group reaches it once, unless it uses the caller's terminal: with
    a ``terminal`` (the bundle's, which carries Ctrl-C itself), or stdin the
    caller's terminal, which runc copies to the container and could not read
    from another group. It stays in the caller's group then (a job the shell
    stops, continues and moves as one), and what the terminal itself sends
    that group (Ctrl-C, Ctrl-\\, Ctrl-Z: ``TERMINALS``) reaches runc from the
    terminal alone, not passed on a second time (``runc_signals.from_terminal``). Should
    the caller die without a word (SIGKILL), runc gets SIGTERM (its parent-death
    signal) and forwards it as well: runc keeps supervising, so a container that
    ignores it runs on, and ``still_running`` says so. The runc state is deleted
    after. ``early`` is where the caller notes ``STOPPING`` signals, and ``before``
    is called once this forwarding is in place and before runc starts: it
    may raise to start nothing (for the caller's signals so far). With it,
    such a signal while runc is being started, which has then done
    nothing yet, kills runc and ``before`` is called again; without it,
    it reaches runc once it runs, as any other does. One that comes after runc
    ended, while its state is deleted, is let go: the container has ended
    already. Call from the main thread: the parent-death signal follows the
    thread that started runc.
    ``told`` is called with each signal passed on while runc ran, in the handler.

    RuncFailed when runc failed to run the container, as runc's log says
    (``runc_log``): runc has said why on stderr, in one line, by then. Its
    warnings, which go to the log alone, are shown one line each.
    """
    private_dir(state_root)
    _check_state(state_root, container_id)
    log = bundle / "runc-log.json"
    log.unlink(missing_ok=True)
    argv = ["runc", "--root", str(state_root), "--log", str(log), "--log-format", "json"]
    argv += ["run", "--bundle", str(bundle), container_id]
    # A hang-up the caller ignores (nohup) stays ignored, as run_trio has it; a handler
    # not set from Python (None) could not be put back.
    handlers = {sig: signal.getsignal(sig) for sig in FORWARDED}
    previous = {s: h for s, h in handlers.items() if h is not None and (s, h) != NOHUP}
    started: list[subprocess.Popen[bytes]] = []
    early = [] if early is None else early  # stopping ones come before runc started
    waiting: list[int] = []  # others then: passed on once it runs
    # runc uses the caller's terminal (stdin copied, output written: a background group
    # is stopped for either), or the bundle's is one: in the caller's group.
    tty = next((fd for fd in (0, 1, 2) if os.isatty(fd)), None)
    shared = terminal or tty is not None

    pidfd: list[int] = []  # runc's, where the kernel gives one: see ``runc_signals.pass_on``

    def forward(signum: int, _frame: object) -> None:
        if not started:
            (early if signum in STOPPING else waiting).append(signum)
            return
        if shared and signum in TERMINALS and from_terminal(tty):
            if told is not None:
                told(signum)  # runc has it from the terminal, as its group's
            return
        # runc under a terminal ends at once on SIGINT, leaving the container: ``interrupt``.
        if terminal and signum == signal.SIGINT:
            sent = interrupt(state_root, container_id, lambda: pass_on(started[0], pidfd, signum))
        else:
            sent = pass_on(started[0], pidfd, signum)
        if sent and told is not None:
            told(signum)

    # From before runc starts until its state is gone: a signal meanwhile reaches
    # runc, or nothing once it has ended, but never ends this process half-way.
    for sig in previous:
        signal.signal(sig, forward)
    try:
        if before is not None:
            before()
        try:
            arm = term_when_parent_dies(os.getpid())
            process = subprocess.Popen(argv, preexec_fn=arm, process_group=None if shared else 0)
        except FileNotFoundError:
            raise LazyfsError("runc is not installed (run scripts/setup)") from None
        started.append(process)
        with contextlib.suppress(OSError):  # none (an old kernel, seccomp): by pid, as Popen does
            pidfd.append(os.pidfd_open(process.pid))  # not waited for yet: the pid is runc's
        if early and before is not None:
            started[0].kill()  # it was being started: no container yet
            started[0].wait()
            before()
        for signum in early + waiting:
            forward(signum, None)
        code = started[0].wait()
    finally:
        try:
            if started:
                _runc(state_root, "delete", "--force", container_id)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in pidfd:
                os.close(fd)
    found = runc_log.entries(log)
    for said in runc_log.others(found):  # in the log alone: runc prints only its failure
        print(f"lazyfs: runc: {said}", file=sys.stderr)
    failed = runc_log.failure(found)
    if code != 0 and failed is not None:
        raise RuncFailed(f"runc: {failed}")
    # runc reports a container killed by a signal as 128+N, as shells do.
    return code if code >= 0 else 128 - code


def still_running(state_root: Path, container_id: str) -> bool:
    """Whether runc still has ``container_id`` under ``state_root`` created, running or paused.

    runc itself checks the container's init process, so the answer holds
    whatever became of the ``lazyfs run`` that started it. No state for
    the id (runc keeps it in ``ID/state.json``), or no runc installed: not
    running. State that runc cannot read counts as running, since a rootfs
    must never go from under a live container. A stopped container's
    leftover state is deleted on the way (``runc run`` would have, had it
    lived). Blocking.
    """
    status = runc_status(state_root, container_id)
    if status is None or status in LIVE:
        return status is not None
    _runc(state_root, "delete", container_id)
    return False


def runc_status(state_root: Path, container_id: str) -> str | None:
    """What runc says of ``container_id`` (``running``, ``stopped``...); None for no state or
    no runc; ``unreadable`` for state runc cannot read that is there still (just deleted
    by its ``runc run`` otherwise). Deletes nothing. Blocking."""
    state = state_root / container_id / "state.json"
    if not state.exists():
        return None
    _check_state(state_root, container_id)
    try:
        answer = _runc(state_root, "state", container_id)
    except FileNotFoundError:
        return None
    try:
        status = json.loads(answer.stdout)["status"] if answer.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        status = None
    if status is None:
        return "unreadable" if state.exists() else None
    return str(status)


def _check_state(state_root: Path, container_id: str) -> None:
    """BackendError unless ``state_root``, and ``container_id``'s state in it if there, are
    this user's and no one else may write them: runc runs the hooks of the state it finds
    (``runc delete`` a stopped container's poststop hooks), as whoever runs runc."""
    for path in (state_root, state_root / container_id):
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            continue
        if found.st_uid != os.geteuid() or found.st_mode & 0o022 or stat.S_ISLNK(found.st_mode):
            raise BackendError(
                f"runc's state {path} is not this user's alone: its hooks would run as this"
                " user; remove it after looking at what it holds"
            )


def _runc(state_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runc --root state_root ARGS``, its output captured; FileNotFoundError without runc."""
    return subprocess.run(
        ["runc", "--root", str(state_root), *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def write_bundle(bundle: Path, config: dict[str, Any]) -> None:
    """Write ``config`` as the bundle's config.json; its /etc files of ours give way to the
    caller's volumes at their paths (``etc_files.give_way``)."""
    private_dir(bundle)
    if "mounts" in config:
        config = {**config, "mounts": etc_files.give_way(bundle, config["mounts"])}
    # Private as the rest of the work dir: write_text would make it 0666 less the umask.
    write_atomic(
        bundle / "config.json", json.dumps(config, indent=1).encode(), mode=0o600, durable=False
    )
