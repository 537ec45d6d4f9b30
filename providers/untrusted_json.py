"""JSON from outside the process, parsed so that every failure is a ValueError.

What a registry, an image, a publisher, a credential helper or a user hands
us is parsed here.  ``json.loads`` already raises ValueError for text that
is not JSON, for bytes that are not UTF-8 (UnicodeDecodeError) and for an
integer of too many digits; but for arrays or objects nested a few thousand
deep (a few KiB make one) it raises RecursionError, which is not one.  A
parser that caught ValueError alone let that out as an unexpected error
with a traceback.  Through ``loads`` each parser catches ValueError and
answers with its own one-line error, as for any other JSON it cannot read.

Each array parsed costs some 60 bytes of memory however short its text, and
each object with a key some 180: ``[]`` is two bytes, ``{"":0}`` six, so
text of nothing but them takes 30 to 45 times its size to parse, where
real documents take about 12.  A caller parsing a document that may be
large (a published index's rows, tens of MiB) bounds that with
``per_container``: text holding more than one array (``[``) in that many
bytes, an object (``{``) counting as three, is refused before it is
parsed.  Brackets inside strings are counted too, which errs towards
refusing.

``size`` reads a count (a descriptor's size, a length) out of a parsed
document, also with ValueError as its one failure.
"""

from __future__ import annotations

import json
from typing import Any

# The OCI image spec gives sizes as int64.
SIZE_LIMIT = (1 << 63) - 1


def loads(data: str | bytes, *, per_container: int | None = None, **options: Any) -> Any:
    """``json.loads(data, **options)``; ValueError for anything it cannot parse, or
    (``per_container``) that holds more than one array or object in that many bytes."""
    if per_container is not None:
        _dense(data, per_container)
    try:
        return json.loads(data, **options)
    except RecursionError:
        # Not chained: the RecursionError's traceback is thousands of frames deep.
        raise ValueError("nested deeper than a parser follows") from None


def _dense(data: str | bytes, per_container: int) -> None:
    """ValueError when ``data`` holds more than one ``[`` (a ``{`` counts three) in
    ``per_container`` bytes (characters), plus a few: a document whose parse would cost
    more than its size tells of. Linear, and fast: two counts."""
    if isinstance(data, str):
        containers = data.count("[") + 3 * data.count("{")
    else:
        containers = data.count(b"[") + 3 * data.count(b"{")
    if containers > len(data) // per_container + 16:
        raise ValueError(
            f"{containers} arrays (an object counting three) in {len(data)} bytes:"
            f" more than one in {per_container}"
        )


def size(value: object) -> int:
    """``value``, a parsed JSON value, as a size: an integer from 0 to ``SIZE_LIMIT``;
    ValueError (showing it) for anything else.

    Not ``int(value)``: that takes what a document must not hold for an integer (a
    string "123", a fraction 1.5 cut to 1, true as 1), and raises OverflowError, no
    ValueError, for the infinity that json reads ``1e999`` and ``Infinity`` as.
    """
    # type(), not isinstance(): bool is an int to Python, never to JSON.
    if type(value) is not int or not 0 <= value <= SIZE_LIMIT:
        shown = "an array or object" if isinstance(value, list | dict) else json.dumps(value)
        raise ValueError(f"{shown[:40]} is not an integer from 0 to 2^63-1")
    return value
