"""The command line: bad input gets one line and a non-zero exit, never a mount."""

import dataclasses
import os
import signal
import subprocess
import sys

import pytest

from conftest import require_fuse, wait_until
from streamfs_fuse.cli import build_parser, config_from_args
from streamfs_fuse.config import SETTINGS, ConfigError
from streamfs_fuse.mount import is_mounted
from streamfs_fuse.stream import SlowReaderPolicy, StreamSettings

CLI = [sys.executable, "-m", "streamfs_fuse"]


def config(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("text, expected", [
    ("512KB", 512 * 1024), ("1.5MB", 1572864), ("524288", 524288),
    ("1MiB", 1 << 20), ("2GB", 2 << 30), ("64 KB", 65536), ("0", 0), ("1.0", 1),
    ("0.5KB", 512), ("10 bytes", 10),
])
def test_sizes_are_1024_based(text, expected):
    assert config("m", f"--ring-buffer-size={text}").settings.ring_buffer_size == expected


def test_defaults():
    settings = config("m").settings
    assert settings.channel_buffer_size == settings.ring_buffer_size == 6 * 1024 * 1024
    assert settings.slow_reader is SlowReaderPolicy.DROP


def write_config(tmp_path, body):
    path = tmp_path / "streamfs.toml"
    path.write_text(body)
    return str(path)


AGFS_CONFIG = """
[server]
address = ":8080"

[plugins.streamfs]
enabled = true
path = "/streamfs"

[plugins.streamfs.config]
channel_buffer_size = "512KB"
ring_buffer_size = 1048576
"""


def test_agfs_config_file(tmp_path):
    settings = config("m", "--config", write_config(tmp_path, AGFS_CONFIG)).settings
    assert settings.channel_buffer_size == 512 * 1024
    assert settings.ring_buffer_size == 1 << 20


def test_precedence_flags_over_o_over_file(tmp_path):
    path = write_config(tmp_path, AGFS_CONFIG)
    settings = config("m", "--config", path, "-o", "ring_buffer_size=2MB,channel_buffer_size=3MB",
                      "--channel-buffer-size=4MB").settings
    assert settings.ring_buffer_size == 2 << 20
    assert settings.channel_buffer_size == 4 << 20


def test_o_options_split_into_settings_and_fuse_options():
    cfg = config("src", "m", "-o", "allow_other,ring_buffer_size=1MB,slow_reader=block,noauto")
    assert cfg.settings.ring_buffer_size == 1 << 20
    assert cfg.settings.slow_reader is SlowReaderPolicy.BLOCK
    assert cfg.fuse_options == {"allow_other", "fsname=src"}


def test_settings_table_matches_stream_settings():
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(StreamSettings)]


def sample(setting):
    """A valid value for ``setting`` that is not its default."""
    return setting.choices[-1] if setting.choices else "1MB"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_has_a_flag_an_o_key_and_a_toml_key(tmp_path, setting):
    expected = setting.parse(sample(setting), setting.name)
    assert expected != setting.default
    toml = f'[plugins.streamfs.config]\n{setting.name} = "{sample(setting)}"\n'
    for argv in ([f"{setting.flag}={sample(setting)}"],
                 ["-o", f"{setting.name}={sample(setting)}"],
                 ["--config", write_config(tmp_path, toml)]):
        assert getattr(config("m", *argv).settings, setting.name) == expected, argv


@pytest.mark.parametrize("argv, message", [
    (["--ring-buffer-size=abc"], "--ring-buffer-size: 'abc' is not a size"),
    (["--channel-buffer-size=0"], "--channel-buffer-size: must be at least 1, got 0"),
    (["--max-memory=0"], "--max-memory: must be at least 1, got 0"),
    (["--ring-buffer-size=1.5"], "--ring-buffer-size: '1.5' is not a whole number of bytes"),
    (["--ring-buffer-size=0.5B"], "--ring-buffer-size: '0.5B' is not a whole number of bytes"),
    (["--ring-buffer-size=0.1KB"], "--ring-buffer-size: '0.1KB' is not a whole number of bytes"),
    (["--ring-buffer-size=1e3"], "--ring-buffer-size: '1e3' is not a size"),
    (["--ring-buffer-size=100TB"], "--ring-buffer-size: 100TB is more than this machine's memory"),
    (["--channel-buffer-size=-1MB"], "--channel-buffer-size: '-1MB' is not a size"),
    (["-o", "ring_buffer_size=lots"], "-o ring_buffer_size: 'lots' is not a size"),
    (["-o", "bogus"], "-o bogus: unknown mount option"),
    (["-o", "slow_reader=maybe"], "-o slow_reader: 'maybe' is not one of drop, block, disconnect"),
])
def test_bad_settings_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config("m", *argv)


