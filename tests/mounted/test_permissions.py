"""One table of who may do what, run through every path: the core, FUSE and HTTP.

Each row names an identity, an operation, the node it acts on (owner, group,
mode) and the directory holding it (owner, group, mode, sticky bit), and
whether Linux allows it. A path is a function ``run_<path>(case, ...) -> bool``
(``run_core(case)``, ``run_fuse(case, table)``; ``outcome_<path>`` gives "ok" or
the errno's name) whose test is parametrized over :data:`CASES`, so every row
must agree between every path. The FUSE path
runs each operation as the row's identity through a real mount with
``-o allow_other``, where the kernel decides (``default_permissions``): it is
the reference the core is held to, errno included. The HTTP path sends each
request over the same mount's Unix-socket door from a process running as the
row's identity (the door takes it from SO_PEERCRED), for every operation HTTP
has a route for; a refusal must be 403.

Every row lives in a case directory of its own, ``/cNNN`` (0755, root):
``/cNNN/d`` is the row's parent directory and ``/cNNN/d/n`` its node;
``/cNNN/d/mine`` is a stream of the row's identity (for rename_over),
``/cNNN/e`` a directory anyone may write (for move_dir), ``/cNNN/d/n/inner``
a stream (for traverse).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from streamfs_fuse.testing import Mount
from streamfs_fuse.core.access import NOBODY, ROOT, Access, Identity, check, check_set_settings
from streamfs_fuse.core.tree import Directory, Tree, StreamFile
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings

#: The group the nodes of the table belong to.
TEAM = 1100
#: Ids nobody in the table has, for chown and chgrp.
STRANGER_UID, STRANGER_GID = 4242, 4343

OWNER = Identity(1001, frozenset({1001}))  # owns the nodes, is not in TEAM
MEMBER = Identity(1002, frozenset({TEAM}))  # TEAM is its primary group
SUPPLEMENTARY = Identity(1003, frozenset({1003, TEAM}))  # TEAM as a supplementary group
OTHER = NOBODY

#: The operations; the node is a stream except for those in DIRECTORY_OPERATIONS.
OPERATIONS = ("read", "append", "create", "mkdir", "unlink", "rmdir", "rename", "rename_over",
              "move_dir", "chmod", "chown", "chown_same", "chgrp_team", "chgrp_foreign",
              "utime", "touch", "policy", "list", "traverse")
DIRECTORY_OPERATIONS = {"rmdir", "move_dir", "list", "traverse"}


@dataclass(frozen=True)
class Case:
    op: str
    who: Identity
    allowed: bool
    #: uid, gid and permission bits of the node the operation acts on.
    node: tuple[int, int, int] = (OWNER.uid, TEAM, 0o640)
    #: uid, gid and permission bits (sticky included) of the directory holding it.
    parent: tuple[int, int, int] = (0, 0, 0o755)

    def __str__(self) -> str:
        return (f"{self.op}-uid{self.who.uid}-node{self.node[0]}.{self.node[2]:o}"
                f"-dir{self.parent[0]}.{self.parent[2]:o}")


DIR = (OWNER.uid, TEAM, 0o755)
OPEN = (0, 0, 0o777)
STICKY = (0, 0, 0o1777)

CASES: list[Case] = [
    # read: owner, group (primary and supplementary), other; one class only, as Linux.
    Case("read", OWNER, True),
    Case("read", MEMBER, True),
    Case("read", SUPPLEMENTARY, True),
    Case("read", OTHER, False),
    Case("read", OTHER, True, node=(OWNER.uid, TEAM, 0o644)),
    Case("read", OWNER, False, node=(OWNER.uid, TEAM, 0o044)),
    Case("read", MEMBER, False, node=(OWNER.uid, TEAM, 0o404)),
    Case("read", ROOT, True, node=(OWNER.uid, TEAM, 0o000)),
    Case("read", OWNER, False, parent=(0, 0, 0o700)),
    Case("read", MEMBER, True, parent=(0, TEAM, 0o710)),
    Case("read", OTHER, False, node=(OWNER.uid, TEAM, 0o644), parent=(0, 0, 0o754)),
    # append (open for writing, write)
    Case("append", OWNER, True),
    Case("append", OWNER, False, node=(OWNER.uid, TEAM, 0o440)),
    Case("append", MEMBER, False),
    Case("append", MEMBER, True, node=(OWNER.uid, TEAM, 0o660)),
    Case("append", SUPPLEMENTARY, True, node=(OWNER.uid, TEAM, 0o660)),
    Case("append", OTHER, True, node=(OWNER.uid, TEAM, 0o666)),
    Case("append", OTHER, False, node=(OWNER.uid, TEAM, 0o664)),
    Case("append", ROOT, True, node=(OWNER.uid, TEAM, 0o000)),
    # create a stream, make a directory: write and search on the parent
    Case("create", OWNER, False),
    Case("create", OTHER, True, parent=OPEN),
    Case("create", MEMBER, True, parent=(0, TEAM, 0o770)),
    Case("create", SUPPLEMENTARY, True, parent=(0, TEAM, 0o770)),
    Case("create", OTHER, False, parent=(0, TEAM, 0o770)),
    Case("create", OWNER, False, parent=(OWNER.uid, TEAM, 0o600)),
    Case("create", ROOT, True, parent=(0, 0, 0o000)),
    Case("mkdir", OTHER, True, parent=OPEN),
    Case("mkdir", OTHER, False),
    Case("mkdir", SUPPLEMENTARY, True, parent=(0, TEAM, 0o730)),
    Case("mkdir", ROOT, True, parent=(0, 0, 0o555)),
    # unlink: the parent's bits decide, not the stream's; sticky keeps others' streams
    Case("unlink", OTHER, True, parent=OPEN),
    Case("unlink", OTHER, False, parent=STICKY),
    Case("unlink", OWNER, True, parent=STICKY),
    Case("unlink", MEMBER, True, parent=(MEMBER.uid, 0, 0o1755)),
    Case("unlink", MEMBER, False, parent=(0, TEAM, 0o1770)),
    Case("unlink", ROOT, True, parent=STICKY),
    Case("unlink", OWNER, False),
    Case("unlink", OWNER, True, node=(OWNER.uid, TEAM, 0o000), parent=OPEN),
    # rmdir of an empty directory
    Case("rmdir", OTHER, True, node=DIR, parent=OPEN),
    Case("rmdir", OTHER, False, node=DIR, parent=STICKY),
    Case("rmdir", OWNER, True, node=DIR, parent=STICKY),
    Case("rmdir", SUPPLEMENTARY, False, node=DIR, parent=(0, TEAM, 0o1770)),
    Case("rmdir", SUPPLEMENTARY, True, node=DIR, parent=(0, TEAM, 0o770)),
    # rename within the parent; over a stream; a directory into another parent
    Case("rename", OTHER, True, parent=OPEN),
    Case("rename", OTHER, False, parent=STICKY),
    Case("rename", OWNER, True, parent=STICKY),
    Case("rename", OWNER, False),
    Case("rename", ROOT, True, parent=STICKY),
    Case("rename_over", OTHER, False, parent=STICKY),
    Case("rename_over", OWNER, True, parent=STICKY),
    Case("rename_over", MEMBER, False, parent=STICKY),
    Case("rename_over", MEMBER, True, parent=OPEN),
    Case("move_dir", OTHER, False, node=DIR, parent=OPEN),  # its ".." must change
    Case("move_dir", OTHER, True, node=(OWNER.uid, TEAM, 0o757), parent=OPEN),
    Case("move_dir", OWNER, True, node=DIR, parent=OPEN),
    Case("move_dir", OWNER, False, node=(OWNER.uid, TEAM, 0o555), parent=OPEN),
    # chmod: owner or root, whatever the bits
    Case("chmod", OWNER, True),
    Case("chmod", OWNER, True, node=(OWNER.uid, TEAM, 0o000)),
    Case("chmod", MEMBER, False, node=(OWNER.uid, TEAM, 0o660)),
    Case("chmod", OTHER, False, node=(OWNER.uid, TEAM, 0o666)),
    Case("chmod", ROOT, True),
    # chown: giving away is root's; the owner may "give" to itself
    Case("chown", OWNER, False),
    Case("chown", OTHER, False, node=(OWNER.uid, TEAM, 0o666)),
    Case("chown", ROOT, True),
    Case("chown_same", OWNER, True),
    Case("chown_same", MEMBER, False),
    Case("chown_same", ROOT, True),
    # chgrp: the owner, to a group it is in (or the node's own); root to any
    Case("chgrp_team", SUPPLEMENTARY, True, node=(SUPPLEMENTARY.uid, 1003, 0o640)),
    Case("chgrp_team", OWNER, False, node=(OWNER.uid, OWNER.uid, 0o640)),
    Case("chgrp_team", OWNER, True),  # already TEAM's
    Case("chgrp_team", MEMBER, False, node=(OWNER.uid, OWNER.uid, 0o666)),
    Case("chgrp_foreign", OWNER, False),
    Case("chgrp_foreign", ROOT, True),
    # times: given ones by owner or root; "now" by them or anyone who may write
    Case("utime", OWNER, True, node=(OWNER.uid, TEAM, 0o440)),
    Case("utime", MEMBER, False, node=(OWNER.uid, TEAM, 0o660)),
    Case("utime", OTHER, False),
    Case("utime", ROOT, True),
    Case("touch", OWNER, True, node=(OWNER.uid, TEAM, 0o440)),
    Case("touch", MEMBER, True, node=(OWNER.uid, TEAM, 0o660)),
    Case("touch", MEMBER, False),
    Case("touch", OTHER, True, node=(OWNER.uid, TEAM, 0o646)),
    Case("touch", OTHER, False),
    Case("touch", ROOT, True, node=(OWNER.uid, TEAM, 0o000)),
    # a stream's slow-reader policy: may write it, and owner or root
    Case("policy", OWNER, True),
    Case("policy", OWNER, False, node=(OWNER.uid, TEAM, 0o440)),
    Case("policy", MEMBER, False, node=(OWNER.uid, TEAM, 0o660)),
    Case("policy", OTHER, False, node=(OWNER.uid, TEAM, 0o666)),
    Case("policy", ROOT, True, node=(OWNER.uid, TEAM, 0o000)),
    # listing a directory: read on it
    Case("list", OWNER, True, node=(OWNER.uid, TEAM, 0o700)),
    Case("list", OWNER, False, node=(OWNER.uid, TEAM, 0o300)),
    Case("list", MEMBER, True, node=(OWNER.uid, TEAM, 0o750)),
    Case("list", SUPPLEMENTARY, False, node=(OWNER.uid, TEAM, 0o710)),
    Case("list", OTHER, True, node=(OWNER.uid, TEAM, 0o755)),
    Case("list", OTHER, False, node=(OWNER.uid, TEAM, 0o751)),
    Case("list", ROOT, True, node=(OWNER.uid, TEAM, 0o000)),
    # going through a directory: search on it
    Case("traverse", OWNER, False, node=(OWNER.uid, TEAM, 0o600)),
    Case("traverse", OWNER, True, node=(OWNER.uid, TEAM, 0o100)),
    Case("traverse", MEMBER, True, node=(OWNER.uid, TEAM, 0o710)),
    Case("traverse", SUPPLEMENTARY, False, node=(OWNER.uid, TEAM, 0o740)),
    Case("traverse", OTHER, True, node=(OWNER.uid, TEAM, 0o701)),
    Case("traverse", OTHER, False, node=(OWNER.uid, TEAM, 0o776)),
    Case("traverse", ROOT, True, node=(OWNER.uid, TEAM, 0o000)),
]

#: Which case directory each row lives in: /c000, /c001, ...
CASE_DIRS = {case: f"c{i:03d}" for i, case in enumerate(CASES)}


def test_the_table_covers_every_operation_both_ways():
    assert {case.op for case in CASES} == set(OPERATIONS)
    assert len(CASE_DIRS) == len(CASES), "two rows are the same"
    for op in ("read", "append", "create", "unlink", "rename", "chmod", "touch", "list",
               "traverse"):
        assert {case.allowed for case in CASES if case.op == op} == {True, False}, op


def primary_gid(who: Identity) -> int:
    """The gid a row's identity creates with (permissions do not depend on which it is)."""
    return min(who.gids)


