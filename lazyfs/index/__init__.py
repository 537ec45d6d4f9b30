"""Layer indexes: what a layer holds and where its bytes are, with no view of a tree.

The model (``model``: entries, kinds, the index text; no I/O), one
``LayerFormat`` per kind of layer blob (``formats``: plain tar, gzip, zstd;
how each is indexed and read at random), the steps of the one streaming
scan that builds an index (``build``), gzip checkpoints for random access
into a gzip blob (``gzip_checkpoints``), the eStargz footer and TOC parsers
(``estargz``, not a ``LayerFormat`` yet: it will be one more in
``formats``), and the indexes kept in the store (``stored``: read back,
checked, built once per layer), which sits above the others so nothing
below it imports it.

Imports: lazyfs.store.atomic, providers.
"""
