"""Open time and memory of a packed tree against today's kept tree, for synthetic images.

    PYTHONPATH=. .venv/bin/python scripts/benchlib/packed_tree.py [--sizes 100000 1000000]
        [--runs 3] [--together 4] [--work DIR]

Not a test and not part of ``scripts/bench`` yet: a standalone measurement.
For each size it merges a synthetic image of that many entries over 20
layers (directories of 40 names, three levels deep, a symlink in ten, a
capability xattr in a thousand), keeps it both ways (``lazyfs.tree.kept``'s
marshal file and ``lazyfs.tree.packed_write``'s file), then in fresh
processes opens each and does what a mount's first requests do (look up
1000 random paths from the root, read their attributes).  Reported per
format: file size; open time with the file in the page cache (median of
``--runs``) and with it dropped from the page cache first
(``POSIX_FADV_DONTNEED`` on that file only, nothing else is evicted); the
walk's time; the RSS the process gained over an interpreter with the same
modules imported, after the open and after the walk, and its PSS after the
walk; and the whole PSS of each of ``--together`` processes holding the
same tree at once, where the packed file's pages are shared.  The kernel
maps a file's pages around each one touched (fault-around), so a random
walk maps much of a packed file: shared page-cache pages, which PSS divides
among the processes mapping them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from lazyfs.tree import kept
from lazyfs.tree.merge import ROOT_INO, InodeNo, MergedTree, merge
from lazyfs.tree.packed_read import PackedTree
from lazyfs.tree.packed_write import write_packed
from providers.digest import Digest

LAYERS = 20
PER_DIR = 40
PROBES = 1000
CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")


def synthetic_indexes(entries: int) -> list[LayerIndex]:
    """About ``entries`` entries over ``LAYERS`` layers, each directory in one layer."""
    layers: list[list[IndexEntry]] = [[] for _ in range(LAYERS)]
    for number in range(0, entries, PER_DIR + 1):
        directory = number // (PER_DIR + 1)
        path = ("usr", f"lib{directory % 7}", f"pkg-{directory // 7}")
        layer = layers[directory % LAYERS]
        layer.append(IndexEntry(path, Kind.DIR, 0o755, mtime_ns=1_600_000_000 * 10**9))
        for child in range(min(PER_DIR, entries - number - 1)):
            name = f"module_{child:03d}_{'x' * (child % 13)}.py"
            if child % 10 == 9:
                layer.append(IndexEntry((*path, name), Kind.SYMLINK, 0o777, target="../../x"))
                continue
            xattrs = (("security.capability", CAPABILITY),) if child == 0 else ()
            layer.append(
                IndexEntry(
                    (*path, name),
                    Kind.FILE,
                    0o644,
                    size=100 + child * 37,
                    mtime_ns=1_600_000_000 * 10**9 + child,
                    offset=512 * (number + child),
                    xattrs=xattrs if directory % 25 == 0 else (),
                )
            )
    return [
        LayerIndex(Digest(f"sha256:{n:064x}"), "none", 0, tuple(entries))
        for n, entries in enumerate(layers)
    ]


def probe_paths(tree: MergedTree, count: int) -> list[list[bytes]]:
    """``count`` paths of the tree, from the root, spread over it (a fixed seed)."""
    paths: list[list[bytes]] = []
    pending: list[tuple[InodeNo, list[bytes]]] = [(ROOT_INO, [])]
    while pending:
        ino, path = pending.pop()
        for name, child in tree.children[ino]:
            paths.append([*path, name])
            if child in tree.children:
                pending.append((child, [*path, name]))
    return random.Random(7).sample(paths, min(count, len(paths)))


def memory() -> dict[str, int]:
    """This process's Rss and Pss in kB, from smaps_rollup."""
    return _rollup(Path("/proc/self/smaps_rollup"))


def _rollup(path: Path) -> dict[str, int]:
    found = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key] = int(rest.split()[0])
    return found


