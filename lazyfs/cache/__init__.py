"""The shared cache daemon: its protocol, the chunk cache on disk, fetch planning, the server.

``cache.proto`` (generated ``cache_pb2``) is what a mount process and the
daemon say to each other, ``messages`` the same as checked typed values
(the values themselves in ``values``), and
``framing`` how they cross the socket: length-prefixed, decoded by a pure
state machine. ``layout`` is the cache directory's on-disk layout, which
mount processes read directly; ``chunks`` the daemon's side of it (atomic
chunk writes, a size limit with LRU eviction, pins, rebuilt at start:
``stock``), ``room`` the headroom it keeps free on its filesystem.
``planner`` decides which range requests a read needs (pure), ``flight`` runs
them with one fetch per missing chunk however many readers wait (each
chunk's ``landing``, as its bytes arrive: ``arrival``), ``pieces`` fetches
a small range alone where whole chunks would waste the link (a published
index's windows, the parts of chunks a replayed trace needs only in part:
``partial``), and
``daemon`` serves it all over a Unix socket in the cache directory, fetching
from ``upstream`` (the registries reads name). ``background`` fetches the
rest of mounted layers while no read waits and judges each whole blob
(the blobs of an origin that fails for now wait for it together: ``origin_wait``);
``blobstate`` keeps those verdicts in the cache directory and reads a
complete blob back for the store. ``replay`` fetches a
learned prefetch trace's ranges in order, yielding to reads. ``service`` is the daemon as
a process (``lazyfs daemon``; it and the mount server exit once their
directory is gone: ``pinned_dir``), ``spawn`` finds it or starts it for a mount
that needs it, and ``client`` is a mount's BlobSource over it: cached chunks
read from the files, misses asked for (``connection``: one socket to the
daemon; ``client_blob``: where each blob comes from). ``remote`` holds the
light values a mount is given for its layers still in a registry.
``forget`` lets go of the cached chunks of layers removed from the store
(``images rm``, ``prune``, image GC): through the daemon (``forget_serve``,
its request and answer in ``forget_values``), whose cache refuses them until
they are wanted again (``release``), or from the directory when none runs.
``chunk_write`` writes a chunk's file before it is put in place.

Imports: providers.
"""
