"""The command line: bad input gets one line and a non-zero exit, never a mount."""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamfs_fuse.cli import build_parser, config_from_args
from streamfs_fuse.settings import (SECTIONS, SETTINGS, BackendSettings, ConfigError, HTTPSettings,
                                  MountConfig)
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings
from streamfs_fuse.testing import as_user, is_mounted, wait_until

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


def test_settings_table_matches_the_settings_dataclasses():
    assert SECTIONS == {"settings": StreamSettings, "http": HTTPSettings,
                        "backend": BackendSettings}
    assert [(s.section, s.attribute) for s in SETTINGS] == [
        (section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert {f.name: f.type for f in dataclasses.fields(MountConfig)}["http"] == "HTTPSettings"


def token_file(tmp_path, text="s3cret\n", name="token", mode=0o600):
    """A token file that only its owner may read, as --http-token requires."""
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def sample(setting, tmp_path):
    """A valid value for ``setting`` that is not its default."""
    if setting.choices:
        return setting.choices[-1]
    return {"http": "127.0.0.1:8000", "http_token": token_file(tmp_path),
            "agfs_path": "/media/live", "backend": "redis://10.0.0.5:6379/1",
            "namespace": "cams", "backend_password_file": token_file(tmp_path),
            "backend_timeout": "3s", "http_max_connections": "100",
            "http_body_timeout": "5s", "http_cert": token_file(tmp_path, name="cert"),
            "http_key": token_file(tmp_path, name="key"),
            "metrics_max_streams": "5", "join": "keyframe"}.get(setting.name, "1MB")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_has_a_flag_an_o_key_and_a_toml_key(tmp_path, setting):
    if setting.switch:
        expected, toml_value, flag, option = True, "true", setting.flag, setting.name
    else:
        value = sample(setting, tmp_path)
        expected, toml_value = setting.parse(value, setting.name), f'"{value}"'
        flag, option = f"{setting.flag}={value}", f"{setting.name}={value}"
    assert expected != setting.default
    toml = f"[plugins.streamfs.config]\n{setting.name} = {toml_value}\n"
    for argv in ([flag], ["-o", option], ["--config", write_config(tmp_path, toml)]):
        assert setting.get(config("m", *argv)) == expected, argv


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
    (["--backend=http://x:1"], "--backend: expected a URL such as redis://127.0.0.1:6379/0"),
    (["--backend=redis://"], "--backend: expected a URL"),
    (["--namespace=a b"], "--namespace: expected a name of letters"),
    (["--backend-timeout=0"], "--backend-timeout: expected a number of seconds above 0"),
    (["--backend-timeout=soon"], "--backend-timeout: 'soon' is not a time"),
    (["--backend=redis://h:1", "--ring-buffer-size=0"], "--ring-buffer-size 0 cannot work"),
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


def test_defaults_leave_http_off():
    assert config("m").http == MountConfig("m").http == HTTPSettings()
    assert HTTPSettings().addresses == ()


def in_every_form(tmp_path, name, value):
    """Argument lists giving setting ``name`` the string ``value`` by flag, -o and config file."""
    flag = "--" + name.replace("_", "-")
    return [[f"{flag}={value}"], ["-o", f"{name}={value}"],
            ["--config", write_config(tmp_path, f'{SECTION}{name} = "{value}"\n')]]


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("localhost:8000", ("localhost", 8000)),
    ("[::1]:8000", ("::1", 8000)),
    ("[0:0:0:0:0:0:0:1]:8000", ("::1", 8000)),
    (":8000", ("127.0.0.1", 8000)),
    ("8000", ("127.0.0.1", 8000)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("0", ("127.0.0.1", 0)),
    (":65535", ("127.0.0.1", 65535)),
    ("127.9.8.7:80", ("127.9.8.7", 80)),
    ("LocalHost:80", ("LocalHost", 80)),
])
def test_http_addresses(tmp_path, text, address):
    for argv in in_every_form(tmp_path, "http", text):
        http = config("m", *argv).http
        assert http == HTTPSettings(addresses=(address,)), argv


def test_http_any_address_with_a_token(tmp_path):
    token = token_file(tmp_path)
    for argv in in_every_form(tmp_path, "http", "0.0.0.0:8000"):
        http = config("m", *argv, "--http-token", token).http
        assert http.addresses == (("0.0.0.0", 8000),) and http.token_file == token, argv


@pytest.mark.parametrize("text, message", [
    ("abc", "'abc' is not HOST:PORT"),
    ("", "'' is not HOST:PORT"),
    ("127.0.0.1:", "'127.0.0.1:' is not HOST:PORT"),
    ("127.0.0.1:http", "'127.0.0.1:http' is not HOST:PORT"),
    ("127.0.0.1:-1", "'127.0.0.1:-1' is not HOST:PORT"),
    ("127.0.0.1:+80", "'127.0.0.1:+80' is not HOST:PORT"),
    ("127.0.0.1:65536", "port 65536 in '127.0.0.1:65536' is not in 0..65535"),
    ("99999", "port 99999 in '99999' is not in 0..65535"),
    ("127.0.0.1:000000080", "'127.0.0.1:000000080' is not HOST:PORT"),
    ("::1:8000", "'::1:8000' is not HOST:PORT (put an IPv6 address in brackets: [::1]:8000)"),
    ("[::1]", "'[::1]' is not HOST:PORT"),
    ("[::1]8000", "'[::1]8000' is not HOST:PORT"),
    ("[localhost]:8000", "'[localhost]:8000' is not HOST:PORT"),
    ("[127.0.0.1]:8000", "'[127.0.0.1]:8000' is not HOST:PORT"),
    ("256.0.0.1:8000", "'256.0.0.1:8000' is not HOST:PORT"),
    ("127.0.0.01:8000", "'127.0.0.01:8000' is not HOST:PORT"),
    ("8000:8000", "'8000:8000' is not HOST:PORT"),
    ("my host:8000", "'my host:8000' is not HOST:PORT"),
    ("-host:8000", "'-host:8000' is not HOST:PORT"),
    ("http://localhost:8000", "'http://localhost:8000' is not HOST:PORT"),
])
def test_bad_http_addresses_are_one_line_errors(tmp_path, text, message):
    for argv, where in zip(in_every_form(tmp_path, "http", text),
                           ["--http: ", "-o http: ", "streamfs.toml: http: "]):
        with pytest.raises(ConfigError) as error:
            config("m", *argv)
        assert str(error.value).endswith(where + message), argv
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("body, message", [
    (f"{SECTION}http = 8000\n", "http: expected HOST:PORT such as 127.0.0.1:8000, got 8000"),
    (f"{SECTION}http = true\n", "http: expected HOST:PORT such as 127.0.0.1:8000, got True"),
    (f"{SECTION}http_token = 1\n", "http_token: expected the path of a file holding a token"),
    (f'{SECTION}http_read_only = "true"\n', "http_read_only: expected true or false, got 'true'"),
    (f"{SECTION}http_read_only = 1\n", "http_read_only: expected true or false, got 1"),
])
def test_bad_http_config_values(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        config("m", "--config", write_config(tmp_path, body))


@pytest.mark.parametrize("option, message", [
    ("http", r"-o http: needs a value, as in http=HOST:PORT\|unix:PATH"),
    ("http_token", "-o http_token: needs a value, as in http_token=FILE"),
    ("http_token=", "-o http_token: expected the path of a file holding a token, got ''"),
    ("http_read_only=true", "-o http_read_only=true: http_read_only takes no value"),
    ("http_read_only=", "-o http_read_only=: http_read_only takes no value"),
])
def test_bad_http_mount_options(option, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        config("m", "-o", option)


@pytest.mark.parametrize("text", ["s3cret", "s3cret\n", "  s3cret \nsecond line\n", "s3cret\r\n"])
def test_http_token_file(tmp_path, text):
    path = token_file(tmp_path, text)
    for argv in in_every_form(tmp_path, "http_token", path):
        assert config("m", *argv).http == HTTPSettings(token_file=path), argv


def test_http_token_file_is_kept_as_an_absolute_path(tmp_path, monkeypatch):
    token_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert config("m", "--http-token", "token").http.token_file == str(tmp_path / "token")


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing"), "cannot read {path}: No such file or directory"),
    (lambda d: str(d), "cannot read {path}: Is a directory"),
    (lambda d: token_file(d) + "/token", "cannot read {path}: Not a directory"),
    (lambda d: token_file(d, ""), "{path} holds no token: its first line is empty"),
    (lambda d: token_file(d, "\n"), "{path} holds no token: its first line is empty"),
    (lambda d: token_file(d, " \t \ns3cret\n"), "{path} holds no token: its first line is empty"),
    (lambda d: (d / "bin").write_bytes(b"\xff\xfe\n") and str(d / "bin"),
     "{path} does not hold a token: its first line is not text"),
])
def test_bad_http_token_files(tmp_path, make, message):
    path = make(tmp_path)
    for argv, where in zip(in_every_form(tmp_path, "http_token", path),
                           ["--http-token: ", "-o http_token: ", "streamfs.toml: http_token: "]):
        with pytest.raises(ConfigError) as error:
            config("m", *argv)
        assert str(error.value).endswith(where + message.format(path=path)), argv


def test_unreadable_http_token_file(tmp_path, unprivileged_user):
    # As another user: root reads any file.
    path = token_file(tmp_path)
    os.chmod(path, 0)
    result = as_user(unprivileged_user, *CLI, "/nonexistent", "--http", "8000",
                     "--http-token", path)
    assert result.returncode == 2
    assert result.stderr.endswith(f"--http-token: cannot read {path}: Permission denied\n")


def test_http_read_only(tmp_path):
    assert config("m", "--http-read-only").http.read_only is True
    assert config("m", "-o", "http_read_only").http.read_only is True
    on = write_config(tmp_path, f"{SECTION}http_read_only = true\n")
    assert config("m", "--config", on).http.read_only is True
    off = write_config(tmp_path, f"{SECTION}http_read_only = false\n")
    assert config("m", "--config", off).http.read_only is False
    assert config("m", "--config", off, "-o", "http_read_only").http.read_only is True
    assert config("m", "--config", off, "--http-read-only").http.read_only is True
    assert config("m").http.read_only is False


def test_http_precedence_flags_over_o_over_file(tmp_path):
    path = write_config(tmp_path, f'{SECTION}http = "127.0.0.1:1"\nhttp_read_only = true\n')
    assert config("m", "--config", path).http == HTTPSettings((("127.0.0.1", 1),),
                                                              read_only=True)
    # A source that gives addresses replaces a lower one's, rather than adding to them.
    assert config("m", "--config", path, "-o", "http=:2").http.addresses == (("127.0.0.1", 2),)
    assert config("m", "--config", path, "-o", "http=:2", "--http=3").http.addresses == (
        ("127.0.0.1", 3),)


def test_http_may_be_given_more_than_once(tmp_path):
    both = (("127.0.0.1", 1), "/run/streamfs.sock")
    assert config("m", "--http=:1", "--http", "unix:/run/streamfs.sock").http.addresses == both
    assert config("m", "-o", "http=:1,http=unix:/run/streamfs.sock").http.addresses == both
    toml = write_config(tmp_path, f'{SECTION}http = ["1", "unix:/run/streamfs.sock"]\n')
    assert config("m", "--config", toml).http.addresses == both
    assert config("m", "--config", write_config(tmp_path, f"{SECTION}http = []\n")).http == (
        HTTPSettings())


def test_http_in_two_o_arguments_adds_up():
    """mount(8) joins every -o into one list."""
    assert config("m", "-o", "http=:1", "-o", "http=unix:/run/streamfs.sock").http.addresses == (
        ("127.0.0.1", 1), "/run/streamfs.sock")


@pytest.mark.parametrize("text, path", [
    ("unix:/run/streamfs.sock", "/run/streamfs.sock"),
    ("unix:/run//streamfs/./http.sock", "/run/streamfs/http.sock"),
    ("unix:/" + "s" * 106, "/" + "s" * 106),
])
def test_http_unix_sockets(tmp_path, text, path):
    for argv in in_every_form(tmp_path, "http", text):
        assert config("m", *argv).http.addresses == (path,), argv
    # A Unix socket is not on a network: it needs no token.
    assert config("m", "--http", text).http.token_file is None


@pytest.mark.parametrize("text", ["unix:streamfs.sock", "unix:./s.sock", "unix:", "unix:~/s.sock",
                                  "unix:/" + "s" * 107, "unix:/run/a\0b"])
def test_bad_http_unix_sockets_are_one_line_errors(tmp_path, text):
    message = (f"{text!r}: a Unix socket needs an absolute path of at most 107 bytes, "
               "as unix:/run/streamfs.sock")
    for argv, where in zip(in_every_form(tmp_path, "http", text),
                           ["--http: ", "-o http: ", "streamfs.toml: http: "]):
        if "\0" in text and argv[0] == "--config":
            continue  # TOML cannot hold a NUL in a string
        with pytest.raises(ConfigError) as error:
            config("m", *argv)
        assert str(error.value).endswith(where + message), argv


@pytest.mark.parametrize("text, count", [("1", 1), ("64", 64), (" 100000 ", 100000)])
def test_http_max_connections(tmp_path, text, count):
    for argv in in_every_form(tmp_path, "http_max_connections", text):
        assert config("m", *argv).http.max_connections == count, argv
    assert config("m").http.max_connections is None  # derived from the descriptor limit


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "many", "", "1e3"])
def test_bad_http_max_connections(tmp_path, text):
    for argv, where in zip(in_every_form(tmp_path, "http_max_connections", text),
                           ["--http-max-connections: ", "-o http_max_connections: ",
                            "streamfs.toml: http_max_connections: "]):
        with pytest.raises(ConfigError) as error:
            config("m", *argv)
        assert where + "expected a whole number above 0" in str(error.value), argv


