"""Command line of scripts/bench: choose images and measurements, run, report."""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

import trio

from backends.names import NAMES
from benchlib import report
from benchlib.cold import (
    DEFAULT_RATE_MBIT,
    DEFAULT_RTT_MS,
    ROWS,
    ROWS_ENV,
    measure_cold_start,
    unknown_rows,
)
from benchlib.density import measure_density, measure_density_files, stop_mount_server
from benchlib.estargz import TOOLS as ESTARGZ_TOOLS
from benchlib.images import BenchImage, debian_image, synthetic_image
from benchlib.lazy import Lazyfs
from benchlib.measure import (
    MEASUREMENTS,
    Context,
    Result,
    measure_provision,
    measure_provision_first,
    measure_start,
    measure_tree,
)
from benchlib.pull import measure_pull
from benchlib.util import scratch_dir

REPO = Path(__file__).resolve().parents[2]
# "density" selects both; "density-files" the by-size part alone (once a run, any image).
CHOICES = (*MEASUREMENTS, "density-files")
IMAGES = ("synthetic", "debian")
# Byte-compiled before measuring (see compile_sources).
PACKAGES = ("lazyfs", "providers", "backends")
TOOLS = (
    "debootstrap",
    "umoci",
    "skopeo",
    "runc",
    "fuse-overlayfs",
    "tar",
    "busybox",
    "docker-registry",
)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark lazyfs against umoci, tar, kernel overlayfs and fuse-overlayfs.",
        epilog=f"cold-start: {ROWS_ENV}='ROW,ROW' (in the environment) runs only those rows, "
        f"named as the table names them: {'; '.join(ROWS)}.",
    )
    parser.add_argument("--runs", type=int, help="timed runs per contender (default 5, quick 1)")
    parser.add_argument("--out", type=Path, help="results directory (default results/bench/TIME)")
    parser.add_argument("--quick", action="store_true", help="synthetic image only, fewer runs")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this measurement (repeatable; a prefix such as 'walk' selects both "
        f"temperatures): {', '.join(CHOICES)}",
    )
    parser.add_argument(
        "--image",
        action="append",
        choices=IMAGES,
        help="only this image (repeatable; default both, the synthetic one with --quick)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help=f"only this lazyfs backend (repeatable; default all): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="lazyfs alone, no umoci, tar, overlayfs or skopeo: an A/B between lazyfs versions",
    )
    parser.add_argument(
        "--link-rate",
        type=float,
        default=DEFAULT_RATE_MBIT,
        metavar="MBIT",
        help="cold-start: the shaped link's bandwidth, Mbit/s each way (default %(default)g)",
    )
    parser.add_argument(
        "--link-rtt",
        type=float,
        default=DEFAULT_RTT_MS,
        metavar="MS",
        help="cold-start: the shaped link's round trip, ms (default %(default)g)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/var/cache/lazyfs-bench"),
        help="where the built images are kept between runs (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    unknown_backends = sorted(set(args.backend or ()) - set(NAMES))
    if unknown_backends:
        parser.error(f"unknown backend {', '.join(unknown_backends)}; known: {', '.join(NAMES)}")
    if args.link_rate <= 0 or args.link_rtt < 0:
        parser.error("--link-rate must be above 0 and --link-rtt at least 0")
    if args.only:
        unknown = [n for n in args.only if not any(_selects(n, m) for m in CHOICES)]
        if unknown:
            parser.error(f"unknown measurement {', '.join(unknown)}; known: {', '.join(CHOICES)}")
    rows = unknown_rows(os.environ.get(ROWS_ENV, ""))
    if rows:
        # Rows' names hold commas: listed with semicolons between them.
        parser.error(f"{ROWS_ENV} names no row {'; '.join(rows)}; known: {'; '.join(ROWS)}")
    return args


def _selects(name: str, measurement: str) -> bool:
    """``walk`` selects walk-cold and walk-warm; a full name selects itself."""
    return measurement == name or measurement.startswith(name + "-")


def selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(CHOICES)
    return [m for m in CHOICES if any(_selects(n, m) for n in only)]


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, so every finally unmounts and cleans.
    raise KeyboardInterrupt(f"signal {signum}")


