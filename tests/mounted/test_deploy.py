"""streamfs-fuse deployed the way FUSE file systems are: mount(8), fstab, systemd."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamfs_fuse.testing import wait_until
from streamfs_fuse.mount import is_mounted

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(sys.executable).parent / "streamfs-fuse"


@pytest.fixture
def on_standard_path():
    """streamfs-fuse where mount(8) looks for it: mount runs helpers with a fixed PATH."""
    link = Path("/usr/local/bin/streamfs-fuse")
    if link.exists() or link.is_symlink():
        yield link
        return
    if os.geteuid() != 0:
        pytest.skip("putting streamfs-fuse in /usr/local/bin needs root")
    link.symlink_to(PROGRAM)
    try:
        yield link
    finally:
        link.unlink()


@pytest.fixture
def mountpoint(tmp_path, fuse_device):
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if is_mounted(str(path)):
        subprocess.run(["umount", "-l", path], check=False)
    # The daemon ends on unmount; wait for it so nothing is left behind.
    wait_until(lambda: not daemons(path), what="the daemon to exit")


def daemons(mountpoint):
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in argv and any(b"streamfs" in a for a in argv[:2]):
            found.append(int(entry))
    return found


def check_works_and_unmount(mountpoint, ring_bytes):
    line = next(l for l in Path("/proc/mounts").read_text().splitlines()
                if l.split()[1] == str(mountpoint))
    source, _, fstype = line.split()[:3]
    assert (source, fstype) == ("streamfs", "fuse.streamfs-fuse")
    (mountpoint / "s").write_bytes(b"via mount")
    assert os.getxattr(mountpoint / "s", "user.streamfs.ring_buffer_size") == str(ring_bytes).encode()
    assert subprocess.run(["umount", mountpoint]).returncode == 0
    wait_until(lambda: not daemons(mountpoint), what="the daemon to exit")


def test_mount_command_with_fuse_subtype(mountpoint, on_standard_path):
    result = subprocess.run(["mount", "-t", "fuse.streamfs-fuse", "streamfs", mountpoint,
                             "-o", "ring_buffer_size=1MB"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    check_works_and_unmount(mountpoint, 1 << 20)


def test_fstab_line(mountpoint, on_standard_path, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text(f"streamfs  {mountpoint}  fuse.streamfs-fuse  "
                     "noauto,nofail,_netdev,ring_buffer_size=512KB,allow_other  0  0\n")
    result = subprocess.run(["mount", "--fstab", fstab, mountpoint], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    check_works_and_unmount(mountpoint, 512 * 1024)


def test_mount_with_program_path_needs_nothing_on_path(mountpoint):
    result = subprocess.run(["mount", "-t", "fuse", f"{PROGRAM}#streamfs", mountpoint,
                             "-o", "ring_buffer_size=2MB"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    check_works_and_unmount(mountpoint, 2 << 20)


def test_python_dash_m_is_the_console_script():
    module = subprocess.run([sys.executable, "-m", "streamfs_fuse", "--version"],
                            capture_output=True, text=True)
    script = subprocess.run([PROGRAM, "--version"], capture_output=True, text=True)
    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout and module.stdout.startswith("streamfs-fuse ")


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "contrib" / "streamfs-fuse.service").read_text()
    assert "/usr/local/bin/streamfs-fuse /mnt/stream -f" in unit
    # Verify it as installed, with the program where this checkout has it.
    local = tmp_path / "streamfs-fuse.service"
    local.write_text(unit.replace("/usr/local/bin/streamfs-fuse", str(PROGRAM)))
    result = subprocess.run([analyze, "verify", local], capture_output=True, text=True)
    problems = [l for l in result.stderr.splitlines() if str(local) in l or "streamfs" in l]
    assert result.returncode == 0 and not problems, result.stderr