@pytest.mark.parametrize("text, seconds", [("5", 5.0), ("0.5", 0.5), ("2m", 120.0),
                                           ("90s", 90.0)])
def test_http_body_timeout(tmp_path, text, seconds):
    for argv in in_every_form(tmp_path, "http_body_timeout", text):
        assert config("m", *argv).http.body_timeout == seconds, argv
    assert config("m").http.body_timeout == 60.0


@pytest.mark.parametrize("text, message", [
    ("0", "expected a number of seconds above 0"),
    ("-5", "'-5' is not a time"),
    ("soon", "'soon' is not a time"),
])
def test_bad_http_body_timeout(text, message):
    with pytest.raises(ConfigError, match=f"^--http-body-timeout: {message}"):
        config("m", f"--http-body-timeout={text}")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o700 | 0o004])
def test_http_token_file_others_may_read_or_write_is_refused(tmp_path, mode):
    path = token_file(tmp_path, mode=mode)
    for argv, where in zip(in_every_form(tmp_path, "http_token", path),
                           ["--http-token: ", "-o http_token: ", "streamfs.toml: http_token: "]):
        with pytest.raises(ConfigError) as error:
            config("m", *argv)
        assert str(error.value).endswith(
            f"{where}{path} is readable or writable by others (mode {mode:o}): "
            f"run chmod 600 {path}"), argv


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o200])
def test_http_token_file_only_its_owner_may_read_is_accepted(tmp_path, mode):
    path = token_file(tmp_path, mode=mode)
    assert config("m", "--http-token", path).http.token_file == path


