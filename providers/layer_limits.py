"""How far a layer may unpack: ``LayerLimits``, the value every reader of a layer is given,
and the bounds on one entry (``MAX_ENTRY_SIZE``, ``MAX_XATTR_VALUE_BYTES``).

Apart from ``providers.tar_stream`` (which re-exports them), so that whoever
only passes limits on (the CLI, the provisioner, the fuse backend, the mount
API) or reads a layer from its eStargz TOC loads no tar, gzip, lzma or zstd code.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.errors import BadImage

GiB = 1 << 30
# Real layers unpack to a few GiB, the biggest (CUDA toolkits, model weights
# baked in) to tens of GiB: 256 GiB is far past them and still bounds a
# bomb by what a disk holds.
DEFAULT_MAX_LAYER_SIZE = 256 * GiB
# Real layers compress 2-5 times, text-heavy ones up to 10-20: 100 leaves
# them room, while gzip of zeros reaches 1000.  What passes it is a file of
# zeros (lastlog or faillog after useradd of a large uid without -l, a
# preallocated file); such an image needs --max_layer_ratio raised.
DEFAULT_MAX_LAYER_RATIO = 100
# Tiny layers look far more compressed than they are (an empty GNU tar is
# 10 KiB of zeros in 45 gzip bytes); unpacking 64 MiB harms no one.
RATIO_FLOOR = 64 << 20
# Bytes per entry (apparent: a sparse file's holes count) and per xattr value
# (the kernel's XATTR_SIZE_MAX), whoever reads the layer: a tar or a TOC.
MAX_ENTRY_SIZE = 1 << 40
MAX_XATTR_VALUE_BYTES = 1 << 16


@dataclass(frozen=True)
class LayerLimits:
    """How many bytes a layer's uncompressed tar stream may have.

    At most ``max_size``, and at most ``max_ratio`` times the size of the
    compressed blob (but ``RATIO_FLOOR`` whatever the blob).  Counted are the
    bytes of the tar stream, which are what an extraction writes at most:
    the holes of sparse entries are not in it and are never written (each
    entry's apparent size is bounded by ``MAX_ENTRY_SIZE`` instead).
    """

    max_size: int = DEFAULT_MAX_LAYER_SIZE
    max_ratio: int = DEFAULT_MAX_LAYER_RATIO

    def bound(self, compressed_size: int | None) -> tuple[int, str]:
        """The most a layer of ``compressed_size`` (None: unknown) may unpack to, and why."""
        if compressed_size is not None:
            by_ratio = max(RATIO_FLOOR, self.max_ratio * compressed_size)
            if by_ratio < self.max_size:
                return by_ratio, (
                    f"the most for its {compressed_size} compressed bytes"
                    f" at --max_layer_ratio {self.max_ratio}"
                )
        return self.max_size, "the most any layer may have, see --max_layer_size"

    def check(self, layer: str, size: int, compressed_size: int | None) -> None:
        """BadImage if ``size`` bytes are more than a layer of ``compressed_size`` may have."""
        most, why = self.bound(compressed_size)
        if size > most:
            raise BadImage(f"bad layer {layer}: unpacks to more than {most} bytes, {why}")
