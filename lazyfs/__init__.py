"""lazyfs: container images as root filesystems, built by a backend or served by FUSE.

One subpackage per concept, each saying in its docstring what it may import:

- ``index``: layer indexes (the model, the scan that builds one, gzip checkpoints);
- ``tree``: the merged tree of an image and the trees kept in the store;
- ``blobs``: layer bytes by range and the chunk cache;
- ``fs``: the FUSE operations, the writable upper, the mount process and the
  public mount API;
- ``store``: the on-disk layout of blobs, layers and images;
- ``images``: the Docker and Appc providers as the provisioner sees them;
- ``provision``: the provisioner, ``lazyfs mount`` and the runc runtime.

The command line sits on top, in ``cli``, ``cli_flags``, ``cli_run`` and ``entry``;
``progress`` is shared by providers and the provisioner.
"""