@pytest.mark.parametrize("text, shown", [
    ("0.0.0.0:8000", "0.0.0.0:8000"),
    ("[::]:8000", "[::]:8000"),
    ("192.168.1.10:80", "192.168.1.10:80"),
    ("[2001:db8::1]:80", "[2001:db8::1]:80"),
    ("example.com:443", "example.com:443"),
    ("localhost.example.com:80", "localhost.example.com:80"),
    ("128.0.0.1:80", "128.0.0.1:80"),
])
def test_http_off_loopback_needs_a_token(tmp_path, text, shown):
    message = (f"^--http {shown} is not loopback: give --http-token FILE "
               f"so that requests must carry a bearer token$")
    for argv in in_every_form(tmp_path, "http", text):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            config("m", *argv)
        assert config("m", *argv, "--http-token", token_file(tmp_path)).http.token_file


@pytest.mark.parametrize("text", ["127.0.0.1:80", "127.255.255.254:80", "localhost:80",
                                  "localhost.:80", "[::1]:80", ":80", "80"])
def test_http_on_loopback_needs_no_token(text):
    assert config("m", f"--http={text}").http.token_file is None


def test_http_token_rule_applies_across_sources(tmp_path):
    path = write_config(tmp_path, f'{SECTION}http = "0.0.0.0:80"\n')
    with pytest.raises(ConfigError, match="is not loopback"):
        config("m", "--config", path)
    token = token_file(tmp_path)
    assert config("m", "--config", path, "-o", f"http_token={token}").http == HTTPSettings(
        (("0.0.0.0", 80),), token)
    # A loopback flag overrides the file's address, so no token is needed.
    assert config("m", "--config", path, "--http=:80").http.addresses == (("127.0.0.1", 80),)
    # One address off loopback among several is enough to need the token.
    with pytest.raises(ConfigError, match="--http 0.0.0.0:80 is not loopback"):
        config("m", "--http=:80", "--http=unix:/run/s.sock", "--http=0.0.0.0:80")


