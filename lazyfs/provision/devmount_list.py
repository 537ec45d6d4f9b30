"""What ``lazyfs mount`` mounted under a work dir, as ``lazyfs mount`` alone lists it.

Read from the mounts' records alone (``lazyfs.provision.devmount`` says what
they hold; ``lazyfs.provision.usage.mounted_images`` reads their images): no
store, no provisioner, so listing creates nothing on disk, as ``lazyfs ps``
does. A record stays until ``lazyfs umount``, so a mount that is gone (a
reboot, an unmount behind lazyfs' back) is listed as gone, not hidden: its
record still keeps its image from GC.

Each mount's state is the word ``lazyfs ps`` gives a fuse rootfs
(``lazyfs.provision.revive.mount_state``): ``alive``, ``dead`` (its process is
gone), ``not answering`` (its process is stopped or stuck), ``not mounted``;
``unreadable`` for a record that cannot be read (one being written, or
damaged), listed at the mount point it still names, if any, for ``lazyfs
umount``. The mounts are asked side by side, with the mount table read once:
a stopped one costs its seconds once, and never hangs the listing.

A mount point is looked at only if the mount table has it: the record holds
it as the kernel mounted it (symlinks followed), so it is compared as text.
Looking at a path asks every mount on the way to it, and one whose process
is stopped answers never: a mount point inside another lazyfs mount, say.
One in the table is asked in a thread given ``ANSWER_DEADLINE`` for all of
it, path and statfs (``answer_in_time``), and is ``not answering`` past that.
``lazyfs umount`` asks the same way (``lazyfs.provision.devmount``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from backends.mounts import ANSWER_DEADLINE
from lazyfs.provision.revive import AT_ONCE, mount_state
from lazyfs.provision.usage import ImageRecord, mount_image_record, mounted_images
from providers.mountinfo import mount_point_set

T = TypeVar("T")


def _mountpoint(record: Path) -> str:
    """The mount point ``record`` is of; OSError or ValueError if it cannot be read."""
    # Written by ``devmount`` as the absolute path, symlinks followed, and a newline.
    return (record / "mountpoint").read_text(encoding="utf-8").removesuffix("\n")


def answer_in_time(
    ask: Callable[[], T], *, hopeless: Callable[[], bool] = lambda: True
) -> tuple[T] | None:
    """What ``ask()`` returns, in a 1-tuple, or None if it has not answered within
    ``ANSWER_DEADLINE`` and ``hopeless()`` then says so (asked again after each
    further ``ANSWER_DEADLINE``); what it raises is raised. For a look at a path,
    which waits for ever on a mount on the way whose process is stopped.

    It runs in a daemon thread: one stuck on a stopped mount keeps neither the caller
    nor, as a rule, the command's exit waiting (the kernel ends it with the process: a
    fatal signal ends the wait for a FUSE request the stopped process has not read).
    Not when another process asked first for the same name, and waits for that answer
    too: the thread then waits with it, where no signal ends it, and the command,
    having said what it had to, exits once the stopped mount is continued or taken
    down.
    """
    answer: list[tuple[T] | Exception] = []

    def asking() -> None:
        try:
            answer.append((ask(),))
        except Exception as error:  # the caller's to handle, in its own thread
            answer.append(error)

    thread = threading.Thread(target=asking, name="lazyfs-ask", daemon=True)
    thread.start()
    thread.join(ANSWER_DEADLINE)
    while not answer and not hopeless():
        thread.join(ANSWER_DEADLINE)
    if not answer:
        return None
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


def mount_point_state(mountpoint: Path, points: frozenset[Path]) -> str:
    """``mount_state`` of the fuse mount at ``mountpoint``, never waiting for ever. Of
    another mount too (the one a mount point lies in): statfs asks any the same way."""
    if mountpoint not in points:
        # Not looked at: its path may lie in a mount whose process is stopped.
        return "not mounted"
    answer = answer_in_time(lambda: mount_state("fuse", mountpoint, points))
    return "not answering" if answer is None else answer[0]


def _describe(record: Path, image: ImageRecord, points: frozenset[Path]) -> dict[str, Any]:
    try:
        mountpoint = _mountpoint(record)
    except (OSError, ValueError) as error:
        return _unreadable(record, error)
    writable = (record / "upper").is_dir()  # only a --writable mount has one
    try:
        pid: int | None = int((record / "pid").read_text())
    except (OSError, ValueError):
        pid = None  # not up yet, or the record of an older lazyfs
    return {
        "mountpoint": mountpoint,
        "image": image.reference,
        "digest": image.digest,
        "platform": image.platform,
        "mode": "rw" if writable else "ro",
        "writable": writable,
        "pid": pid,
        "mount": mount_point_state(Path(mountpoint), points),
    }


def _unreadable(record: Path, why: object) -> dict[str, Any]:
    try:
        # Where it is, if the record still says: what ``lazyfs umount`` is given to take
        # it down and forget it.
        mountpoint: str | None = _mountpoint(record)
    except (OSError, ValueError):
        mountpoint = None  # a mount starting writes it second, after its image
    return {"mountpoint": mountpoint, "mount": "unreadable", "problem": f"record {record}: {why}"}


def described(record: Path) -> dict[str, Any]:
    """The mount of ``record`` as ``mounts`` lists it (for ``lazyfs mount IMAGE DIR
    --json``, once it is up). Blocking."""
    try:
        image = mount_image_record(record)
    except ValueError as error:
        return _unreadable(record, error)
    return _describe(record, image, mount_point_set())


def mounts(work_dir: Path) -> list[dict[str, Any]]:
    """The mounts recorded under ``work_dir``, as ``lazyfs mount --json`` lists them, by
    mount point. Creates nothing; none when ``work_dir`` does not exist. Blocking."""
    found, unknown = mounted_images(work_dir)
    # After the records: a mount is made after its record is written.
    points = mount_point_set()
    with ThreadPoolExecutor(max(1, min(AT_ONCE, len(found)))) as pool:
        items = list(pool.map(lambda one: _describe(one[0], one[1], points), found))
    items.extend(
        _unreadable(Path(name.removeprefix("mount:")), "no readable image.json") for name in unknown
    )
    return sorted(items, key=lambda item: (item["mountpoint"] is None, item["mountpoint"] or ""))