SECTION = "[plugins.streamfs.config]\n"


@pytest.mark.parametrize("body, message", [
    ("[plugins.streamfs\n", "is not valid TOML"),
    ("[plugins.other]\n", "has no [plugins.streamfs] section"),
    ("[plugins.streamfs]\ncolour = 1\n", "unknown key plugins.streamfs.colour"),
    ("[plugins.streamfs.config]\nring_size = 1\n", "unknown key plugins.streamfs.config.ring_size"),
    (f"{SECTION}channel_buffer_size = 0\n", "channel_buffer_size: must be at least 1, got 0"),
    (f"{SECTION}ring_buffer_size = -1\n", "ring_buffer_size: must be at least 0, got -1"),
    (f"{SECTION}ring_buffer_size = true\n", "expected a size"),
    (f"{SECTION}ring_buffer_size = 1.5\n", "expected a size such as 512KB or 1048576, got 1.5"),
    (f'{SECTION}ring_buffer_size = "1.5"\n', "'1.5' is not a whole number of bytes"),
    (f"{SECTION}max_memory = {100 << 40}\n", f"{100 << 40} is more than this machine's memory"),
    ("[plugins.streamfs]\nenabled = false\n", "plugins.streamfs.enabled is not true"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config("m", "--config", write_config(tmp_path, body))


def run_cli(*argv):
    return subprocess.run([*CLI, *map(str, argv)], capture_output=True, text=True, timeout=30)


def assert_one_line_error(result, fragment, status):
    assert result.returncode == status, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamfs-fuse: error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_bad_size(tmp_path):
    assert_one_line_error(run_cli(tmp_path, "--ring-buffer-size=12XB"), "is not a size", 2)


@pytest.mark.parametrize("flag, fragment", [
    ("--ring-buffer-size=1.5", "'1.5' is not a whole number of bytes"),
    ("--channel-buffer-size=0", "must be at least 1"),
    ("--max-memory=100TB", "100TB is more than this machine's memory ("),
])
def test_cli_bad_size_values(tmp_path, flag, fragment):
    assert_one_line_error(run_cli(tmp_path, flag), fragment, 2)


def test_cli_unreadable_config(tmp_path):
    assert_one_line_error(run_cli(tmp_path, "--config", tmp_path / "missing.toml"),
                          "cannot read config file", 2)


def test_cli_missing_mountpoint(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "nowhere"), "does not exist", 1)


def test_cli_mountpoint_not_a_directory(tmp_path):
    (tmp_path / "file").touch()
    assert_one_line_error(run_cli(tmp_path / "file"), "is not a directory", 1)


def test_cli_already_mounted(mnt):
    result = run_cli(mnt.path)
    assert_one_line_error(result, "is already mounted", 1)
    assert mnt.daemon.poll() is None


def daemon_pids(mountpoint):
    """PIDs of the background daemons serving ``mountpoint`` (a unique temporary path)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if os.fsencode(mountpoint) in argv and b"streamfs_fuse" in argv:
            pids.append(int(entry))
    return pids


def test_cli_daemon_returns_when_mounted_and_exits_on_unmount(tmp_path):
    require_fuse()
    mountpoint = tmp_path / "bg"
    mountpoint.mkdir()
    result = run_cli(mountpoint, "--ring-buffer-size=1MB")
    try:
        assert result.returncode == 0 and result.stderr == ""
        assert is_mounted(str(mountpoint))
        assert len(daemon_pids(mountpoint)) == 1
        (mountpoint / "s").write_bytes(b"x")
        assert os.listdir(mountpoint) == ["s"]
        assert subprocess.run(["fusermount3", "-u", mountpoint]).returncode == 0
        wait_until(lambda: not daemon_pids(mountpoint), what="the daemon to exit")
    finally:
        if is_mounted(str(mountpoint)):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        for pid in daemon_pids(mountpoint):
            os.kill(pid, signal.SIGKILL)


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("streamfs-fuse ")
    assert "ring-buffer-size" in run_cli("--help").stdout
