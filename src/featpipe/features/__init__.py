"""Features: a frozen backbone embeds every image once into an HDF5 cache (local or Ray engine), read back by
the heads; caches of several backbones fuse into one."""
