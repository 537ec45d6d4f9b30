"""A staged file discarded on a full disk goes, and the error that ended its block stays.

Closing it flushes what the file object still buffers; on a full disk that
fails as the write did, and the file was left in the store's ``tmp`` and
the block's own error replaced. A process whose files may not grow past
4 KiB (``RLIMIT_FSIZE``, SIGXFSZ ignored: EFBIG) stands in for the disk.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.lazyfs_cli import REPO

DISCARD = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from lazyfs.store.atomic import staged_file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        with staged_file(Path(sys.argv[1]), mode=0o600) as staged:
            staged.file.write(b"x" * 6000)  # buffered: reaches the file only as it closes
            raise ValueError("the block's own error")
    except ValueError as error:
        print(error)
""")


def test_a_discarded_staged_file_goes_when_its_flush_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DISCARD, str(tmp_path)], capture_output=True, text=True,
        timeout=60, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "the block's own error\n"), result.stderr
    assert list(tmp_path.iterdir()) == []
