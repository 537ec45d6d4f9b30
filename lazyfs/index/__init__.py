"""Layer indexes: what a layer holds and where its bytes are, with no view of a tree.

The model (``model``: entries, kinds, the index text; no I/O), one
``LayerFormat`` per kind of layer blob (``formats``: plain tar, gzip, zstd,
eStargz; how each is indexed and read at random), the steps of the one
streaming scan that builds an index (``build``), gzip checkpoints for random
access into a gzip blob (``gzip_checkpoints``), the eStargz footer and TOC
parsers (``estargz``), the chunk table that maps an eStargz index's data
space onto its blob (``estargz_chunks``), an eStargz index built from its
footer and TOC read by range through a ``BlobSource`` (``estargz_index``),
and the indexes kept in the store (``stored``: read back, checked, built
once per layer, from a local blob or an eStargz layer's TOC), which sits
above the others so nothing below it imports it; and the index artifact,
one layer's index as a blob published beside its image in a registry
(``artifact``: its format, with the span digests that check its blob);
and a learned prefetch trace's format (``trace``).

Imports: lazyfs.store.atomic, providers.
"""
