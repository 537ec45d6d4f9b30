"""eStargz forms of the benchmark's images, made by the real tool, pushed to a registry.

``push_estargz`` imports an image into a private ``containerd`` (the tests'
own, ``tests.support.containerd``: its own root, state and socket under the
run's scratch directory; no CRI, no snapshotter that needs a special
filesystem; stopped at the end), converts it with ``ctr-remote image
optimize --no-optimize --oci`` (what Debian's stargz-snapshotter ships;
``--no-optimize`` runs nothing, so no prefetch profile is recorded and every
layer gets the no-prefetch landmark) and pushes the result to a loopback
registry.
"""

from __future__ import annotations

from pathlib import Path

from benchlib.util import ToolError, run, scratch_dir
from tests.support.containerd import import_archive, push, run_containerd, to_estargz

TOOLS = ("containerd", "ctr", "ctr-remote")


def push_estargz(layout: Path, tag: str, scratch: Path, dest: str) -> None:
    """Convert the OCI image ``layout:tag`` to eStargz and push it as ``dest`` (plain HTTP)."""
    with scratch_dir(scratch, "estargz-") as work:
        source, converted = f"localhost/bench/source:{tag}", f"localhost/bench/esgz:{tag}"
        archive = work / "source.tar"  # skopeo splits its arguments on ':'
        run(["skopeo", "copy", "-q", f"oci:{layout}:{tag}", f"oci-archive:{archive}:{source}"])
        try:
            with run_containerd(work / "containerd") as containerd:
                import_archive(containerd, archive)
                to_estargz(containerd, source, converted)
                push(containerd, converted, dest)
        except RuntimeError as error:  # how tests.support says a tool failed
            raise ToolError(str(error)) from None
