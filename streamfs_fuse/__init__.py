"""streamfs-fuse: a FUSE file system in which every file is a live byte stream."""
