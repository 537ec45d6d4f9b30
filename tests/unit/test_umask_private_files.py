"""Files and directories lazyfs makes by path come out private under ``umask 000``.

The umask is the process's, shared by its threads: each case runs in a
child Python started under ``umask 000``, never by changing this one's.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from tests.support.lazyfs_cli import REPO

SCRIPT = """
import sys
from pathlib import Path
from lazyfs.provision.runtime import write_bundle
from providers.private_dir import private_file

top = Path(sys.argv[1])
write_bundle(top / "containers" / "c1" / "bundle", {"ociVersion": "1.0.2"})
with private_file(top / "scratch-file") as out:
    out.write(b"x")
"""


def _modes(top: Path) -> dict[str, int]:
    return {
        str(path.relative_to(top)): stat.S_IMODE(path.lstat().st_mode)
        for path in sorted(top.rglob("*"))
    }


def test_bundle_and_private_files_ignore_a_umask_of_000(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir(mode=0o700)
    subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-c", SCRIPT, str(top)],
        check=True,
        cwd=REPO,
        timeout=60,
    )
    assert _modes(top) == {
        "containers": 0o700,
        "containers/c1": 0o700,
        "containers/c1/bundle": 0o700,
        "containers/c1/bundle/config.json": 0o600,
        "scratch-file": 0o600,
    }