def test_http_help_says_off_and_loopback():
    help_text = " ".join(build_parser().format_help().split())
    assert "--http HOST:PORT|unix:PATH" in help_text
    assert "may be given more than once" in help_text
    assert "(default: off; when on, HOST defaults to 127.0.0.1, loopback only)" in help_text
    assert "--http-read-only refuse" in help_text
    assert "http=, http_token=, http_read_only," in help_text


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


@pytest.mark.parametrize("argv, fragment", [
    (["--http", "abc"], "--http: 'abc' is not HOST:PORT"),
    (["-o", "http=70000"], "-o http: port 70000 in '70000' is not in 0..65535"),
    (["--http", "0.0.0.0:8000"], "--http 0.0.0.0:8000 is not loopback: give --http-token FILE "
                                 "so that requests must carry a bearer token"),
    (["--http=:0", "--http-token", "/nonexistent/token"],
     "--http-token: cannot read /nonexistent/token: No such file or directory"),
    (["-o", "http_read_only=yes"], "-o http_read_only=yes: http_read_only takes no value"),
    (["--http", "unix:streamfs.sock"], "--http: 'unix:streamfs.sock': a Unix socket needs an "
                                       "absolute path"),
    (["--http=:0", "--http-max-connections=0"], "--http-max-connections: expected a whole "
                                                "number above 0, got 0"),
    (["--http=:0", "--http-body-timeout=never"], "--http-body-timeout: 'never' is not a time"),
])
def test_cli_bad_http_settings(tmp_path, argv, fragment):
    assert_one_line_error(run_cli(tmp_path, *argv), fragment, 2)


