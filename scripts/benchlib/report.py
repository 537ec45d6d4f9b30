"""Results out: the machine they came from, JSON, a table, a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from statistics import median
from typing import Any

from benchlib.measure import Contender, Result, adjacent, paired_ratios, ratios
from benchlib.timeline import render


def _first_line(args: list[str], containing: str = "") -> str:
    """The first line of a tool's output (that holds ``containing``); empty if it fails."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((line.strip() for line in lines if containing in line), "")


def _changed(repo: Path) -> bool:
    """Whether the work tree differs from HEAD: then the commit alone does not name the code."""
    # GIT_OPTIONAL_LOCKS=0: status must not refresh (write) the index as a side effect.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(out.stdout.strip())


def machine(disk_path: Path, repo: Path) -> dict[str, Any]:
    """What the figures depend on: CPU, memory, kernel, the disk's filesystem, tool versions."""
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    fs = " ".join(
        _first_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(disk_path)]).split()
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "disk": fs,
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "lazyfs_commit": _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
        + ("+changes" if _changed(repo) else ""),
        "tools": {
            "umoci": _first_line(["umoci", "--version"]),
            "runc": _first_line(["runc", "--version"]),
            "fuse-overlayfs": _first_line(["fuse-overlayfs", "--version"], "fuse-overlayfs"),
            "tar": _first_line(["tar", "--version"]),
        },
    }


