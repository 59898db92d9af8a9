"""Who is asking, and the Unix rules for what they may do to a node.

The rules are Linux's (``generic_permission``, ``check_sticky``,
``setattr_prepare``), so that a door that asks the core gets the answers the
kernel gives a FUSE mount with ``default_permissions``; tests/test_permissions.py
holds both to one table. Root is uid 0, with every capability: it may read and
write anything and search any directory, but runs a file only if some x bit is set.
"""

from __future__ import annotations

import enum
import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tree import Directory, Node

__all__ = ["NOBODY", "ROOT", "Access", "Identity", "check", "check_owner", "check_set_settings",
           "check_sticky", "fail", "may", "may_set_settings", "owns"]


def fail(code: int) -> OSError:
    """The error a file system gives for ``code``; doors translate its errno."""
    return OSError(code, os.strerror(code))


@dataclass(frozen=True, slots=True)
class Identity:
    """A uid and every gid it acts with (primary and supplementary)."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def of_user(cls, uid: int) -> Identity:
        """``uid`` with its primary group and the groups /etc/group gives it.

        A uid with no passwd entry belongs to no group: only the owner and
        "other" bits apply to it, so it never gains a group's rights because
        a group happens to have its number.
        """
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, frozenset())
        return cls(uid, frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)))

    @classmethod
    def of_process(cls, pid: int, uid: int, gid: int) -> Identity:
        """The process ``pid`` acting as ``uid``/``gid``, with the groups it holds now.

        Its supplementary groups come from /proc/PID/status (which setgroups
        and setpriv may have changed since login). If the process is gone, or
        ``pid`` now names a process of another uid, they come from the user
        database instead.
        """
        try:
            with open(f"/proc/{pid}/status", "rb") as status:
                fields = dict(line.split(b":", 1) for line in status if b":" in line)
            fs_uid = int(fields[b"Uid"].split()[3])
            groups = frozenset(int(g) for g in fields[b"Groups"].split())
        except (OSError, KeyError, IndexError, ValueError):
            fs_uid, groups = None, frozenset()
        if fs_uid != uid:
            return cls(uid, Identity.of_user(uid).gids | {gid})
        return cls(uid, groups | {gid})


def _nobody() -> Identity:
    """nobody/nogroup (65534 on Debian), as this machine's databases name them."""
    try:
        entry = pwd.getpwnam("nobody")
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid, gid = 65534, 65534
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pass
    return Identity(uid, frozenset({gid}))


ROOT = Identity(0, frozenset({0}))
#: Who an anonymous request is: only the "other" bits apply to it.
NOBODY = _nobody()


class Access(enum.IntFlag):
    """The bits of a mode's class: r, w, x (search, for a directory)."""

    READ = 4
    WRITE = 2
    SEARCH = 1


def may(identity: Identity, access: Access, node: Node) -> bool:
    """Whether ``identity`` may ``access`` ``node``, by its owner, group and other bits."""
    mode = node.mode
    if identity.uid == 0:
        # Root bypasses the bits, except that it executes only what some x bit allows.
        return (not access & Access.SEARCH or stat.S_ISDIR(mode)
                or bool(mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)))
    if identity.uid == node.uid:
        granted = mode >> 6
    elif node.gid in identity.gids:
        granted = mode >> 3
    else:
        granted = mode
    return access & granted & 0o7 == access


def check(identity: Identity, access: Access, node: Node) -> None:
    """Raise EACCES unless :func:`may` allows it."""
    if not may(identity, access, node):
        raise fail(errno.EACCES)


def owns(identity: Identity, node: Node) -> bool:
    """Owner or root: who may chmod, touch to given times, or change settings."""
    return identity.uid in (0, node.uid)


def check_sticky(identity: Identity, directory: Directory, node: Node) -> None:
    """In a sticky (+t) directory only the node's owner, the directory's or root may
    remove or rename it: EPERM otherwise, as Linux answers."""
    if (directory.mode & stat.S_ISVTX and identity.uid not in (0, node.uid, directory.uid)):
        raise fail(errno.EPERM)


def may_set_settings(identity: Identity, node: Node) -> bool:
    """Whether ``identity`` may change a stream's settings (its slow-reader policy)."""
    return owns(identity, node) and may(identity, Access.WRITE, node)


def check_owner(identity: Identity, node: Node) -> None:
    """EPERM unless ``identity`` is the node's owner or root."""
    if not owns(identity, node):
        raise fail(errno.EPERM)


def check_set_settings(identity: Identity, node: Node) -> None:
    """Settings are an extended attribute through FUSE, so the rule is the kernel's
    (WRITE, else EACCES) and then the daemon's (owner or root, else EPERM)."""
    check(identity, Access.WRITE, node)
    check_owner(identity, node)
