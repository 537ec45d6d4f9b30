"""``destroy`` of a container a ``lazyfs run`` holds is refused at once, as of one runc runs.

It waited for the lock the run holds for its whole life, then said the container
was never provisioned: the run's own destroy had removed it meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.provision.provisioner import Provisioner
from lazyfs.store.disk import Store
from providers.errors import Conflict


def provisioner(tmp_path: Path) -> Provisioner:
    """A provisioner of the work dir in ``tmp_path``: each its own lock descriptors, as
    another process's."""
    return Provisioner(tmp_path / "work", Store(tmp_path / "store"), {}, "copy")


async def bounded(provisioner: Provisioner, container_id: str) -> bool:
    with trio.fail_after(10):  # a bound on the old wait for the run's lock, not a timing
        return await provisioner.destroy(container_id)


def test_destroy_of_a_container_a_run_holds_is_refused_at_once(tmp_path: Path) -> None:
    running, other = provisioner(tmp_path), provisioner(tmp_path)
    with running.hold("c1"):
        with pytest.raises(Conflict) as refused:
            trio.run(bounded, other, "c1")
        said = f"container c1 is being run (lazyfs run, pid {os.getpid()}): stop it first"
        assert str(refused.value).startswith(said)
    assert trio.run(other.destroy, "c1") is False  # the run is over: nothing left


def test_a_killed_runs_note_is_no_refusal_while_a_provision_holds_the_lock(
    tmp_path: Path,
) -> None:
    # A SIGKILLed run leaves its note, its lock gone with it. Then, while another
    # process held the lock to provision, destroy took the note for a live run.
    running = provisioner(tmp_path)
    with running.hold("c1"):
        note = running._locks.locks / "c1.run"
        kept = note.read_bytes()
    note.write_bytes(kept)
    other, destroying = provisioner(tmp_path), provisioner(tmp_path)

    async def main() -> None:
        taken, done = trio.Event(), trio.Event()

        async def provisioning() -> None:
            async with other._locks.taken("c1"):
                taken.set()
                await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(provisioning)
            await taken.wait()
            result: list[bool] = []

            async def destroy() -> None:
                result.append(await destroying.destroy("c1"))  # waits, refuses nothing

            nursery.start_soon(destroy)
            await trio.testing.wait_all_tasks_blocked()
            assert result == []  # waiting for the lock
            done.set()
        assert result == [False]

    trio.run(main)
    assert not note.exists()  # and the note went with the lock's next holder
