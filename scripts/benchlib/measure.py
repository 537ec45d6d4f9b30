"""The measurements: each runs lazyfs and its peers in one session, alternating.

A measurement is a list of contenders. Each contender's ``once`` does one
timed run and returns its seconds (and optional phases); whatever it needs
before and after (a fresh directory, a mount, cleaning up) happens in
``once`` outside the timed region. Every contender runs once untimed first
(warm-up: the page cache holds the layer blobs, per-layer stores are filled),
then ``runs`` rounds. A round runs them in ``run_order``, each row next to
the row it is compared with (its ``versus``), and every other round in the
reverse order (ABBA), so neither of a pair always goes first; each sample
keeps when it started and its place in its round.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from benchlib.images import BenchImage, gzip_reference, image_layers
from benchlib.lazy import Lazyfs
from benchlib.lowers import lower_dirs
from benchlib.timeline import Request
from benchlib.util import (
    ToolError,
    drop_caches,
    fuse_overlay,
    kernel_overlay,
    mounted,
    now,
    run,
    scratch_dir,
    settle,
)
from lazyfs.provision.provisioner import ProvisionInfo
from lazyfs.provision.runtime import bundle_config, write_bundle
from providers.errors import LazyfsError
from providers.manifest import RuntimeConfig

Log = Callable[[str], None]
MEASUREMENTS = (
    "pull",
    "provision",
    "provision-first",
    "walk-cold",
    "walk-warm",
    "read-cold",
    "read-warm",
    "start",
    "cold-start",
    "density",
)


@dataclass(frozen=True)
class Timing:
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    facts: dict[str, int] = field(default_factory=dict)  # what was done: entries, bytes
    # The requests over the shaped link until then (cold-start), for a timeline.
    requests: tuple[Request, ...] = ()
    # Set by ``compare``: when its ``once`` began (``time.time()``), and its place in its round.
    started: float = 0.0
    position: int = -1


@dataclass
class Contender:
    name: str
    lazyfs: bool  # lazyfs itself, as opposed to a peer it is compared with
    once: Callable[[], Timing]
    samples: list[Timing] = field(default_factory=list)
    skipped: str = ""  # why it could not run, if it could not
    versus: str = ""  # another lazyfs contender to give a ratio against, as against a peer

    def median_sample(self) -> Timing:
        """The sample of the median run (the lower middle one of an even count)."""
        ordered = sorted(self.samples, key=lambda s: s.seconds)
        return ordered[(len(ordered) - 1) // 2]

    def slowest_sample(self) -> Timing:
        """The sample of the slowest run."""
        return max(self.samples, key=lambda s: s.seconds)


@dataclass
class Result:
    measurement: str
    image: str
    contenders: list[Contender]

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement,
            "image": self.image,
            "contenders": [
                {
                    "name": c.name,
                    "lazyfs": c.lazyfs,
                    "skipped": c.skipped,
                    "seconds": [s.seconds for s in c.samples],
                    "median": median([s.seconds for s in c.samples]) if c.samples else None,
                    "phases": {
                        phase: median([s.phases[phase] for s in c.samples])
                        for phase in (c.samples[0].phases if c.samples else {})
                    },
                    # When each run began (Unix time) and its place in its round (from 0).
                    "started": [s.started for s in c.samples],
                    "positions": [s.position for s in c.samples],
                    "median_run_facts": c.median_sample().facts if c.samples else {},
                    "facts_by_run": [s.facts for s in c.samples],  # in run order
                    "timeline": [r.to_json() for r in c.median_sample().requests]
                    if c.samples
                    else [],
                    # Every run's, in run order: where a slow one lost its time.
                    "timelines": [[r.to_json() for r in s.requests] for s in c.samples],
                }
                for c in self.contenders
            ],
            "ratios": [{"lazyfs": a, "peer": b, "ratio": r} for a, b, r in ratios(self.contenders)],
            "paired_ratios": [
                {"lazyfs": a, "peer": b, "ratio": r} for a, b, r in paired_ratios(self.contenders)
            ],
        }


def ratios(contenders: Sequence[Contender]) -> list[tuple[str, str, float]]:
    """lazyfs median / peer median for every pair: above 1 means lazyfs is slower.

    A lazyfs contender's ``versus`` counts as one more peer of it.
    """
    out = []
    for mine in contenders:
        if not mine.lazyfs or not mine.samples:
            continue
        for peer in contenders:
            if (peer.lazyfs and peer.name != mine.versus) or not peer.samples:
                continue
            mine_m = median([s.seconds for s in mine.samples])
            peer_m = median([s.seconds for s in peer.samples])
            out.append((mine.name, peer.name, mine_m / peer_m if peer_m else float("inf")))
    return out


def paired_ratios(contenders: Sequence[Contender]) -> list[tuple[str, str, float]]:
    """The median over rounds of lazyfs' sample / the peer's sample of the same round.

    ``compare`` runs every contender once a round, so the two samples of a
    round were taken closer in time than two of different rounds, and those
    of a row and its ``versus`` one right after the other (``adjacent``):
    on a shared machine whose load swings from round to round this ratio is
    steadier than the ratio of medians (``ratios``). Only for pairs with a
    sample in every round.
    """
    out = []
    for mine, peer_name, _ in ratios(contenders):
        a = next(c for c in contenders if c.name == mine)
        b = next(c for c in contenders if c.name == peer_name)
        if len(a.samples) != len(b.samples) or any(s.seconds <= 0 for s in b.samples):
            continue
        rounds = [x.seconds / y.seconds for x, y in zip(a.samples, b.samples, strict=True)]
        out.append((mine, peer_name, median(rounds)))
    return out


def adjacent(a: Contender, b: Contender) -> bool:
    """Whether in every round the samples of ``a`` and ``b`` were taken one right after the
    other (``compare``'s positions)."""
    pairs = list(zip(a.samples, b.samples, strict=False))
    return (
        bool(pairs)
        and len(a.samples) == len(b.samples)
        and all(x.position >= 0 and abs(x.position - y.position) == 1 for x, y in pairs)
    )


def run_order(contenders: Sequence[Contender]) -> list[Contender]:
    """The order of a round: the list's, but each row next to the row it is compared with.

    A row that others name as their ``versus`` runs between the first two of
    them, the rest right after: with more than two, those after the second
    are not next to it (``adjacent`` tells).
    """
    names = {c.name for c in contenders}
    spokes: dict[str, list[Contender]] = {}
    for c in contenders:
        if c.versus in names and c.versus != c.name:
            spokes.setdefault(c.versus, []).append(c)
    by_name = {c.name: c for c in contenders}
    order: list[Contender] = []
    placed: set[str] = set()
    for c in contenders:
        hub = c.name if c.name in spokes else c.versus if c.versus in spokes else None
        group = [c] if hub is None else [*spokes[hub][:1], by_name[hub], *spokes[hub][1:]]
        for member in group:
            if member.name not in placed:
                placed.add(member.name)
                order.append(member)
    return order


def compare(contenders: list[Contender], runs: int, log: Log, label: str) -> list[Contender]:
    """Warm each contender up once, then run them ``runs`` rounds: in ``run_order``, and
    reversed every other round (ABBA). Each sample gets its start and place in its round."""
    alive = []
    for contender in contenders:
        try:
            contender.once()
        except (LazyfsError, ToolError, OSError) as exc:
            # A backend that cannot take this image (or a peer tool missing) is
            # reported as skipped with its reason, not a crash of the whole run.
            contender.skipped = f"{type(exc).__name__}: {exc}"
            log(f"{label}: {contender.name} skipped: {contender.skipped}")
            continue
        alive.append(contender)
    order = run_order(alive)
    for round_no in range(runs):
        for position, contender in enumerate(order if round_no % 2 == 0 else order[::-1]):
            started = time.time()
            sample = contender.once()
            contender.samples.append(
                dataclasses.replace(sample, started=started, position=position)
            )
        log(f"{label}: round {round_no + 1}/{runs} done")
    return contenders


# --- walking and reading trees ---------------------------------------------------


def walk_tree(root: Path) -> dict[str, int]:
    """lstat every entry below ``root``; never follows symlinks."""
    entries = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                os.lstat(entry.path)
                entries += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return {"entries": entries}


def read_tree(root: Path) -> dict[str, int]:
    """Read every regular file below ``root`` to the end; returns files and bytes read."""
    files = total = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        while n := os.readv(fd, [view]):
                            total += n
                    finally:
                        os.close(fd)
                    files += 1
    return {"files": files, "bytes": total}


# --- the measurements ----------------------------------------------------------------


@dataclass
class Context:
    """What every measurement of one image needs."""

    image: BenchImage
    cache: Path
    scratch: Path  # on the same disk as the cache, removed at the end
    lazyfs: Lazyfs
    runs: int
    log: Log
    peers: bool = True  # False (``--no-peers``): lazyfs alone, for an A/B between versions

    @property
    def lowers(self) -> list[Path]:
        return lower_dirs(self.cache, self.image)

    @functools.cached_property
    def lazyfs_gzip(self) -> Lazyfs:
        """lazyfs with the image's gzip form fetched: the fuse backend reads through checkpoints."""
        reference = gzip_reference(self.cache, self.image)
        return Lazyfs(self.scratch / "lazyfs-gzip", self.image, reference)


def measure_provision(ctx: Context) -> Result:
    """A rootfs from the stored layers: lazyfs backends against umoci unpack and tar -x."""
    return _measure_provisions(ctx, "provision", _provision_once)


def measure_provision_first(ctx: Context) -> Result:
    """The first container of an image: each run with a new, empty lazyfs store.

    The blobs are fetched into the new store untimed; what a backend derives
    from them per layer (extracted trees, indexes) is built inside the timed
    provision, as for the first container on a machine.
    """
    return _measure_provisions(ctx, "provision-first", _provision_first_once)


def _measure_provisions(
    ctx: Context, name: str, lazyfs_once: Callable[[Context, str], Callable[[], Timing]]
) -> Result:
    contenders = [
        Contender(f"lazyfs {backend}", True, lazyfs_once(ctx, backend))
        for backend in ctx.lazyfs.backends()
    ]
    if ctx.peers:
        contenders.append(Contender("umoci unpack", False, _umoci_once(ctx)))
        contenders.append(Contender("tar -x", False, _tar_once(ctx)))
    label = f"{name} {ctx.image.name}"
    return Result(name, ctx.image.name, compare(contenders, ctx.runs, ctx.log, label))


def _provision_first_once(ctx: Context, backend: str) -> Callable[[], Timing]:
    def once() -> Timing:
        with scratch_dir(ctx.scratch, f"first-{backend}-") as work:
            fresh = Lazyfs(work, ctx.image)
            settle()
            info, seconds = fresh.provision(backend, writable=False)
            fresh.destroy(info.container_id)
            return Timing(seconds)

    return once


def _provision_once(ctx: Context, backend: str) -> Callable[[], Timing]:
    def once() -> Timing:
        settle()
        info, seconds = ctx.lazyfs.provision(backend, writable=False)
        ctx.lazyfs.destroy(info.container_id)
        return Timing(seconds)

    return once


def _umoci_once(ctx: Context) -> Callable[[], Timing]:
    def once() -> Timing:
        settle()
        bundle = ctx.scratch / "umoci-bundle"
        try:
            start = now()
            run(["umoci", "unpack", "--image", f"{ctx.image.oci_layout}:{ctx.image.tag}", bundle])
            return Timing(now() - start)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)

    return once