def test_cli_token_file_others_may_read_is_refused(tmp_path):
    path = token_file(tmp_path, mode=0o644)
    assert_one_line_error(run_cli(tmp_path, "--http=:0", "--http-token", path),
                          f"--http-token: {path} is readable or writable by others (mode 644): "
                          f"run chmod 600 {path}", 2)


def test_cli_bad_http_config_file(tmp_path):
    path = write_config(tmp_path, f'{SECTION}http_read_only = "yes"\n')
    assert_one_line_error(run_cli(tmp_path, "--config", path),
                          "http_read_only: expected true or false, got 'yes'", 2)


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


def test_cli_daemon_returns_when_mounted_and_exits_on_unmount(tmp_path, fuse_device):
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


def test_agfs_path_comes_from_the_toml_plugin_path(tmp_path):
    def parse(path):
        return config("mnt", "--config", path)

    toml = tmp_path / "agfs.toml"
    toml.write_text('[plugins.streamfs]\npath = "/media/live"\n')
    assert parse(str(toml)).http.agfs_path == "/media/live"
    assert MountConfig("m").http.agfs_path == "/streamfs"
    toml.write_text('[plugins.streamfs]\npath = "/a/../b"\n')
    with pytest.raises(ConfigError, match="plugins.streamfs.path: expected an absolute path"):
        parse(str(toml))


def test_the_settings_load_no_door_and_no_store():
    """settings.py declares every setting with no dependency on FUSE, HTTP or Redis."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, streamfs_fuse.settings; print(sorted({m.split('.')[0] "
         "for m in sys.modules} & {'h11', 'coredis', 'pyfuse3', 'prometheus_client'}))"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_readme_configuration_table_names_every_setting():
    """The README's table is written by hand: every setting must be in it, flag and -o name."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Semantics")]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    missing = [s.flag for s in SETTINGS
               if not any(f"`{s.flag}" in row and s.name in row for row in rows)]
    assert missing == []