# -- the core, with no kernel ---------------------------------------------------


async def core_fixture(case: Case) -> tuple[Tree, list[bytes]]:
    """A tree holding the row's nodes, made without any check; the path to /cNNN."""
    ns = Tree(StreamSettings(), uid=0, gid=0)
    top = await ns.create(Directory, ns.root, CASE_DIRS.get(case, "extra").encode(), 0o755,
                         0, 0)
    await ns.create(Directory, top, b"e", 0o777, 0, 0)
    parent = await ns.create(Directory, top, b"d", case.parent[2], case.parent[0],
                             case.parent[1])
    kind = Directory if case.op in DIRECTORY_OPERATIONS else StreamFile
    node = await ns.create(kind, parent, b"n", case.node[2], case.node[0], case.node[1])
    if case.op == "traverse":
        await ns.create(StreamFile, node, b"inner", 0o644, 0, 0)
    await ns.create(StreamFile, parent, b"mine", 0o644, case.who.uid, primary_gid(case.who))
    return ns, [top.name]


async def outcome_core(case: Case) -> str:
    """What the core answers the row: "ok", or the errno's name."""
    ns, top = await core_fixture(case)
    who = case.who
    try:
        parent = ns.resolve([*top, b"d"], who)
        if case.op in ("create", "mkdir"):
            kind = StreamFile if case.op == "create" else Directory
            await ns.create(kind, parent, b"new", 0o755, who.uid, primary_gid(who),
                            identity=who)
        elif case.op == "unlink":
            await ns.unlink(parent, b"n", identity=who)
        elif case.op == "rmdir":
            await ns.rmdir(parent, b"n", identity=who)
        elif case.op == "rename":
            await ns.rename(parent, b"n", parent, b"new", identity=who)
        elif case.op == "rename_over":
            await ns.rename(parent, b"mine", parent, b"n", identity=who)
        elif case.op == "move_dir":
            await ns.rename(parent, b"n", ns.resolve([*top, b"e"], who), b"n", identity=who)
        elif case.op == "traverse":
            ns.resolve([*top, b"d", b"n", b"inner"], who)
        else:
            node = ns.resolve([*top, b"d", b"n"], who)
            if case.op in ("read", "append"):
                ns.open_check(who, node, read=case.op == "read", write=case.op == "append")
            elif case.op == "list":
                check(who, Access.READ, node)
            elif case.op == "policy":
                check_set_settings(who, node)
                node.stream.set_policy(SlowReaderPolicy.DROP)
            else:
                await ns.setattr(node, identity=who, **SETATTR[case.op](node))
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"