def child(kind: str, path: Path, digests: list[str], probes: Path, cold: bool, hold: bool) -> None:
    """Open the tree at ``path`` the ``kind`` way, walk the probe paths, print what it cost."""
    paths = [
        [bytes.fromhex(part) for part in line.split()]
        for line in probes.read_text().split("\n")
        if line
    ]
    if cold:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    before = memory()
    start = time.perf_counter()
    tree: Any
    if kind == "kept":
        tree = kept.load_tree(path, [Digest(d) for d in digests], sources=())
        assert tree is not None
    else:
        tree = PackedTree.open(path, digests)
    opened = time.perf_counter() - start
    at_open = memory()
    start = time.perf_counter()
    for parts in paths:
        ino = ROOT_INO
        for part in parts:
            found = tree.lookup(ino, part)
            assert found is not None
            ino = found
        tree.inodes[ino]
    walked = time.perf_counter() - start
    after = memory()
    report = {
        "open_ms": opened * 1000,
        "walk_ms": walked * 1000,
        "open_rss_kb": at_open["Rss"] - before["Rss"],
        "rss_kb": after["Rss"] - before["Rss"],
        "pss_kb": after["Pss"] - before["Pss"],
    }
    print(json.dumps(report), flush=True)
    if hold:
        sys.stdin.read()  # until the parent has read our smaps


def run_child(
    kind: str, path: Path, digests: list[str], probes: Path, cold: bool
) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            *(["--cold"] if cold else []),
            "--child",
            kind,
            str(path),
            str(probes),
            *digests,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def together(kind: str, path: Path, digests: list[str], probes: Path, count: int) -> list[int]:
    """The PSS (kB) of each of ``count`` processes holding the tree at once."""
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--hold", "--child", kind, str(path), str(probes), *digests],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            process.stdout.readline()
        return [_rollup(Path(f"/proc/{p.pid}/smaps_rollup"))["Pss"] for p in processes]
    finally:
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
            process.wait()


def measure(entries: int, work: Path, runs: int, count: int) -> dict[str, Any]:
    start = time.perf_counter()
    indexes = synthetic_indexes(entries)
    tree = merge(indexes)
    merged_s = time.perf_counter() - start
    digests = [str(index.digest) for index in indexes]
    probes = work / f"probes-{entries}"
    probes.write_text(
        "".join(" ".join(p.hex() for p in path) + "\n" for path in probe_paths(tree, PROBES))
    )
    files = {"kept": work / f"kept-{entries}", "packed": work / f"packed-{entries}"}
    start = time.perf_counter()
    kept.store_tree(files["kept"], [Digest(d) for d in digests], tree, sources=())
    kept_s = time.perf_counter() - start
    start = time.perf_counter()
    write_packed(tree, digests, files["packed"])
    packed_s = time.perf_counter() - start
    inodes = len(tree.inodes)
    del tree, indexes
    result: dict[str, Any] = {
        "entries": inodes,
        "merge_s": merged_s,
        "write_s": {"kept": kept_s, "packed": packed_s},
    }
    for kind, path in files.items():
        warm = [run_child(kind, path, digests, probes, cold=False) for _ in range(runs)]
        cold = [run_child(kind, path, digests, probes, cold=True) for _ in range(runs)]
        result[kind] = {
            "file_mb": path.stat().st_size / 1e6,
            "open_warm_ms": statistics.median(r["open_ms"] for r in warm),
            "open_cold_ms": statistics.median(r["open_ms"] for r in cold),
            "walk_ms": statistics.median(r["walk_ms"] for r in warm),
            "open_rss_mb": statistics.median(r["open_rss_kb"] for r in warm) / 1024,
            "rss_mb": statistics.median(r["rss_kb"] for r in warm) / 1024,
            "pss_mb": statistics.median(r["pss_kb"] for r in warm) / 1024,
            "pss_together_mb": [p / 1024 for p in together(kind, path, digests, probes, count)],
        }
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--together", type=int, default=4)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, path, probes, *digests = args.child
        child(kind, Path(path), digests, Path(probes), args.cold, args.hold)
        return 0
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for entries in args.sizes:
            print(
                json.dumps(measure(entries, Path(scratch), args.runs, args.together), indent=1),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
