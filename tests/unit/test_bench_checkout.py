"""The bench's lazyfs processes import the checkout it runs from, not the .venv's install."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _checkout_module() -> ModuleType:
    path = REPO / "scripts" / "benchlib" / "checkout.py"
    spec = importlib.util.spec_from_file_location("bench_checkout", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkout_first_then_the_rest_once() -> None:
    python_path = _checkout_module().python_path
    sep = os.pathsep
    assert python_path("/wt/a", None) == "/wt/a"
    assert python_path("/wt/a", "") == "/wt/a"
    assert python_path("/wt/a", f"/x{sep}/wt/a{sep}{sep}/y") == f"/wt/a{sep}/x{sep}/y"


def test_the_bench_exports_its_checkout_before_it_runs_anything() -> None:
    # --help is answered after the re-exec under the .venv: by then the
    # environment the bench's children get must name this checkout first.
    probe = (
        "import os, runpy, sys\n"
        "sys.argv = [sys.argv[1], '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('PYTHONPATH=' + os.environ['PYTHONPATH'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = "/elsewhere"
    done = subprocess.run(
        [sys.executable, "-c", probe, str(REPO / "scripts" / "bench")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PYTHONPATH=")]
    assert lines == [f"PYTHONPATH={REPO}{os.pathsep}/elsewhere"], done.stderr
