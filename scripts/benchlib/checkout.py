"""The import path the bench hands to the lazyfs processes it starts.

Standard library only: ``scripts/bench`` uses it before it re-executes
itself under the .venv, with whatever Python it was started by.
"""

from __future__ import annotations

import os


def python_path(checkout: str, current: str | None) -> str:
    """``PYTHONPATH`` with ``checkout`` first and the rest of ``current`` after, once each.

    The mount server, the mount processes and the CLI the bench starts then
    import this checkout's lazyfs, not the one the .venv was installed from
    (an editable install of another checkout). Else a bench run from a
    worktree times another checkout's mount processes, and the mount server,
    seeing other code than its callers' (``code_key``), exits at every mount,
    so that each mount is exec'd afresh.
    """
    rest = [part for part in (current or "").split(os.pathsep) if part and part != checkout]
    return os.pathsep.join([checkout, *rest])
