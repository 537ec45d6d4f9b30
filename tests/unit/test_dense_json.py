"""JSON denser in arrays than any real document, from a registry or a publisher.

Each array or object costs some 60 bytes to parse however short its text,
so a published index head of nested or empty arrays took 30 to 45 times its
size: a head of a few hundred KB inflated to 128 MiB of rows cost some 7 GB
to refuse, and one with a 64 MiB header line some 9 GB more. Such text is
now refused before it is parsed, by counting its brackets
(``untrusted_json.loads(per_container=)``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from lazyfs.index import artifact, model, trace
from providers import referrers, untrusted_json
from providers.errors import BadImage
from tests.support.lazyfs_cli import REPO

ROWS = 1000
REAL_ROW = [
    "usr/lib/x86_64-linux-gnu/libz.so.1", "file", 0o644, 0, 0, 12345, 1700000000000000000,
    "", [0, 0], [["user.a", "YQ=="]], 4096, [[0, 4096, 0], [8192, 4096, 4096]],
]  # fmt: skip


def header(entries: int) -> str:
    return json.dumps(
        {"version": model.FORMAT_VERSION, "digest": "sha256:" + "ab" * 32, "compression": "gzip",
         "tar_size": 1 << 30, "checkpoints_size": 0, "entries": entries}
    )  # fmt: skip


@pytest.mark.parametrize(
    "rows",
    [
        "[" + ",".join(["[]"] * ROWS) + "]",
        "[" + "[" * ROWS + "]" * ROWS + "]",
        "[" + ",".join(["[[[[]]]]"] * ROWS) + "]",
        "[" + ",".join(['{"":0}'] * ROWS) + "]",
    ],
    ids=["empty", "nested", "nested rows", "objects"],
)
def test_rows_from_elsewhere_denser_than_real_ones_are_refused_unparsed(rows: str) -> None:
    with pytest.raises(ValueError, match="more than one in 6"):
        model.loads(header(ROWS) + "\n" + rows, max_entries=10 * ROWS)


def test_real_rows_and_the_stores_own_index_are_read() -> None:
    # Guards: the bound sits well below real rows; the store's own index is not held to it.
    rows = json.dumps([REAL_ROW] * ROWS, separators=(",", ":"))
    assert len(model.loads(header(ROWS) + "\n" + rows, max_entries=ROWS).entries) == ROWS
    with pytest.raises(ValueError, match="expected 12"):  # parsed, then found not rows
        model.loads(header(ROWS) + "\n[" + ",".join(["[]"] * ROWS) + "]")


def test_a_dense_head_header_trace_or_referrers_list_is_refused_unparsed() -> None:
    dense = b'{"lazyfs_index":2,"x":[' + b",".join([b"[]"] * 10_000) + b"]}\n"
    with pytest.raises(BadImage, match="more than one in 16"):
        artifact.decode(dense)
    reads = b'{"lazyfs_trace":1,"reads":[' + b",".join([b"[]"] * 10_000) + b"]}"
    with pytest.raises(trace.TraceError, match="more than one in 6"):
        trace.decode(reads)
    listed = b'{"schemaVersion":2,"manifests":[],"x":[' + b",".join([b"[[]]"] * 10_000) + b"]}"
    with pytest.raises(BadImage, match="more than one in 16"):
        referrers.referrer_entries(listed)
    with pytest.raises(
        ValueError, match=r"20002 arrays \(an object counting three\) in 50004 bytes"
    ):
        untrusted_json.loads(b"[" + b"[[]]," * 10_000 + b"[]]", per_container=16)


# In a process whose address space is capped at what it holds plus 256 MiB: a head whose
# index is 16 MiB of nested arrays (25 KB of zlib) must be refused within that.
CAPPED = textwrap.dedent("""
    import json, resource, zlib
    from lazyfs.index import artifact, model
    size = 1 << 20
    rows = ("[" * 900 + "]" * 900 + ",") * ((16 << 20) // 1801)
    text = json.dumps({"version": model.FORMAT_VERSION, "digest": "sha256:" + "ab" * 32,
                       "compression": "none", "tar_size": size, "checkpoints_size": 0,
                       "entries": 1}) + "\\n[" + rows + "[]]\\n"
    index = zlib.compress(text.encode(), 1)
    head = {"lazyfs_index": 2, "layer": "sha256:" + "ab" * 32, "layer_size": size,
            "compression": "none", "tar_size": size, "index_bytes": len(index),
            "spans": [[0, size, "00" * 32]], "points": [], "windows": None}
    data = json.dumps(head).encode() + b"\\n" + index
    del rows, text
    with open("/proc/self/status") as status:
        held = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    cap = (held << 10) + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        artifact.decode(data, layer="sha256:" + "ab" * 32, size=size)
    except artifact.BadImage as error:
        print(error)
    except MemoryError:
        print("MemoryError")
""")


def test_a_nested_index_bomb_is_refused_within_a_small_address_space() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CAPPED], capture_output=True, text=True, timeout=120, cwd=REPO,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "more than one in 6" in result.stdout, result.stdout