#: What each attribute-changing operation sets, from the node as it is.
SETATTR = {
    "chmod": lambda node: {"mode": 0o600},
    "chown": lambda node: {"uid": STRANGER_UID},
    "chown_same": lambda node: {"uid": node.uid},
    "chgrp_team": lambda node: {"gid": TEAM},
    "chgrp_foreign": lambda node: {"gid": STRANGER_GID},
    "utime": lambda node: {"atime_ns": 10**9, "mtime_ns": 10**9},
    "touch": lambda node: {"touch": True},
}


async def run_core(case: Case) -> bool:
    return await outcome_core(case) == "ok"


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_core(case):
    assert await run_core(case) == case.allowed, await outcome_core(case)


async def test_core_refusals_say_why():
    """EACCES for the bits, EPERM for what only an owner (or root) may do."""
    for case, expected in [
        (Case("unlink", OTHER, False, parent=STICKY), "EPERM"),
        (Case("unlink", OWNER, False), "EACCES"),
        (Case("chmod", MEMBER, False), "EPERM"),
        (Case("utime", MEMBER, False, node=(OWNER.uid, TEAM, 0o660)), "EPERM"),
        (Case("touch", MEMBER, False), "EACCES"),
        (Case("policy", OWNER, False, node=(OWNER.uid, TEAM, 0o440)), "EACCES"),
        (Case("policy", MEMBER, False, node=(OWNER.uid, TEAM, 0o660)), "EPERM"),
        (Case("traverse", OWNER, False, node=(OWNER.uid, TEAM, 0o600)), "EACCES"),
    ]:
        assert await outcome_core(case) == expected, case


