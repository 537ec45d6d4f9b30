"""Layer bytes by range: reading a layer's data through its index, and the chunk cache.

Imports: lazyfs.index, providers.
"""
