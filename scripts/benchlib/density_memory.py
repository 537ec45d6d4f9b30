"""Density by image size, memory under load: a mount's memory after a full walk and a read-all.

Part of the by-size density measurement (``benchlib.density_scale``): once
per image size, after the timed provisions, one fuse container of the image
is provisioned, read-only and writable, and, in the bench's own process:

- a ``find``-like walk: every directory listed, every entry ``lstat``-ed
  (one FUSE lookup each, the mount being fresh);
- a read-all: every regular file opened and read to its end.

The mount process's ``/proc/PID/smaps_rollup`` is read before, after the
walk and after the read: ``Pss``, ``Rss`` and ``Anonymous`` (the process's
own heap and stacks, which the mapped tree's page-cache pages are not), as
facts ``{pss,rss,anon}_kib_{before,walked,read}``.  The figure is the
walk's and the read's time together (``phases`` split them).

The bound a mount promises itself (``bound_kib``, the fact ``bound_kib``)
is what its bounded caches may hold: for a read-only one
``ATTRIBUTES_KEPT`` attribute entries (``lazyfs.fs.read_only``) and
``DEFAULT_CACHE_BYTES`` of chunks (``lazyfs.blobs.ranges``).  A writable
one keeps no attributes but ``INODES_KEPT`` of the tree's inodes
(``lazyfs.fs.upper_state``) and the kernel's lookup count of every inode
it was given, 4 bytes each (``lazyfs.fs.writable_lookups``): nodes only
for what changed, and the walk changes nothing.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pyfuse3

from backends.base import scratch_dir as rootfs_scratch
from benchlib.lazy import Lazyfs
from benchlib.measure import Contender, Timing
from benchlib.util import now, settle
from lazyfs.blobs.ranges import DEFAULT_CACHE_BYTES
from lazyfs.fs import mount as lazy_mount
from lazyfs.fs.read_only import ATTRIBUTES_KEPT
from lazyfs.fs.upper_state import INODES_KEPT
from lazyfs.provision.provisioner import ProvisionInfo
from lazyfs.tree.merge import DataRef, Inode, InodeNo
from providers.digest import Digest

FIELDS = {"pss": "Pss", "rss": "Rss", "anon": "Anonymous"}
STAGES = ("before", "walked", "read")
_READ = 1 << 20


def attribute_entry_bytes() -> int:
    """What one kept attribute entry costs: the object and its dict slot (about 8 + 8 + 8)."""
    return sys.getsizeof(pyfuse3.EntryAttributes()) + 24


def inode_entry_bytes() -> int:
    """What one kept inode of the tree costs: a file's, its data reference and its dict slot."""
    data = DataRef(Digest("sha256:" + "0" * 64), 0, 0)
    inode = Inode(InodeNo(1), 0o100644, 0, 0, 0, 0, 1, data=data)
    return sum(sys.getsizeof(part) for part in (inode, data, data.digest)) + 24


def bound_kib(*, writable: bool = False, inodes: int = 0) -> int:
    """A mount's bounded caches at their fullest, in KiB; a writable one's over ``inodes``."""
    if not writable:
        kept = ATTRIBUTES_KEPT * attribute_entry_bytes()
    else:
        counts = -(-4 * (inodes + 1) // 4096) * 4096  # whole pages of 4-byte counts
        kept = INODES_KEPT * inode_entry_bytes() + counts
    return round((kept + DEFAULT_CACHE_BYTES) / 1024)


def memory_contenders(
    lazyfs: Lazyfs, files: int, per: Callable[..., int], log: Callable[[str], None]
) -> list[Contender]:
    """The walk and read-all, measured once on a read-only and on a writable mount.

    ``per(pids, field)`` is ``benchlib.density``'s ``smaps_rollup`` reader.
    A mode that fails is reported as skipped, not a crash of the run.
    """
    out = []
    for writable in (False, True):
        mode = "writable" if writable else "read-only"
        contender = Contender(
            f"lazyfs fuse {files:,} files, walk + read ({mode})",
            True,
            _walk_read(lazyfs, writable, per),
        )
        try:
            contender.samples.append(contender.once())
        except OSError as exc:
            contender.skipped = f"{type(exc).__name__}: {exc}"
        out.append(contender)
        if contender.samples:
            facts = contender.samples[0].facts
            shown = "; ".join(
                f"{stage} " + "/".join(f"{facts[f'{key}_kib_{stage}']:,}" for key in FIELDS)
                for stage in STAGES
            )
            log(
                f"density {files:,} files: walk + read ({mode}): "
                f"{contender.samples[0].seconds:.1f} s; PSS/RSS/anon KiB {shown}; "
                f"caches' bound {facts['bound_kib']:,}"
            )
        else:
            log(f"density {files:,} files: walk + read ({mode}) skipped: {contender.skipped}")
    return out


def _walk_read(lazyfs: Lazyfs, writable: bool, per: Callable[..., int]) -> Callable[[], Timing]:
    def once() -> Timing:
        settle()
        info, _ = lazyfs.provision("fuse", writable=writable)
        try:
            pid = _mount_pid(info)
            facts = _sample(pid, "before", per)
            began = now()
            entries, regular = walk(Path(info.rootfs))
            walked = now()
            facts |= _sample(pid, "walked", per)
            read_bytes = read_all(regular)
            done = now()
            facts |= _sample(pid, "read", per)
        finally:
            lazyfs.destroy(info.container_id)
        facts |= {"entries": entries, "files_read": len(regular), "bytes_read": read_bytes}
        facts["bound_kib"] = bound_kib(writable=writable, inodes=entries)
        phases = {"walk": walked - began, "read": done - walked}
        return Timing(done - began, phases=phases, facts=facts)

    return once


def _mount_pid(info: ProvisionInfo) -> int:
    pid = lazy_mount.recorded_pid(rootfs_scratch(info.rootfs))
    if pid is None:
        raise OSError(f"no mount process recorded for {info.rootfs}")
    return pid


def _sample(pid: int, stage: str, per: Callable[..., int]) -> dict[str, int]:
    return {f"{key}_kib_{stage}": per([pid], field) for key, field in FIELDS.items()}


def walk(root: Path) -> tuple[int, list[str]]:
    """Every entry under ``root`` ``lstat``-ed, as ``find`` does; (entries, regular files)."""
    entries = 0
    regular: list[str] = []
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as listing:
            for entry in listing:
                entries += 1
                mode = os.lstat(entry.path).st_mode  # one lookup; d_type alone would skip it
                if stat.S_ISDIR(mode):
                    pending.append(entry.path)
                elif stat.S_ISREG(mode):
                    regular.append(entry.path)
    return entries, regular


def read_all(paths: list[str]) -> int:
    """Every file of ``paths`` read to its end; the bytes read."""
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while chunk := os.read(fd, _READ):
                total += len(chunk)
        finally:
            os.close(fd)
    return total