async def test_without_an_identity_nothing_is_checked():
    """identity=None is the FUSE door's: the kernel has checked."""
    case = Case("unlink", OTHER, False, node=(OWNER.uid, TEAM, 0o000), parent=(0, 0, 0o000))
    ns, top = await core_fixture(case)
    parent = ns.resolve([*top, b"d"])
    node = ns.resolve([*top, b"d", b"n"])
    await ns.setattr(node, mode=0o2600, uid=STRANGER_UID, gid=STRANGER_GID, atime_ns=1)
    assert (node.mode & 0o7777, node.uid, node.gid, node.atime_ns) == (
        0o2600, STRANGER_UID, STRANGER_GID, 1)
    await ns.rename(parent, b"n", parent, b"m")
    await ns.unlink(parent, b"m")
    assert list(parent.entries) == [b"mine"]


async def test_remove_tree_is_all_or_nothing():
    ns = Tree(StreamSettings(), uid=0, gid=0)
    top = await ns.create(Directory, ns.root, b"top", 0o777, 0, 0)
    mine = await ns.create(Directory, top, b"mine", 0o755, OWNER.uid, OWNER.uid)
    await ns.create(StreamFile, mine, b"a", 0o644, OWNER.uid, OWNER.uid)
    locked = await ns.create(Directory, mine, b"locked", 0o1777, OWNER.uid, OWNER.uid)
    theirs = await ns.create(StreamFile, locked, b"theirs", 0o644, MEMBER.uid, TEAM)
    with pytest.raises(PermissionError):
        await ns.remove_tree(top, b"mine", identity=MEMBER)  # may not write mine
    await ns.setattr(mine, mode=0o777)
    with pytest.raises(PermissionError):
        await ns.remove_tree(top, b"mine", identity=OTHER)  # sticky locked holds MEMBER's
    assert mine.entries.keys() == {b"a", b"locked"} and theirs.linked
    await ns.remove_tree(top, b"mine", identity=MEMBER)  # its own stream in the sticky one
    assert top.entries == {} and not theirs.linked


