"""What ``lazyfs destroy`` does about a container that still runs: refuse, or with
``--force`` kill it first, as ``docker rm -f`` does.

A rootfs never goes from under a live container, and never from under the
``lazyfs run`` that holds it (``container_locks``): ``--force`` kills the
container's processes with SIGKILL through runc and then waits, bounded, until
runc says it stopped and no ``lazyfs run`` holds it any more. A run still alive
sees its container end, exits with its status (137, as ``docker run`` after
``docker rm -f``) and destroys the container itself, under its lock; the
destroy that follows finds it gone, or destroys what a run killed meanwhile
left. Nothing is removed while the run holds the lock, so the two cannot race
into a half-removed container. A run that holds the container before runc runs
it (provisioning) gets SIGTERM, which stops it there; should runc start the
container just then, the run passes the SIGTERM on to it, and the next round
kills it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.provision import runtime
from lazyfs.provision.container_locks import ContainerLocks
from lazyfs.provision.runtime import _runc
from providers.errors import BackendError, Conflict

if TYPE_CHECKING:
    from lazyfs.provision.provisioner import Provisioner

# Seconds runc has to say a container it was told to SIGKILL has stopped; a process
# in uninterruptible sleep (a hung mount) may outlive that.
STOP_WAIT = 10.0
# Seconds a `lazyfs run` has to end once its container is killed: it destroys the
# container (unmounts, removes) before it lets its lock go.
RUN_WAIT = 60.0
_POLL = 0.05


def before_destroy(
    work_dir: Path, provisioner: Provisioner, container_id: str, *, force: bool
) -> bool:
    """Conflict if runc still runs ``container_id``, unless ``force``: then its processes
    are killed and waited for (``kill``). Whether there was a container to kill. Blocking."""
    root = runtime.state_root(work_dir)
    if force:
        return kill(root, ContainerLocks(provisioner.locks, provisioner.containers), container_id)
    # Its `lazyfs run` may be gone (killed) while runc runs it on: as `recover` keeps
    # such a container, a rootfs never goes from under a live one.
    if runtime.still_running(root, container_id):
        raise Conflict(
            f"container {container_id} is still running (runc); stop it first, or kill it"
            " with lazyfs destroy --force; nothing was destroyed"
        )
    return False


def kill(state_root: Path, locks: ContainerLocks, container_id: str) -> bool:
    """SIGKILL ``container_id``'s processes through runc, then wait until runc has it
    stopped and no ``lazyfs run`` holds it; its runc state is deleted. Whether runc ran
    it or a run held it. BackendError, nothing destroyed, if either outlasts its bound.
    Blocking."""
    found = False
    killed: float | None = None  # when it was first told to die
    told: int | None = None  # the run sent SIGTERM
    deadline = time.monotonic() + RUN_WAIT
    while True:
        live = _live(state_root, container_id)
        run = locks.running(container_id)
        if not live and run is None:
            break
        found = True
        now = time.monotonic()
        if live:
            killed = now if killed is None else killed
            if now > killed + STOP_WAIT:
                raise BackendError(
                    f"container {container_id} still runs {STOP_WAIT:g} s after SIGKILL"
                    " (runc state says so); nothing was destroyed"
                )
            # Again each round: a failure (it stopped meanwhile) is answered by the next.
            _runc(state_root, "kill", container_id, "KILL")
        elif (
            killed is None and run is not None and run != told and not _started(locks, container_id)
        ):
            # Its run holds it but runc has none, and never had: a run provisioning it,
            # which the signal stops. A run whose container was killed, or ended by
            # itself, ends by itself: no signal then, which would be its exit status.
            with contextlib.suppress(ProcessLookupError):
                os.kill(run, signal.SIGTERM)
            told = run
        if now > deadline:
            raise BackendError(
                f"container {container_id}: its lazyfs run (pid {run}) still holds it"
                f" {RUN_WAIT:g} s after it was told to stop; nothing was destroyed"
            )
        time.sleep(_POLL)
    if (state_root / container_id).exists():
        # Stopped: what a runc killed with its run left (`runc run` deletes its own).
        _runc(state_root, "delete", "--force", container_id)
    return found


def _started(locks: ContainerLocks, container_id: str) -> bool:
    """Whether runc was started for ``container_id``: its log is in the bundle
    (``run_bundle`` removes any before, and runc makes it as it starts)."""
    return (locks.containers / container_id / "bundle" / "runc-log.json").exists()


def _live(state_root: Path, container_id: str) -> bool:
    """Whether runc has ``container_id`` created, running or paused (unreadable state
    counts). Unlike ``runtime.still_running`` it deletes no stopped state: the ``runc
    run`` still supervising it may be deleting it."""
    return runtime.runc_status(state_root, container_id) in runtime.LIVE
