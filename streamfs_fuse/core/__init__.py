"""The core: every rule of the file system, for whichever door asks.

The tree (names, owners, modes, and who may do what), streams, readers,
rings, the memory cap and every wait. It imports no FUSE, HTTP or Redis
library and nothing of the package above it, only :mod:`streamfs_fuse.settings`;
its tests run with pytest-trio alone. A store is reached through the two
Protocols of the seam, :class:`~.tree.TreeStore` and :class:`~.stream.StreamLog`;
:mod:`.memory` is the default one.
"""
