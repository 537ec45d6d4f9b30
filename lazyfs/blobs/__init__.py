"""Layer bytes by range: reading a layer's data through its index, and the chunk cache.

``trace_run`` is a mount's side of learned prefetch: it records the ranges
a mount reads, or replays a trace of them through the cache daemon.

Imports: lazyfs.index, providers.
"""
