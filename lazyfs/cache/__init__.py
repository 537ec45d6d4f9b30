"""The shared cache daemon: its protocol, the chunk cache on disk, fetch planning, the server.

``cache.proto`` (generated ``cache_pb2``) is what a mount process and the
daemon say to each other, ``messages`` the same as checked typed values, and
``framing`` how they cross the socket: length-prefixed, decoded by a pure
state machine. ``layout`` is the cache directory's on-disk layout, which
mount processes read directly; ``chunks`` the daemon's side of it (atomic
chunk writes, a size limit with LRU eviction, pins, rebuilt at start).
``planner`` decides which range requests a read needs (pure), ``flight`` runs
them with one fetch per missing chunk however many readers wait, and
``daemon`` serves it all over a Unix socket in the cache directory.

Not wired into mounts or the CLI yet.

Imports: providers.
"""
