"""JSON from outside the process, parsed so that every failure is a ValueError.

What a registry, an image, a publisher, a credential helper or a user hands
us is parsed here.  ``json.loads`` already raises ValueError for text that
is not JSON, for bytes that are not UTF-8 (UnicodeDecodeError) and for an
integer of too many digits; but for arrays or objects nested a few thousand
deep (a few KiB make one) it raises RecursionError, which is not one.  A
parser that caught ValueError alone let that out as an unexpected error
with a traceback.  Through ``loads`` each parser catches ValueError and
answers with its own one-line error, as for any other JSON it cannot read.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes, **options: Any) -> Any:
    """``json.loads(data, **options)``; ValueError for anything it cannot parse."""
    try:
        return json.loads(data, **options)
    except RecursionError:
        # Not chained: the RecursionError's traceback is thousands of frames deep.
        raise ValueError("nested deeper than a parser follows") from None
