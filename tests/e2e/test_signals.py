"""Ctrl-C while lazyfs starts up is one line, as later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.integration

# Runs ``python -m lazyfs`` after planting an import hook that sends this
# process SIGINT when trio, which the CLI loads first of its heavy modules,
# is about to be imported: a Ctrl-C while lazyfs starts up, on cue.
CTRL_C_AT_IMPORT = """
import os, runpy, signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "trio":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_lazyfs_starts_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_IMPORT, "--work_dir", str(tmp_path), "images"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "lazyfs: interrupted\n")
