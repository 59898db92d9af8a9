"""The tree every door shares, without any door: names, rules, holds."""

import errno
import inspect

import pytest

from streamfs_fuse.core.access import NOBODY, Identity
from streamfs_fuse.core.tree import NAME_MAX, Directory, Tree, StreamFile
from streamfs_fuse.settings import StreamSettings


@pytest.fixture
def ns():
    return Tree(StreamSettings(), uid=1000, gid=1000)


async def refused(code, call, *args, **kwargs):
    with pytest.raises(OSError) as raised:
        result = call(*args, **kwargs)
        if inspect.isawaitable(result):
            await result
    assert raised.value.errno == code


async def test_create_find_and_name_streams_and_directories(ns):
    cams = await ns.create(Directory, ns.root, b"cams", 0o755, 1000, 1000)
    front = await ns.create(StreamFile, cams, b"front", 0o644, 1001, 1001)
    assert ns.child(ns.root, b"cams") is cams and ns.child(cams, b"front") is front
    assert ns.child(cams, b"..") is ns.root and ns.child(cams, b".") is cams
    assert front.stream.name == ns.path(front) == "/cams/front"
    assert (front.uid, front.mode & 0o777) == (1001, 0o644) and ns.root.subdirs == 1
    await refused(errno.EEXIST, ns.create, StreamFile, cams, b"front", 0o644, 0, 0)
    await refused(errno.ENOENT, ns.child, cams, b"back")
    for bad, code in [(b"", errno.EINVAL), (b"..", errno.EINVAL), (b"a/b", errno.EINVAL),
                      (b"a\0b", errno.EINVAL), (b"x" * (NAME_MAX + 1), errno.ENAMETOOLONG)]:
        await refused(code, ns.create, StreamFile, cams, bad, 0o644, 0, 0)


async def test_unlink_and_rmdir_rules(ns):
    d = await ns.create(Directory, ns.root, b"d", 0o755, 0, 0)
    s = await ns.create(StreamFile, d, b"s", 0o644, 0, 0)
    await refused(errno.EISDIR, ns.unlink, ns.root, b"d")
    await refused(errno.ENOTEMPTY, ns.rmdir, ns.root, b"d")
    await refused(errno.ENOTDIR, ns.rmdir, d, b"s")
    await ns.unlink(d, b"s")
    assert s.stream.closed and not s.linked and s.inode not in ns.nodes
    await ns.rmdir(ns.root, b"d")
    assert ns.root.subdirs == 0 and ns.root.entries == {}


async def test_rename_rules(ns):
    a = await ns.create(Directory, ns.root, b"a", 0o755, 0, 0)
    b = await ns.create(Directory, a, b"b", 0o755, 0, 0)
    s = await ns.create(StreamFile, b, b"s", 0o644, 0, 0)
    t = await ns.create(StreamFile, ns.root, b"t", 0o644, 0, 0)
    await refused(errno.EINVAL, ns.rename, ns.root, b"a", b, b"inside")  # into itself
    await refused(errno.EEXIST, ns.rename, b, b"s", ns.root, b"t", replace=False)
    await refused(errno.EISDIR, ns.rename, b, b"s", ns.root, b"a")
    await refused(errno.ENOTDIR, ns.rename, a, b"b", ns.root, b"t")
    await ns.rename(b, b"s", ns.root, b"t")  # replaces t, which ends as with rm
    assert t.stream.closed and ns.child(ns.root, b"t") is s and s.stream.name == "/t"
    await ns.rename(ns.root, b"a", ns.root, b"z")
    assert ns.path(b) == "/z/b"


async def test_renaming_a_deep_tree_needs_no_recursion(ns):
    node = top = await ns.create(Directory, ns.root, b"top", 0o755, 0, 0)
    for _ in range(5000):
        node = await ns.create(Directory, node, b"d", 0o755, 0, 0)
    leaf = await ns.create(StreamFile, node, b"s", 0o644, 0, 0)
    await ns.rename(ns.root, b"top", ns.root, b"moved")
    assert ns.path(top) == "/moved" and leaf.stream.name.startswith("/moved/d/d/")


async def test_a_held_node_outlives_its_name(ns):
    s = await ns.create(StreamFile, ns.root, b"s", 0o644, 0, 0)
    ns.hold(s, 2)
    await ns.unlink(ns.root, b"s")
    assert ns.node(s.inode) is s
    ns.release(s)
    assert ns.node(s.inode) is s
    ns.release(s)
    await refused(errno.ENOENT, ns.node, s.inode)
    # Inode numbers are never reused.
    assert (await ns.create(StreamFile, ns.root, b"s", 0o644, 0, 0)).inode > s.inode


async def test_remove_tree_removes_everything_under_a_name_without_recursion(ns):
    node = top = await ns.create(Directory, ns.root, b"top", 0o755, 0, 0)
    streams = []
    for _ in range(3000):
        streams.append(await ns.create(StreamFile, node, b"s", 0o644, 0, 0))
        node = await ns.create(Directory, node, b"d", 0o755, 0, 0)
    await ns.remove_tree(ns.root, b"top")
    assert ns.root.entries == {} and not top.linked
    assert all(s.stream.closed for s in streams) and len(ns.nodes) == 1


async def test_resolve_walks_a_path_as_a_file_system_does(ns):
    cams = await ns.create(Directory, ns.root, b"cams", 0o700, 1000, 1000)
    front = await ns.create(StreamFile, cams, b"front", 0o644, 1000, 1000)
    assert ns.resolve([]) is ns.root and ns.resolve([b"cams", b"front"]) is front
    assert ns.resolve([b"cams", b"..", b"cams", b".", b"front"]) is front
    await refused(errno.ENOENT, ns.resolve, [b"cams", b"back"])
    await refused(errno.ENOTDIR, ns.resolve, [b"cams", b"front", b"x"])
    # Searching cams is its owner's alone; without an identity nothing is checked.
    assert ns.resolve([b"cams", b"front"], Identity(1000, frozenset())) is front
    await refused(errno.EACCES, ns.resolve, [b"cams", b"front"], NOBODY)
    assert ns.resolve([b"cams"], NOBODY) is cams  # the last name needs no search
