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
import ctypes
import errno
import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from providers.errors import BadImage, LazyfsError
from providers.layer_entry import MAX_ID
from providers.manifest import RuntimeConfig

_ID = re.compile(r"[0-9]{1,10}")
MAX_TABLE = 4 << 20  # bytes of /etc/passwd or /etc/group read: far more than any has
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def command_line(config: RuntimeConfig, command: Sequence[str]) -> list[str]:
    """Docker's rule: the entrypoint, then the given command or else the image's Cmd."""
    args = list(config.entrypoint) + list(command or config.cmd)
    if not args:
        raise BadImage("the image has no Entrypoint or Cmd; give a command after --")
    return args


def environment(config: RuntimeConfig) -> list[str]:
    env = list(config.env)
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, DEFAULT_PATH)
    if not any(item.startswith("HOME=") for item in env):
        env.append("HOME=/root")
    return env


def resolve_user(rootfs: Path, user: str) -> tuple[int, int]:
    """``user`` as Docker takes it (name, uid, name:group, uid:gid) to numbers.

    Names are looked up in the rootfs' /etc/passwd and /etc/group, never the
    host's. An unknown name is an error, as in Docker.
    """
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    passwd = _read_table(rootfs, "etc/passwd")
    groups = _read_table(rootfs, "etc/group")
    uid = _id(name)
    gid: int | None = None
    if uid is not None:
        for row in passwd:
            if len(row) > 3 and _id(row[2]) == uid and (gid := _id(row[3])) is not None:
                break
    else:
        for row in passwd:
            if len(row) > 3 and row[0] == name:
                row_uid, row_gid = _id(row[2]), _id(row[3])
                if row_uid is not None and row_gid is not None:
                    uid, gid = row_uid, row_gid
                    break
        if uid is None:
            raise BadImage(f"user {name[:100]!r} is not in the image's /etc/passwd")
    if group:
        gid = _id(group)
        if gid is None:
            found = [_id(row[2]) for row in groups if len(row) > 2 and row[0] == group]
            gid = next((number for number in found if number is not None), None)
            if gid is None:
                raise BadImage(f"group {group[:100]!r} is not in the image's /etc/group")
    return uid, gid if gid is not None else 0


def _id(text: str) -> int | None:
    """``text`` as a uid or gid: ASCII digits up to 2**32 - 2 (``str.isdigit`` takes ``²``)."""
    if _ID.fullmatch(text) is None or int(text) > MAX_ID:
        return None
    return int(text)