def write_json(out: Path, meta: dict[str, Any], results: list[Result]) -> Path:
    path = out / "results.json"
    data = {**meta, "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms" if seconds < 10 else f"{seconds:9.2f} s "


def _facts(result: Result) -> str:
    """What the trees held, e.g. entries or bytes; flags trees that differ, a bug somewhere."""
    if not result.measurement.startswith(("walk", "read")):
        return ""  # other facts (start's "writable") describe the run, not a tree
    seen = {tuple(sorted(c.samples[0].facts.items())) for c in result.contenders if c.samples}
    seen.discard(())
    if not seen:
        return ""
    if len(seen) > 1:
        return (
            "  (the trees differ: "
            + "; ".join(f"{c.name}: {c.samples[0].facts}" for c in result.contenders if c.samples)
            + ")"
        )
    return "  (" + ", ".join(f"{v:,} {k}" for k, v in next(iter(seen))) + ")"


def _link(contender: Contender) -> str:
    """What crossed the link (cold-start), and its share of the image; "" for others."""
    facts = contender.samples[0].facts if contender.samples else {}
    if "bytes" not in facts or not facts.get("image_bytes"):
        return ""
    crossed = median([s.facts["bytes"] for s in contender.samples])
    return f"{crossed / 1e6:.1f} MB ({crossed / facts['image_bytes']:.1%} of the image)"


def _pairs(result: Result) -> list[tuple[str, str, float]]:
    """lazyfs/peer ratios; by-size density rows only against the peer of the same size."""
    pairs = ratios(result.contenders)
    if result.measurement != "density-files":
        return pairs
    # "lazyfs fuse 1,000 files" against "overlay 1,000 files" only.
    return [p for p in pairs if p[0].split()[-2:] == p[1].split()[-2:]]


def _ratio(value: float) -> str:
    # Two decimals hide a 10 ms provision against a 10 s one; keep 3 digits.
    return f"x{value:.3g}"


def _by_round(ratio: float | None, apart: bool) -> str:
    if ratio is None:
        return ""
    return f" ({_ratio(ratio)} by round{', apart' if apart else ''})"


def table(results: list[Result]) -> str:
    """One block per measurement and image: median, spread, and lazyfs/peer ratios."""
    lines = []
    for result in results:
        lines.append(f"\n{result.measurement} - {result.image}{_facts(result)}")
        pairs = _pairs(result)
        width = max(20, *(len(c.name) for c in result.contenders))
        for c in result.contenders:
            if not c.samples:
                lines.append(f"  {c.name:<{width}} skipped ({c.skipped})")
                continue
            secs = [s.seconds for s in c.samples]
            row = f"  {c.name:<{width}} {_fmt(median(secs))}  [{_fmt(min(secs)).strip()} .. "
            row += f"{_fmt(max(secs)).strip()}]"
            paired = {(m, p): r for m, p, r in paired_ratios(result.contenders)}
            named = {x.name: x for x in result.contenders}
            vs = [
                f"{_ratio(r)} {peer}"
                + _by_round(paired.get((mine, peer)), not adjacent(c, named[peer]))
                for mine, peer, r in pairs
                if mine == c.name
            ]
            if vs:
                row += "   " + ", ".join(vs)
            if _link(c):
                row += f"   over the link: {_link(c)}"
            lines.append(row)
    lines.append(
        "\n(median of the runs, [min .. max]; xR = lazyfs median / peer median, >1 slower;"
        "\n by round: the median of each round's lazyfs / peer; in every round the two ran"
        "\n one right after the other, in turns (ABBA), unless marked 'apart': then other"
        "\n rows ran between them. results.json has each run's start and place in its round)"
    )
    return "\n".join(lines)


def chart(out: Path, results: list[Result], title: str) -> Path:
    """Horizontal bars of the medians, one panel per measurement and image."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file only
    import matplotlib.pyplot as plt

    shown = [r for r in results if any(c.samples for c in r.contenders)]
    fig, axes = plt.subplots(
        len(shown),
        1,
        figsize=(9, 1.0 + 0.45 * sum(len(r.contenders) for r in shown) + 0.6 * len(shown)),
        squeeze=False,
    )
    for ax, result in zip(axes[:, 0], shown, strict=True):
        ran = [c for c in result.contenders if c.samples]
        names = [c.name for c in ran]
        medians = [median([s.seconds for s in c.samples]) * 1000 for c in ran]
        spread = [
            [
                m - min(s.seconds for s in c.samples) * 1000
                for m, c in zip(medians, ran, strict=True)
            ],
            [
                max(s.seconds for s in c.samples) * 1000 - m
                for m, c in zip(medians, ran, strict=True)
            ],
        ]
        colors = ["tab:blue" if c.lazyfs else "tab:gray" for c in ran]
        ax.barh(names, medians, xerr=spread, color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_title(f"{result.measurement} - {result.image}", fontsize=10, loc="left")
        ax.set_xlabel("ms (median, min-max)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(meta: dict[str, Any], results: list[Result]) -> str:
    """The figures as Markdown, ready to paste into docs/benchmarks.md."""
    m = meta["machine"]
    lines = [
        f"Run {meta['started']}, lazyfs {m['lazyfs_commit']}, {meta['runs']} runs per contender.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"kernel {m['kernel']}, disk {m['disk']}; {m['tools']['umoci']}, "
        f"{m['tools']['runc']}, {m['tools']['fuse-overlayfs']}.",
        "",
        "| measurement | image | contender | median | min .. max | lazyfs / peer | over the link |",
        "| --- | --- | --- | ---: | --- | --- | --- |",
    ]
    for result in results:
        pairs = _pairs(result)
        for c in result.contenders:
            if not c.samples:
                lines.append(
                    f"| {result.measurement} | {result.image} | {c.name} | skipped | | | |"
                )
                continue
            secs = [s.seconds for s in c.samples]
            vs = ", ".join(f"{_ratio(r)} {peer}" for mine, peer, r in pairs if mine == c.name)
            lines.append(
                f"| {result.measurement} | {result.image} | {c.name} | "
                f"{_fmt(median(secs)).strip()} | {_fmt(min(secs)).strip()} .. "
                f"{_fmt(max(secs)).strip()} | {vs} | {_link(c)} |"
            )
    return "\n".join(lines) + "\n"


def timelines(results: list[Result]) -> str:
    """Each contender's median run, and its slowest when that is another, request by request
    over the shaped link (cold-start); "" when no run went through it."""
    parts = []
    for result in results:
        for c in result.contenders:
            if not c.samples:
                continue
            median_run, slowest = c.median_sample(), c.slowest_sample()
            shown = [("", median_run)]
            if slowest is not median_run:
                shown.append((" (its slowest run)", slowest))
            for note, sample in shown:
                if sample.requests:
                    title = f"{result.measurement} {result.image}: {c.name}{note}"
                    parts.append(render(title, sample.seconds, list(sample.requests)))
    if not parts:
        return ""
    head = ["Each row's median run, and its slowest: every request over the shaped link",
            "until the line was printed. Times in ms from the command's start: sent, first",
            "byte back, last byte back. Bar: `.` before it, `-` waiting, `=` its response.",
            "Every run's is in results.json (`timelines`).", ""]  # fmt: skip
    return "\n".join([*head, *parts])
