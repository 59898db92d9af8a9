"""Streams and a tree shared by the mounts of several hosts, ordered by Redis."""

from .store import BackendError, RedisStore, probe_backend

__all__ = ["BackendError", "RedisStore", "probe_backend"]
