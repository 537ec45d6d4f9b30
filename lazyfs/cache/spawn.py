"""Finding the machine's cache daemon, and starting one when none runs.

``ensure_daemon(spec)`` returns once a daemon answers a status request on
``CACHE_DIR/daemon.sock``; ``start_daemon(spec)`` does the same in two
steps, starting it and returning, then ``Starting.wait``, so that a mount
process can start while the daemon does. When none does, one caller at a time (an
exclusive flock on ``CACHE_DIR/start.lock``, across processes) looks again,
then starts ``spec.command`` detached: in a session of its own, stdin from
/dev/null, its output appended to ``CACHE_DIR/daemon.log``, with
``spec.env`` over this process's environment (the registry flags travel
there, not on a command line other users can read). It waits until the
daemon answers, until it exits (the log's last line says why), or
``spec.timeout``.

A socket file nobody answers on is a dead daemon's: it is ignored, and the
new daemon replaces it. A daemon that holds the cache's lock but does not
answer yet is starting: it is waited for, not started twice. Nothing here
kills a daemon: mounts outlive it (``lazyfs.cache.client`` waits for it),
and it outlives the process that started it.

A start also leaves how it started the daemon in ``CACHE_DIR/daemon.spec``
(``started_as``): a mount that finds the daemon gone (killed, crashed, or
exited idle under a mount it never knew) starts it again the same way. A
daemon run as a service (``lazyfs daemon``) leaves none: its service
manager restarts it.

Light: loads no trio, no registry client; the mount API calls it.
Blocking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.cache.layout import socket_path
from providers.append_log import open_log
from providers.errors import BackendError
from providers.fslock import exclusive_lock_until
from providers.private_dir import private_dir
from providers.reaping import SPAWN_DEFAULTS, reap_later

START_LOCK = "start.lock"
LOG_NAME = "daemon.log"
SPEC_NAME = "daemon.spec"  # how the daemon was last started: ``started_as``
START_TIMEOUT = 30.0
# How often a start is looked at (the lock, the cache's owner, an answer): a
# lazy mount waits on each, so the pause is latency on its start. A look is
# a flock, a stat or a refused connect, or once the daemon listens, one
# status request: some hundred looks over a start of a few tenths of a second.
POLL = 0.005


@dataclass(frozen=True)
class DaemonSpec:
    """How to reach the cache daemon of ``cache_dir``, and how to start it.

    ``command`` runs it in the foreground (``lazyfs ... daemon``); ``env``
    is added to the environment it starts in. Compared without ``env``.
    """

    cache_dir: Path
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, compare=False)
    timeout: float = START_TIMEOUT


def answers(cache_dir: Path) -> bool:
    """Whether a daemon answers a status request at ``cache_dir`` now."""
    if not os.path.exists(socket_path(cache_dir)):
        # Nothing to connect to: said without the client, whose protobuf code a
        # first start would otherwise load before it spawns the daemon.
        return False
    # Imported here: the client loads the protocol's protobuf code.
    from lazyfs.cache.connection import status
    from lazyfs.cache.framing import ProtocolError

    try:
        status(cache_dir)
    except (OSError, ProtocolError):
        return False
    return True


def answers_soon(cache_dir: Path, seconds: float) -> bool:
    """Whether a daemon answers at ``cache_dir`` now, or, while one is on its way
    (``starting``), within ``seconds``. Blocking: polls every ``POLL``."""
    deadline = time.monotonic() + seconds
    while not answers(cache_dir):
        if time.monotonic() > deadline or not starting(cache_dir):
            return False
        time.sleep(POLL)
    return True


def starting(cache_dir: Path) -> bool:
    """Whether the daemon of ``cache_dir`` is known to be on its way: never listened yet, or
    a start of it holds the start lock (a mount starts beside the daemon and may ask first).
    """
    if not socket_path(cache_dir).exists():
        return True
    try:
        fd = os.open(cache_dir / START_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops our shared lock too, if we got it
    return False


def ensure_daemon(spec: DaemonSpec) -> None:
    """Return once the daemon of ``spec.cache_dir`` answers, starting it if need be.

    Raises BackendError when it does not answer within ``spec.timeout``.
    """
    starting = start_daemon(spec)
    if starting is not None:
        starting.wait()


class Starting:
    """A daemon being started (or waited for) by this process: ``wait`` until it answers.

    Holds the start lock until ``wait`` or ``release``: callers in other
    processes wait for this start rather than make another.
    """

    def __init__(
        self, spec: DaemonSpec, pid: int | None, lock: contextlib.ExitStack, deadline: float
    ) -> None:
        self.spec = spec
        self.pid = pid  # ours to reap; None when another process started it
        self._spawned = pid is not None  # kept for ``started_as`` once it is seen to start
        self._lock = lock
        self._deadline = deadline

    def wait(self) -> None:
        """Return once the daemon answers; BackendError when it exits or the timeout passes."""
        try:
            _wait_answering(self.spec, self.pid, self._deadline)
            self._started()
        except _Exited:
            self.pid = None  # reaped already: its pid may be another's by now
            raise
        finally:
            self.release()

    def hand_over(self) -> None:
        """Let go of the start lock once the daemon holds its cache (or answers, or is gone).

        For a starter that does not wait for the daemon itself: from then on a
        caller finds a daemon owning the cache (``start_daemon``) and waits for
        it, rather than start another. Never raises.
        """
        try:
            while self.pid is not None and time.monotonic() < self._deadline:
                if _owned(self.spec.cache_dir):
                    self._started()
                    break
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                    self.pid = None  # exited at start, reaped: a later caller starts another
                    break
                time.sleep(POLL)
        except ChildProcessError:
            self.pid = None
        finally:
            self.release()

    def _started(self) -> None:
        """The daemon started here holds its cache: it took its flags, so ``started_as``
        may start it so again (one that exits at start, a bad flag say, leaves what an
        earlier start kept)."""
        if self._spawned:
            self._spawned = False
            with contextlib.suppress(OSError):  # a favour to later mounts, not this start
                _keep_spec(self.spec)

    def release(self) -> None:
        """Let go of the start lock without waiting. Idempotent."""
        self._lock.close()
        if self.pid is not None:
            # Reaped when it ends, so a daemon that dies leaves no zombie here.
            reap_later(self.pid)
            self.pid = None


class _Exited(BackendError):
    """The daemon started here exited before it answered (and was reaped)."""


def start_daemon(spec: DaemonSpec) -> Starting | None:
    """Start the daemon of ``spec.cache_dir`` if none answers, without waiting for it.

    None when one answers already; else a ``Starting`` to ``wait`` on (or
    ``release``, or ``hand_over``), so that the caller can start what needs the
    daemon (a mount process, which waits for the daemon itself) while it comes up.
    Raises BackendError when another start holds the lock past the timeout.
    """
    # Checked before anything in it is trusted: ours, closed to other users.
    private_dir(spec.cache_dir)
    if answers(spec.cache_dir):
        return None
    deadline = time.monotonic() + spec.timeout
    lock = contextlib.ExitStack()
    lock.enter_context(
        exclusive_lock_until(spec.cache_dir / START_LOCK, deadline, BackendError, pause=POLL)
    )
    try:
        if answers(spec.cache_dir):
            lock.close()
            return None  # another caller started it while we waited for the lock
        # A daemon that owns the cache but does not answer yet is starting: wait for it.
        pid = None if _owned(spec.cache_dir) else _spawn(spec)
    except BaseException:
        lock.close()
        raise
    return Starting(spec, pid, lock, deadline)


def _owned(cache_dir: Path) -> bool:
    """Whether a process holds the cache's lock (``lazyfs.cache.chunks.DiskCache.open``)."""
    try:
        fd = os.open(cache_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops our shared lock too, if we got it
    return False


def started_as(cache_dir: Path) -> DaemonSpec | None:
    """How a command last started the daemon of ``cache_dir``, or None if none did (or
    what it left cannot be read)."""
    try:
        with open(cache_dir / SPEC_NAME, encoding="utf-8") as file:
            found = json.load(file)
        command, env = found["command"], found["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(command, list) and command and isinstance(env, dict)):
        return None
    if not all(isinstance(x, str) for x in [*command, *env, *env.values()]):
        return None
    return DaemonSpec(cache_dir, tuple(command), env)


def _keep_spec(spec: DaemonSpec) -> None:
    """Leave ``spec`` for ``started_as``: closed to others (its ``env`` may name the
    registry flags' files, or hold a config inline), whole or not at all."""
    path = spec.cache_dir / SPEC_NAME
    temporary = path.with_name(f".{SPEC_NAME}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"command": list(spec.command), "env": dict(spec.env)}, file)
    os.replace(temporary, path)


def _spawn(spec: DaemonSpec) -> int:
    log_fd = open_log(spec.cache_dir / LOG_NAME)  # renamed to .1 once past its cap
    try:
        return os.posix_spawn(
            spec.command[0],
            list(spec.command),
            {**os.environ, **spec.env},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,  # no signal of the starter's terminal or session reaches it
            setsigdef=SPAWN_DEFAULTS,
        )
    finally:
        os.close(log_fd)


def _wait_answering(spec: DaemonSpec, pid: int | None, deadline: float) -> None:
    while not answers(spec.cache_dir):
        if pid is not None and os.waitpid(pid, os.WNOHANG)[0] == pid:
            raise _Exited(
                f"the cache daemon exited at start: {_last_line(spec.cache_dir / LOG_NAME)}"
            )
        if time.monotonic() > deadline:
            raise BackendError(
                f"the cache daemon at {spec.cache_dir} did not answer within {spec.timeout:g}s"
                f" (see {spec.cache_dir / LOG_NAME})"
            )
        time.sleep(POLL)  # a status request costs a connect, little more


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "nothing logged"
