"""The FUSE door: kernel requests onto the core, the core's errors onto errno.

It holds no stream policy and no tree rule of its own.
"""