def _read_table(rootfs: Path, relative: str) -> list[list[str]]:
    """Read a colon table from the rootfs without following any symlink out of it.

    Only a regular file is read: the image may put a FIFO there (the read
    would never end) or a device node (opened on the host, as root, outside
    any container's device rules); none, or anything else, is an empty
    table. One longer than ``MAX_TABLE`` is a BadImage, as is a read that fails.
    """
    *parents, last = relative.split("/")
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parents:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        # O_PATH: nothing is opened but the name, whatever the image made it.
        nxt = os.open(last, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = nxt
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return []  # none, or a symlink: no table
        raise BadImage(f"cannot read the image's /{relative}: {error.strerror}") from None
    try:
        if not regular:
            return []
        with open(f"/proc/self/fd/{fd}", "rb") as table:  # that inode, readable
            data = table.read(MAX_TABLE + 1)
    except OSError as error:  # /proc missing too: never an empty table in silence
        raise BadImage(f"cannot read the image's /{relative}: {error}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TABLE:
        raise BadImage(f"the image's /{relative} is larger than {MAX_TABLE} bytes")
    lines = data.decode("utf-8", "replace").split("\n")
    return [line.split(":") for line in lines if not line.startswith("#")]


def bundle_config(
    rootfs: Path,
    config: RuntimeConfig,
    command: Sequence[str],
    *,
    readonly: bool,
    cgroups_path: str,
    hostname: str = "lazyfs",
) -> dict[str, Any]:
    """An OCI runtime spec ``config.json`` for running ``command`` in ``rootfs``."""
    uid, gid = resolve_user(rootfs, config.user)
    cwd = config.working_dir or "/"
    if not cwd.startswith("/"):
        cwd = "/" + cwd
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": []},
            "args": command_line(config, command),
            "env": environment(config),
            "cwd": cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": readonly},
        "hostname": hostname,
        "mounts": [
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
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
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


def state_root(work_dir: Path) -> Path:
    """The runc state root (``runc --root``) of the containers ``lazyfs run`` runs.

    Their runc container ids are the provisioner's container ids.
    """
    return work_dir / "runc"


# runc statuses in which a container's processes may still use its rootfs.
_LIVE = frozenset({"creating", "created", "running", "pausing", "paused"})

# Forwarded to runc, which passes them on to the container: what would stop
# `lazyfs run` stops the container, and `run` ends when it does.
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def run_bundle(bundle: Path, container_id: str, state_root: Path) -> int:
    """Run the bundle in the foreground with runc; returns the container's exit code.

    stdin, stdout and stderr are the caller's. SIGINT, SIGTERM and SIGHUP
    (unless the caller ignores it, as under nohup) reach runc, which
    forwards them to the container. runc runs in a process group of its
    own, as a shell runs a job: the terminal's foreground while it runs, if
    the caller's group was (runc and its init use the terminal, with or
    without one of the container's own). A Ctrl-C then reaches runc from
    the terminal alone: in the caller's group it came from both, and the
    container got it twice. Should the caller die without a word
    (SIGKILL), runc gets SIGTERM (its parent-death signal) and forwards it
    as well: runc keeps supervising, so a container that ignores it runs
    on, and ``still_running`` says so. The runc state is deleted after.
    Call from the main thread: the parent-death signal follows the thread
    that started runc.
    """
    state_root.mkdir(parents=True, exist_ok=True)
    argv = ["runc", "--root", str(state_root), "run", "--bundle", str(bundle), container_id]
    terminal = _foreground_terminal()
    try:
        process = subprocess.Popen(
            argv, preexec_fn=_runc_child(os.getpid(), terminal), process_group=0
        )
    except FileNotFoundError:
        raise LazyfsError("runc is not installed (run scripts/setup)") from None
    # A hang-up the caller ignores (nohup) stays ignored, as run_trio has it.
    forwarded = [
        s for s in _FORWARDED if s != signal.SIGHUP or signal.getsignal(s) != signal.SIG_IGN
    ]
    previous = {sig: signal.getsignal(sig) for sig in forwarded}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: process.send_signal(signum))
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if terminal is not None:
            with contextlib.suppress(OSError):  # a terminal gone meanwhile
                _make_foreground(terminal)
        _runc(state_root, "delete", "--force", container_id)
    # runc reports a container killed by a signal as 128+N, as shells do.
    return code if code >= 0 else 128 - code


def _foreground_terminal() -> int | None:
    """A standard stream of the caller's on a terminal whose foreground is the caller's group."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
    return None


def _make_foreground(terminal: int) -> None:
    """Make the calling process's group the foreground of ``terminal``, as a shell does."""
    # Asked from the background, which SIGTTOU would stop but for this.
    held = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(terminal, os.getpgrp())
    finally:
        signal.signal(signal.SIGTTOU, held)


def _runc_child(parent: int, terminal: int | None) -> Callable[[], None]:
    """runc's ``preexec_fn``, in its own process group (``process_group=0``) already.

    It takes ``terminal``'s foreground, if given, before it runs. It gets
    SIGTERM when ``parent`` dies, whatever kills it. Not SIGKILL: runc is the
    container's parent but not its end (the container would outlive it,
    unsupervised); SIGTERM reaches runc's forwarding instead.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(128 + signal.SIGTERM)
        if terminal is not None:
            _make_foreground(terminal)

    return arm


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
    state = state_root / container_id / "state.json"
    if not state.exists():
        return False
    try:
        answer = _runc(state_root, "state", container_id)
    except FileNotFoundError:
        return False
    try:
        status = json.loads(answer.stdout)["status"] if answer.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        status = None
    if status is None:
        # Gone meanwhile (its runc run just deleted it), or unreadable.
        return state.exists()
    if status in _LIVE:
        return True
    _runc(state_root, "delete", container_id)
    return False


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
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