def _tar_once(ctx: Context) -> Callable[[], Timing]:
    layers = image_layers(ctx.image)

    def once() -> Timing:
        settle()
        rootfs = ctx.scratch / "tar-rootfs"
        try:
            start = now()
            rootfs.mkdir()
            # Layers in order, as a naive unpacker would: whiteouts are not
            # applied, so this is a lower bound on the work, not a correct tree.
            for layer in layers:
                run(
                    [
                        "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                        "-xpf", layer, "-C", rootfs,
                    ]
                )  # fmt: skip
            return Timing(now() - start)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)

    return once


def _trees(ctx: Context, stack: ExitStack) -> list[tuple[str, bool, Path]]:
    """Every tree to walk: one rootfs per lazyfs backend, then the two overlay peers (if any)."""
    trees: list[tuple[str, bool, Path]] = []
    for backend in ctx.lazyfs.backends():
        try:
            info = stack.enter_context(ctx.lazyfs.rootfs(backend))
        except LazyfsError as exc:
            ctx.log(f"{backend} cannot provision {ctx.image.name}: {exc}")
            continue
        trees.append((f"lazyfs {backend}", True, info.rootfs))
    if "fuse" in ctx.lazyfs.backends():
        # The same image with gzip layers, as a registry serves it.
        info = stack.enter_context(ctx.lazyfs_gzip.rootfs("fuse"))
        trees.append(("lazyfs fuse (gzip layers)", True, info.rootfs))
    if not ctx.peers:
        return trees
    lowers = ctx.lowers
    trees.append(
        (
            "kernel overlayfs",
            False,
            stack.enter_context(kernel_overlay(lowers, ctx.scratch / "ovl")),
        )
    )
    trees.append(
        ("fuse-overlayfs", False, stack.enter_context(fuse_overlay(lowers, ctx.scratch / "fovl")))
    )
    return trees