def compile_sources() -> bool:
    """Byte-compile lazyfs' packages, as installing it does; False if that failed.

    Every mount process imports its modules afresh. Under
    PYTHONDONTWRITEBYTECODE (or a checkout Python cannot write to) nothing
    would be cached, so each would compile them from source inside the
    timed region: a cost that grows with the source's size and that no
    installed lazyfs pays.
    """
    return all(compileall.compile_dir(REPO / name, quiet=1) for name in PACKAGES)


def run_image(
    image: BenchImage,
    names: list[str],
    cache: Path,
    scratch: Path,
    runs: int,
    results: list[Result],
    link: tuple[float, float] = (DEFAULT_RATE_MBIT, DEFAULT_RTT_MS),
    *,
    backends: list[str] | None = None,
    peers: bool = True,
) -> None:
    """Run the measurements ``names`` on ``image``, appending each result as it completes.

    Appending in place keeps what was measured when a later measurement fails
    or is interrupted.
    """
    lazyfs = Lazyfs(scratch / "lazyfs", image, only=backends)
    ctx = Context(image, cache, scratch, lazyfs, runs, log, peers=peers)
    try:
        for name in names:
            log(f"{name} on {image.name}")
            if name == "provision":
                results.append(measure_provision(ctx))
            elif name == "provision-first":
                results.append(measure_provision_first(ctx))
            elif name == "pull":
                results.append(measure_pull(ctx))
            elif name == "start":
                results.append(measure_start(ctx))
            elif name == "cold-start":
                results.append(measure_cold_start(ctx, *link))
            elif name == "density":
                results.append(measure_density(ctx))
            elif name == "density-files":
                if not any(result.measurement == "density-files" for result in results):
                    results.extend(measure_density_files(ctx))  # once a run, not per image
            else:
                what, temperature = name.split("-")
                results.append(measure_tree(ctx, what, temperature == "cold"))
    finally:
        # Whatever a measurement left provisioned (interrupted mid-run) is destroyed.
        trio.run(lazyfs.provisioner.recover, [])
        stop_mount_server(ctx)  # the fuse mounts' server, if one was started


def main(argv: list[str]) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        log("needs root (mounts, runc, drop_caches)")
        return 2
    names = selected(args.only)
    wanted = TOOLS + (ESTARGZ_TOOLS if "cold-start" in names else ())
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing:
        log(f"missing {', '.join(missing)}; run scripts/setup")
        return 2
    runs = args.runs or (1 if args.quick else 5)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or REPO / "results" / "bench" / stamp
    signal.signal(signal.SIGTERM, _interrupt)

    results: list[Result] = []
    status = 0
    compiled = compile_sources()
    if not compiled:
        log("could not byte-compile lazyfs; its mount processes compile it at every start")
    chosen = args.image or (["synthetic"] if args.quick else list(IMAGES))
    try:
        builders = {"synthetic": synthetic_image, "debian": debian_image}
        images = [builders[name](args.cache, log) for name in IMAGES if name in chosen]
        with scratch_dir(args.cache, "run-") as scratch:
            for image in images:
                with scratch_dir(scratch, f"{image.name}-") as work:
                    run_image(
                        image,
                        names,
                        args.cache,
                        work,
                        runs,
                        results,
                        (args.link_rate, args.link_rtt),
                        backends=args.backend,
                        peers=not args.no_peers,
                    )
    except KeyboardInterrupt:
        status = 130
        log("interrupted: everything is unmounted and removed; writing what was measured")
    except Exception:
        status = 1
        log(f"failed:\n{traceback.format_exc()}everything is unmounted and removed")
    if not results:
        return status
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "started": stamp,
        "runs": runs,
        "quick": args.quick,
        "complete": status == 0,
        "backends": args.backend,
        "peers": not args.no_peers,
        "compiled": compiled,
        "machine": report.machine(args.cache, REPO),
    }
    json_path = report.write_json(out, meta, results)
    m = meta["machine"]
    title = (
        f"lazyfs {m['lazyfs_commit']} - {m['cores']} cores, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, {m['disk']} - {runs} runs"
    )
    png_path = report.chart(out, results, title)
    (out / "results.md").write_text(report.markdown(meta, results))
    timelines = report.timelines(results)
    if timelines:
        (out / "timelines.md").write_text(timelines)
    print(title)
    print(report.table(results))
    also = " and timelines.md" if timelines else ""
    print(f"\nwrote {json_path}, {png_path}, results.md{also}")
    return status