async def test_chmod_drops_setgid_for_a_group_the_owner_is_not_in():
    ns = Tree(StreamSettings(), uid=0, gid=0)
    outside = await ns.create(StreamFile, ns.root, b"outside", 0o640, OWNER.uid, TEAM)
    inside = await ns.create(StreamFile, ns.root, b"inside", 0o640, SUPPLEMENTARY.uid, TEAM)
    await ns.setattr(outside, mode=0o2640, identity=OWNER)
    await ns.setattr(inside, mode=0o2640, identity=SUPPLEMENTARY)
    assert (outside.mode & 0o7777, inside.mode & 0o7777) == (0o640, 0o2640)


# -- identities -------------------------------------------------------------------


def test_identities_of_users_and_processes():
    nobody = subprocess.run(["runuser", "-u", "nobody", "--", "id", "-u"], capture_output=True,
                            text=True, check=True)
    nobody_groups = subprocess.run(["runuser", "-u", "nobody", "--", "id", "-G"],
                                   capture_output=True, text=True, check=True)
    assert NOBODY.uid == int(nobody.stdout)
    assert Identity.of_user(NOBODY.uid).gids == {int(g) for g in nobody_groups.stdout.split()}
    assert Identity.of_user(0) == Identity(0, frozenset(os.getgrouplist("root", 0)))
    # A uid without a passwd entry is in no group.
    assert Identity.of_user(STRANGER_UID) == Identity(STRANGER_UID, frozenset())
    # A process's groups are the ones it holds now, not those of its user.
    with subprocess.Popen(["setpriv", f"--reuid={SUPPLEMENTARY.uid}", "--regid=1003",
                           f"--groups={TEAM}", "sh", "-c", "echo ready; exec cat"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline() == "ready\n"
            assert Identity.of_process(child.pid, SUPPLEMENTARY.uid, 1003) == SUPPLEMENTARY
            # A pid now running as someone else gives way to the user database.
            assert Identity.of_process(child.pid, OWNER.uid, 77) == Identity(
                OWNER.uid, frozenset({77}))
        finally:
            child.kill()
    # Gone: the user database, and the gid the request came with.
    assert Identity.of_process(child.pid, STRANGER_UID, 5) == Identity(STRANGER_UID,
                                                                       frozenset({5}))


# -- FUSE: the kernel decides, as the row's identity ------------------------------

# Runs as one identity: executes one request per line of JSON on stdin and
# answers each with "ok" or the errno's name.
WORKER = r"""
import errno, json, os, sys
def run(call, *args):
    if call == "open":
        fd = os.open(args[0], args[1], 0o644)
        try:
            if args[1] & os.O_ACCMODE == os.O_WRONLY:
                os.write(fd, b"x")
        finally:
            os.close(fd)
    elif call == "utime":
        os.utime(args[0], None if args[1] is None else tuple(args[1]))
    elif call == "setxattr":
        os.setxattr(args[0], args[1], args[2].encode())
    else:
        getattr(os, call)(*args)
for line in sys.stdin:
    try:
        run(*json.loads(line))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"""


class FuseTable:
    """A mount with ``-o allow_other`` holding every row's nodes, and a worker per identity."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount
        self.workers: dict[tuple[Identity, str], subprocess.Popen] = {}

    def build(self, case: Case, top: Path) -> None:
        """Make the row's nodes under ``top``, as root, with chown and chmod."""
        os.mkdir(top)
        os.mkdir(top / "e")
        os.chmod(top / "e", 0o777)
        parent, node = top / "d", top / "d" / "n"
        os.mkdir(parent)
        if case.op in DIRECTORY_OPERATIONS:
            os.mkdir(node)
            if case.op == "traverse":
                (node / "inner").touch()
        else:
            node.touch()
        os.chown(node, case.node[0], case.node[1])
        os.chmod(node, case.node[2])
        (parent / "mine").touch()
        os.chown(parent / "mine", case.who.uid, primary_gid(case.who))
        os.chmod(parent / "mine", 0o644)
        os.chown(parent, case.parent[0], case.parent[1])
        os.chmod(parent, case.parent[2])

    def worker(self, who: Identity, code: str = WORKER) -> subprocess.Popen:
        if (who, code) not in self.workers:
            self.workers[who, code] = self.mount.spawn(
                ["setpriv", f"--reuid={who.uid}", f"--regid={primary_gid(who)}",
                 "--groups=" + ",".join(map(str, sorted(who.gids))),
                 sys.executable, "-c", code], stdin=subprocess.PIPE, text=True, cwd="/")
        return self.workers[who, code]

    def request(self, who: Identity, *call, code: str = WORKER) -> str:
        worker = self.worker(who, code)
        worker.stdin.write(json.dumps(call) + "\n")
        worker.stdin.flush()
        answer = worker.stdout.readline().strip()
        assert answer, f"the worker of uid {who.uid} died: {worker.stderr.read()}"
        return answer


def fuse_request(case: Case, top: Path) -> tuple:
    """The system call that does the row's operation, as the worker takes it."""
    d, n = top / "d", str(top / "d" / "n")
    return {
        "read": ("open", n, os.O_RDONLY | os.O_NONBLOCK),
        "append": ("open", n, os.O_WRONLY | os.O_APPEND),
        "create": ("open", str(d / "new"), os.O_WRONLY | os.O_CREAT | os.O_EXCL),
        "mkdir": ("mkdir", str(d / "new")),
        "unlink": ("unlink", n),
        "rmdir": ("rmdir", n),
        "rename": ("rename", n, str(d / "new")),
        "rename_over": ("rename", str(d / "mine"), n),
        "move_dir": ("rename", n, str(top / "e" / "n")),
        "chmod": ("chmod", n, 0o600),
        "chown": ("chown", n, STRANGER_UID, -1),
        "chown_same": ("chown", n, case.node[0], -1),
        "chgrp_team": ("chown", n, -1, TEAM),
        "chgrp_foreign": ("chown", n, -1, STRANGER_GID),
        "utime": ("utime", n, [1, 1]),
        "touch": ("utime", n, None),
        "policy": ("setxattr", n, "user.streamfs.slow_reader", "drop"),
        "list": ("listdir", n),
        "traverse": ("stat", n + "/inner"),
    }[case.op]


@pytest.fixture(scope="module")
def fuse_table(fuse_device):
    """One mount for the whole table: every row has its own directory in it."""
    if os.geteuid() != 0:
        pytest.skip("acting as other users needs root")
    base = Path(tempfile.mkdtemp(prefix="streamfs-perm-"))
    try:
        os.chmod(base, 0o755)  # others must reach the mount
        (base / "mnt").mkdir()
        mount = Mount(base / "mnt", base / "mnt.log",
                      ["-o", "allow_other", "--http", f"unix:{base / 'http.sock'}"])
        try:
            table = FuseTable(mount)
            table.socket = base / "http.sock"
            for case in CASES:
                table.build(case, mount / CASE_DIRS[case])
            for case in HTTP_CASES:
                table.build(case, mount / ("h" + CASE_DIRS[case]))
            yield table
            assert "Traceback" not in mount.log()
        finally:
            mount.close()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def outcome_fuse(case: Case, table: FuseTable) -> str:
    """What the kernel answers the row's identity through the mount: "ok", or the errno's name."""
    return table.request(case.who, *fuse_request(case, table.mount / CASE_DIRS[case]))


def run_fuse(case: Case, table: FuseTable) -> bool:
    return outcome_fuse(case, table) == "ok"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fuse(case, fuse_table):
    """The kernel and the core give every row the same answer, errno included."""
    fuse = outcome_fuse(case, fuse_table)
    assert (fuse == "ok") == case.allowed, fuse
    assert fuse == trio.run(outcome_core, case)


def test_fuse_chmod_drops_setgid_as_the_core_does(fuse_table):
    """The kernel clears S_ISGID when a non-root owner is not in the group: so does the core
    (test_chmod_drops_setgid_for_a_group_the_owner_is_not_in); and workers are who they say."""
    top = fuse_table.mount / "setgid"
    os.mkdir(top)
    os.chmod(top, 0o777)
    for who, kept in [(OWNER, False), (SUPPLEMENTARY, True)]:
        path = top / str(who.uid)
        assert fuse_table.request(who, "open", str(path), os.O_WRONLY | os.O_CREAT) == "ok"
        made = os.stat(path)
        assert (made.st_uid, made.st_gid) == (who.uid, primary_gid(who))
        os.chown(path, who.uid, TEAM)
        assert fuse_table.request(who, "chmod", str(path), 0o2640) == "ok"
        assert stat.S_IMODE(os.stat(path).st_mode) == (0o2640 if kept else 0o640)


# -- HTTP: the core decides, for the identity the Unix socket gives ---------------

# Runs as one identity: sends one request per line of JSON on stdin, [method,
# target, body], over the door's Unix socket, and answers with the status. A
# stream's GET never ends: its status line is all that is read.
HTTP_WORKER = r"""
import json, socket, sys
path = sys.argv[1]
for line in sys.stdin:
    method, target, body = json.loads(line)
    body = body.encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (method.encode(), target.encode(),
                                                           len(body), body))
        head = b""
        while b"\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                break
            head += data
    print(head.split(b" ")[1].decode() if head else "closed", flush=True)
"""

#: Operations HTTP has no route for: attributes and settings change through the mount.
NO_HTTP_ROUTE = {"chown", "chown_same", "chgrp_team", "chgrp_foreign", "utime", "policy"}
HTTP_CASES = [case for case in CASES if case.op not in NO_HTTP_ROUTE]


def http_request(case: Case, top: str) -> tuple[str, str, str]:
    """The request that does the row's operation: native routes, or AGFS's where HTTP has no other."""
    api = "/api/v1/"
    agfs = f"/streamfs/{top}/d"
    rename = f"{api}rename?path={agfs}/%s"
    return {
        "read": ("GET", f"/{top}/d/n", ""),
        "append": ("PUT", f"/{top}/d/n", "x"),
        "create": ("PUT", f"/{top}/d/new", "x"),
        "mkdir": ("POST", f"{api}directories?path={agfs}/new&mode=755", ""),
        "unlink": ("DELETE", f"/{top}/d/n", ""),
        "rmdir": ("DELETE", f"/{top}/d/n", ""),
        "rename": ("POST", rename % "n", json.dumps({"newPath": f"{agfs}/new"})),
        "rename_over": ("POST", rename % "mine", json.dumps({"newPath": f"{agfs}/n"})),
        "move_dir": ("POST", rename % "n", json.dumps({"newPath": f"/streamfs/{top}/e/n"})),
        "touch": ("POST", f"{api}touch?path={agfs}/n", ""),
        "chmod": ("POST", f"{api}chmod?path={agfs}/n", json.dumps({"mode": 0o600})),
        "list": ("GET", f"/{top}/d/n/", ""),
        "traverse": ("HEAD", f"/{top}/d/n/inner", ""),
    }[case.op]


def outcome_http(case: Case, table: FuseTable) -> str:
    """The status the door answers the row's identity."""
    code = HTTP_WORKER.replace("sys.argv[1]", repr(str(table.socket)))
    return table.request(case.who, *http_request(case, "h" + CASE_DIRS[case]), code=code)


def run_http(case: Case, table: FuseTable) -> bool:
    return outcome_http(case, table).startswith("2")


@pytest.mark.parametrize("case", HTTP_CASES, ids=str)
def test_http(case, fuse_table):
    """The door gives every row the core's answer: 2xx where allowed, 403 where not."""
    status = outcome_http(case, fuse_table)
    assert status.startswith("2") if case.allowed else status == "403", status
