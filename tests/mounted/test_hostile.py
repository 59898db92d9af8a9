"""A user of the mount cannot take it down for everyone, and size costs no more per call."""

import collections
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfs_fuse.testing import as_user

# Runs as the unprivileged user: executes one operation per line of JSON on
# stdin and answers each with "ok" or the errno name, never failing itself.
WORKER = r"""
import errno, json, os, select, sys
root = sys.argv[1]
def path(name):
    return os.path.join(root, name)
def run(op, a, b, data):
    if op == "mkdir": os.mkdir(path(a))
    elif op == "rmdir": os.rmdir(path(a))
    elif op == "write":
        fd = os.open(path(a), os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try: os.write(fd, data.encode())
        finally: os.close(fd)
    elif op == "read":
        fd = os.open(path(a), os.O_RDONLY | os.O_NONBLOCK)
        try:
            if select.select([fd], [], [], 0)[0]: os.read(fd, 1 << 16)
            os.pread(fd, 10, len(data))
        finally: os.close(fd)
    elif op == "unlink": os.unlink(path(a))
    elif op == "rename": os.rename(path(a), path(b))
    elif op == "chmod": os.chmod(path(a), (0o644, 0o755, 0o000, 0o777, 0o1777)[len(data) % 5])
    elif op == "setxattr": os.setxattr(path(a), "user.streamfs.slow_reader", data.encode())
    elif op == "listxattr": [os.getxattr(path(a), n) for n in os.listxattr(path(a))]
    elif op == "symlink": os.symlink(a, path(b))
    elif op == "link": os.link(path(a), path(b))
    elif op == "mkfifo": os.mkfifo(path(a))
    elif op == "truncate": os.truncate(path(a), len(data))
    elif op == "utime": os.utime(path(a), (len(data), len(data)))
    elif op == "listdir": os.listdir(path(a))
    elif op == "deep":
        os.chdir(path(a))
        for _ in range(min(len(data), 10) * 100):
            os.mkdir("d"); os.chdir("d")
        os.chdir(root)
for line in sys.stdin:
    op, a, b, data = json.loads(line)
    try:
        run(op, a, b, data)
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"""

# Plain names most of the time, so that operations build on each other.
NAMES = st.one_of(
    st.sampled_from(["a", "b", "c", "a/c", "a/d", "b/e"]),
    st.sampled_from(["a/c/d", "x" * 255, "y" * 300, "line\nbreak", "caf\u00e9", "..", ".",
                     "a/..", "", "a//b", " ", "-rf"]),
)
OPERATIONS = st.tuples(
    st.one_of(
        st.sampled_from(["mkdir", "write", "read", "rename", "unlink"]),
        st.sampled_from(["rmdir", "chmod", "setxattr", "listxattr", "symlink", "link", "mkfifo",
                         "truncate", "utime", "listdir", "deep"]),
    ),
    NAMES, NAMES,
    st.sampled_from(["", "drop", "block", "disconnect", "bogus", "x" * 10, "\x00", "1" * 4000]),
)


def assert_serving(mnt):
    assert mnt.daemon.poll() is None, f"the daemon died:\n{mnt.log()}"
    ls = subprocess.run(["ls", "-la", mnt.path], capture_output=True, timeout=10)
    assert ls.returncode == 0, ls.stderr


@pytest.fixture
def shared_mount(world_readable_dir, mount_with):
    mnt = mount_with("-o", "allow_other", parent=world_readable_dir)
    os.chmod(mnt.path, 0o1777)
    return mnt


def test_random_operations_by_another_user_never_stop_the_daemon(shared_mount,
                                                                  unprivileged_user):
    mnt = shared_mount
    worker = mnt.spawn(["setpriv", f"--reuid={unprivileged_user}",
                        f"--regid={unprivileged_user}", "--init-groups",
                        sys.executable, "-c", WORKER, str(mnt.path)],
                       stdin=subprocess.PIPE, text=True)

    answers = collections.Counter()

    # Derandomized, so that every run makes the same operations (a failure reproduces),
    # and how many run does not depend on what else the session ran.
    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(OPERATIONS, min_size=5, max_size=30))
    def run(operations):
        for operation in operations:
            worker.stdin.write(json.dumps(operation) + "\n")
            worker.stdin.flush()
            answer = worker.stdout.readline().strip()
            assert answer, f"the worker died on {operation}"
            assert answer != "EIO", f"{operation} hit a bug: see the daemon's log"
            answers[answer] += 1
            assert_serving(mnt)

    run()
    assert "Traceback" not in mnt.log()
    # Not vacuous: many operations ran, and both succeeded and were refused.
    print(f"\n{sum(answers.values())} operations: {dict(answers)}")
    assert sum(answers.values()) > 300 and answers["ok"] > 30 and len(answers) > 4, answers


def test_renaming_the_top_of_a_deep_tree_as_a_user(shared_mount, unprivileged_user):
    mnt = shared_mount
    script = ("import os\n"
              "os.mkdir('top')\n"
              "os.chdir('top')\n"
              "for _ in range(990):\n"
              "    os.mkdir('d'); os.chdir('d')\n"
              "open('stream', 'w').close()\n")
    made = as_user(unprivileged_user, sys.executable, "-c", script, cwd=mnt.path)
    assert made.returncode == 0, made.stderr
    renamed = as_user(unprivileged_user, "mv", mnt / "top", mnt / "moved")
    assert renamed.returncode == 0, renamed.stderr
    assert_serving(mnt)
    assert os.listdir(mnt.path) == ["moved"]


def test_a_hundred_thousand_streams_in_one_directory(mnt):
    # In a subprocess of its own: create, stat, list and remove them all.
    script = (
        "import os, sys\n"
        "d = sys.argv[1]\n"
        "names = [f's{i:06d}' for i in range(100_000)]\n"
        "for n in names: os.close(os.open(os.path.join(d, n), os.O_WRONLY | os.O_CREAT))\n"
        "assert sorted(os.listdir(d)) == names\n"
        "for n in names[::1000]: os.stat(os.path.join(d, n))\n"
        "for n in names: os.unlink(os.path.join(d, n))\n"
        "assert os.listdir(d) == []\n"
        "print('done', flush=True)\n"
    )
    os.mkdir(mnt / "big")
    result = subprocess.run([sys.executable, "-c", script, str(mnt / "big")],
                            capture_output=True, text=True, timeout=280)
    assert result.stdout == "done\n", result.stderr
    assert_serving(mnt)
