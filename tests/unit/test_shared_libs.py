"""glibc's own libraries are found by soname without ``ldconfig -p``; anything else as before."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from providers import shared_libs

ROOT = Path(__file__).resolve().parents[2]


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a subprocess was started: {args}")


def test_glibc_names_match_what_ldconfig_says(monkeypatch: pytest.MonkeyPatch) -> None:
    assert shared_libs.is_glibc(), "this test runs on glibc"
    for name in ("c", "pthread", "m", "dl", "rt"):
        expected = shared_libs._standard(name)
        monkeypatch.setattr(subprocess, "Popen", _no_subprocess)
        assert shared_libs.find_library(name) == expected
        monkeypatch.undo()


def test_other_names_and_other_libcs_ask_the_standard_way(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def standard(name: str) -> str | None:
        asked.append(name)
        return f"standard-{name}"

    monkeypatch.setattr(shared_libs, "_standard", standard)
    assert shared_libs.find_library("z") == "standard-z"
    # A soname the dynamic linker does not load is not answered from the table.
    monkeypatch.setitem(shared_libs.GLIBC_SONAMES, "nosuch", "libnosuch-lazyfs.so.9")
    assert shared_libs.find_library("nosuch") == "standard-nosuch"

    def not_glibc(name: str) -> str:
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(os, "confstr", not_glibc)
    assert not shared_libs.is_glibc()
    assert shared_libs.find_library("pthread") == "standard-pthread"
    assert asked == ["z", "nosuch", "pthread"]


def test_installed_trio_imports_without_a_subprocess_and_still_names_threads() -> None:
    code = (
        "import subprocess, ctypes.util\n"
        "from providers.shared_libs import install, find_library\n"
        "install()\n"
        "assert ctypes.util.find_library is find_library\n"
        "def refuse(*a, **k): raise SystemExit(f'a subprocess: {a}')\n"
        "subprocess.Popen = refuse\n"
        "import trio\n"
        "from trio._core import _thread_cache\n"
        "assert _thread_cache.set_os_thread_name is not None, 'trio names no threads'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_install_is_idempotent() -> None:
    original = ctypes.util.find_library
    try:
        shared_libs.install()
        shared_libs.install()
        assert ctypes.util.find_library is shared_libs.find_library
    finally:
        ctypes.util.find_library = original
