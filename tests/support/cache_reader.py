"""A mount's reads through the cache daemon, in a process of its own.

``python -m tests.support.cache_reader CACHE_DIR DIGEST HOST REPOSITORY SIZE
OFFSET:LENGTH...`` reads each range of the blob through a
``lazyfs.cache.client.CacheClient`` and prints one JSON line per range:
``{"ok": true, "length": N, "sha256": HEX}`` or ``{"ok": false, "error":
TEXT}``. ``--wait`` is how long a miss waits for a daemon that is gone.
Its log (the client's warnings) goes to stderr.

``read_ranges`` runs it and returns what it printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from lazyfs.cache.client import CacheClient, RemoteBlob
from lazyfs.cache.messages import RegistryOrigin
from providers.digest import Digest
from providers.errors import LazyfsError

ROOT = Path(__file__).resolve().parents[2]


def argv(
    cache_dir: Path,
    digest: str,
    host: str,
    repository: str,
    size: int,
    ranges: list[tuple[int, int]],
    *,
    wait: float = 30.0,
) -> list[str]:
    spans = [f"{offset}:{length}" for offset, length in ranges]
    return [sys.executable, "-m", "tests.support.cache_reader", "--wait", str(wait),
            str(cache_dir), digest, host, repository, str(size), *spans]  # fmt: skip


def read_ranges(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Run a reader (arguments as ``argv``) to its end; its answers, one per range."""
    done = subprocess.run(
        argv(*args, **kwargs), cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def expected(data: bytes, offset: int, length: int) -> dict[str, Any]:
    piece = data[offset : offset + length]
    return {"ok": True, "length": len(piece), "sha256": hashlib.sha256(piece).hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("digest")
    parser.add_argument("host")
    parser.add_argument("repository")
    parser.add_argument("size", type=int)
    parser.add_argument("ranges", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    blob = RemoteBlob(RegistryOrigin(args.host, args.repository), args.size)
    client = CacheClient(args.cache_dir, {Digest(args.digest): blob}, wait=args.wait)
    for span in args.ranges:
        offset, length = (int(part) for part in span.split(":"))
        try:
            data = client.read_range(Digest(args.digest), offset, length)
        except LazyfsError as error:
            answer: dict[str, Any] = {"ok": False, "error": str(error)}
        else:
            answer = {"ok": True, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        print(json.dumps(answer), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