def measure_tree(ctx: Context, what: str, cold: bool) -> Result:
    """Walk (lstat all) or read (every file) each backend's rootfs and the overlay peers."""
    action = walk_tree if what == "walk" else read_tree
    name = f"{what}-{'cold' if cold else 'warm'}"
    with ExitStack() as stack:
        trees = _trees(ctx, stack)

        def once_for(root: Path) -> Callable[[], Timing]:
            def once() -> Timing:
                if cold:
                    drop_caches()
                else:
                    action(root)  # untimed pass: whatever another tree evicted is back
                start = now()
                facts = action(root)
                return Timing(now() - start, facts=facts)

            return once

        contenders = [Contender(label, mine, once_for(root)) for label, mine, root in trees]
        compare(contenders, ctx.runs, ctx.log, f"{name} {ctx.image.name}")
    return Result(name, ctx.image.name, contenders)


def measure_start(ctx: Context) -> Result:
    """Provision, then runc until the image's command has printed its line."""
    config = ctx.lazyfs.manifest.config
    contenders = [
        Contender(f"lazyfs {name}", True, _start_lazyfs_once(ctx, name, config))
        for name in ctx.lazyfs.backends()
    ]
    if ctx.peers:
        contenders.append(Contender("kernel overlayfs", False, _start_overlay_once(ctx, config)))
    label = f"start {ctx.image.name}"
    return Result("start", ctx.image.name, compare(contenders, ctx.runs, ctx.log, label))


