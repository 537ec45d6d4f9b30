"""``lazyfs recover``: keep the named containers, clean up the rest, print what it did.

The ids to keep come from the agent, which names every container it knows;
one the work dir holds nothing of (a mistyped id, or a container whose
provision never got as far as its record) is not refused, since the rest
must still be cleaned up, but it is named on stderr: a keep that keeps
nothing should not pass unseen.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lazyfs.cli_run import run_trio

if TYPE_CHECKING:
    from lazyfs.provision.provisioner import Provisioner
    from lazyfs.provision.records import RecoverReport


def run_recover(provisioner: Provisioner, args: argparse.Namespace) -> int:
    """Recover, keeping ``args.keep``; status 1 when a container failed or is broken."""
    report = run_trio(lambda: provisioner.recover(args.keep))
    print(
        json.dumps(
            {
                "kept": list(report.kept),
                "destroyed": list(report.destroyed),
                "busy": list(report.busy),
                "failed": dict(report.failed),
                "remounted": list(report.remounted),
                "broken": dict(report.broken),
            }
        )
    )
    unknown = unknown_kept(args.keep, report)
    if unknown:
        names = ", ".join(unknown)
        print(f"lazyfs: warning: --keep names no container here: {names}", file=sys.stderr)
    for cid, why in report.failed:
        print(f"lazyfs: container {cid} could not be destroyed: {why}", file=sys.stderr)
    for cid, why in report.broken:
        print(f"lazyfs: container {cid} is broken: {why}", file=sys.stderr)
    return 1 if report.failed or report.broken else 0


def unknown_kept(keep: Sequence[str], report: RecoverReport) -> list[str]:
    """The ids in ``keep`` that ``report`` does not mention, in the order given, once each.

    Every container the work dir holds is in the report, kept or not (one named
    to keep whose destroy had begun is destroyed), so an id it lacks named none.
    """
    seen = {*report.kept, *report.destroyed, *report.busy, *report.remounted}
    seen.update(cid for cid, _why in (*report.failed, *report.broken))
    return [cid for cid in dict.fromkeys(keep) if cid not in seen]
