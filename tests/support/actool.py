"""actool, built once from Debian's appc spec sources with Debian's Go, offline.

The binary is cached under ``/var/cache/lazyfs-test/actool/<source hash>/``
(keyed by the sources, so an upgraded package builds again) and written
atomically, so parallel test runs share one build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GOCODE = Path("/usr/share/gocode")
SOURCE = GOCODE / "src" / "github.com" / "appc" / "spec"
CACHE = Path(os.environ.get("LAZYFS_TEST_CACHE", "/var/cache/lazyfs-test")) / "actool"


def missing_reason() -> str | None:
    """Why actool cannot be built here, or None."""
    if shutil.which("go") is None:
        return "needs Go (Debian package golang-go)"
    if not (SOURCE / "actool").is_dir():
        return "needs the appc spec sources (Debian package golang-github-appc-spec-dev)"
    return None


def _source_key() -> str:
    hasher = hashlib.sha256()
    for path in sorted(SOURCE.rglob("*.go")):
        hasher.update(str(path.relative_to(SOURCE)).encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()[:16]


def build_actool() -> Path:
    """The path of a built actool, building it if the cache lacks it."""
    binary = CACHE / _source_key() / "actool"
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as scratch:
        env = {
            **os.environ,
            # GOPATH mode against the packaged sources: no network, no modules.
            "GO111MODULE": "off",
            "GOPATH": f"{scratch}/gopath:{GOCODE}",
            "GOCACHE": f"{scratch}/gocache",
            "GOFLAGS": "",
            "GOPROXY": "off",
        }
        out = Path(scratch) / "actool"
        subprocess.run(
            ["go", "build", "-o", str(out), "github.com/appc/spec/actool"],
            check=True,
            env=env,
            capture_output=True,
        )
        os.rename(out, binary)
    return binary