def _start_lazyfs_once(ctx: Context, backend: str, config: RuntimeConfig) -> Callable[[], Timing]:
    # Writable, as a container gets it (runc may need to create /proc and the
    # like); a backend that is read-only for now runs read-only instead.
    writable = [True]

    def provision() -> tuple[ProvisionInfo, float]:
        try:
            return ctx.lazyfs.provision(backend, writable=writable[0])
        except LazyfsError:
            if not writable[0]:
                raise
            writable[0] = False
            ctx.log(f"start: {backend} cannot provision writable; measuring it read-only")
            return ctx.lazyfs.provision(backend, writable=False)

    def once() -> Timing:
        settle()
        start = now()
        info, _ = provision()
        try:
            provisioned = now()
            ran = _run_until_printed(ctx, info.rootfs, config, not info.writable)
            phases = {"provision": provisioned - start, "run": ran - provisioned}
            return Timing(ran - start, phases, {"writable": int(info.writable)})
        finally:
            ctx.lazyfs.destroy(info.container_id)

    return once


def _start_overlay_once(ctx: Context, config: RuntimeConfig) -> Callable[[], Timing]:
    lowers = ctx.lowers

    def once() -> Timing:
        settle()
        with scratch_dir(ctx.scratch, "ovl-start-") as work:
            upper, workdir, merged = work / "upper", work / "work", work / "merged"
            upper.mkdir()
            workdir.mkdir()
            lowerdir = ":".join(str(p) for p in reversed(lowers))
            start = now()
            options = f"lowerdir={lowerdir},upperdir={upper},workdir={workdir}"
            with mounted("overlay", merged, "overlay", options):
                provisioned = now()
                ran = _run_until_printed(ctx, merged, config, False)
            return Timing(ran - start, {"provision": provisioned - start, "run": ran - provisioned})

    return once


_runc_ids = iter(range(1 << 30))


def _run_until_printed(ctx: Context, rootfs: Path, config: RuntimeConfig, readonly: bool) -> float:
    """Run the image's command with runc; the time its expected line arrived."""
    cid = f"lazyfs-bench-{os.getpid()}-{next(_runc_ids)}"
    state = ctx.scratch / "runc"
    with scratch_dir(ctx.scratch, "bundle-") as bundle:
        spec = bundle_config(
            rootfs,
            config,
            ctx.image.command,
            readonly=readonly,
            cgroups_path=f"lazyfs-bench/{cid}",
        )
        write_bundle(bundle, spec)
        proc = subprocess.Popen(
            ["runc", "--root", str(state), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            seen = b""
            printed = 0.0
            for line in proc.stdout:
                if line.decode(errors="replace").strip() == ctx.image.expect:
                    printed = now()
                    break
                seen += line
            proc.stdout.read()
            code = proc.wait(timeout=60)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if not printed:
                raise ToolError(f"runc run exited {code} without printing: {seen!r} {err.strip()}")
            return printed
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            subprocess.run(
                ["runc", "--root", str(state), "delete", "--force", cid],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
