"""Mount configuration from defaults, a TOML file, -o options and flags.

Precedence, highest first: command-line flags, ``-o`` options, the config
file, the defaults. Every problem is a :class:`ConfigError` with one line that
says what is wrong and where.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

import humanfriendly

from .stream import SlowReaderPolicy, StreamSettings

__all__ = ["ConfigError", "MountConfig", "parse_size", "parse_mount_options", "load_config_file"]


class ConfigError(Exception):
    """Bad configuration; the message is shown to the user as it is."""


#: The stream settings, as named in -o options and the TOML file.
SETTING_KEYS = ("channel_buffer_size", "ring_buffer_size", "slow_reader", "max_memory")

#: -o options handed to FUSE as they are.
FUSE_FLAGS = frozenset({
    "allow_other", "allow_root", "default_permissions", "auto_unmount",
    "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
    "sync", "async", "atime", "noatime", "nodiratime", "dirsync",
})
FUSE_VALUED = frozenset({"fsname", "subtype", "max_read"})
#: -o options that only mean something to mount(8) or fstab; accepted and ignored.
MOUNT_ONLY_FLAGS = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users",
                              "_netdev", "nofail", "owner", "group"})


@dataclass
class MountConfig:
    mountpoint: str
    settings: StreamSettings = field(default_factory=StreamSettings)
    #: Options for FUSE, such as ``allow_other`` or ``fsname=streamfs``.
    fuse_options: set[str] = field(default_factory=set)
    foreground: bool = False
    debug: bool = False
    verbosity: int = 0


def parse_size(value: Any, what: str) -> int:
    """A positive byte count from ``512KB``, ``1.5MiB``, ``524288`` or an integer.

    KB, MB and GB are 1024-based, as in AGFS's streamfs.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what}: expected a size such as 512KB or 1048576, got {value!r}")
    if isinstance(value, str):
        try:
            value = humanfriendly.parse_size(value.strip(), binary=True)
        except humanfriendly.InvalidSize:
            raise ConfigError(
                f"{what}: {value!r} is not a size (use bytes or KB, MB, GB, e.g. 512KB)"
            ) from None
    if value <= 0:
        raise ConfigError(f"{what}: must be greater than zero, got {value}")
    return value


def parse_policy(value: Any, what: str) -> SlowReaderPolicy:
    try:
        return SlowReaderPolicy(value)
    except ValueError:
        choices = ", ".join(p.value for p in SlowReaderPolicy)
        raise ConfigError(f"{what}: {value!r} is not one of {choices}") from None


def parse_setting(key: str, value: Any, what: str) -> Any:
    if key == "slow_reader":
        return parse_policy(value, what)
    return parse_size(value, what)


def apply_settings(settings: StreamSettings, values: dict[str, Any], what: str) -> StreamSettings:
    parsed = {k: parse_setting(k, v, f"{what} {k}") for k, v in values.items()}
    return replace(settings, **parsed)


def parse_mount_options(text: str) -> tuple[dict[str, str], set[str]]:
    """Split ``-o a=1,b,...`` into stream settings and FUSE options."""
    settings: dict[str, str] = {}
    fuse: set[str] = set()
    for option in filter(None, (o.strip() for o in text.split(","))):
        key, has_value, value = option.partition("=")
        if key in SETTING_KEYS and has_value:
            settings[key] = value
        elif key in FUSE_VALUED and has_value and value:
            fuse.add(option)
        elif key in FUSE_FLAGS and not has_value:
            fuse.add(key)
        elif key in MOUNT_ONLY_FLAGS or key.startswith("x-") or key == "comment":
            continue
        else:
            raise ConfigError(f"-o {option}: unknown mount option")
    return settings, fuse


def load_config_file(path: str) -> dict[str, Any]:
    """The ``[plugins.streamfs.config]`` settings of an AGFS-style TOML file."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    section = document.get("plugins", {}).get("streamfs")
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path} has no [plugins.streamfs] section")
    unknown = set(section) - {"enabled", "path", "config"}
    if unknown:
        raise ConfigError(f"config file {path}: unknown key plugins.streamfs.{sorted(unknown)[0]}")
    if section.get("enabled", True) is not True:
        raise ConfigError(f"config file {path}: plugins.streamfs.enabled is not true")
    if not isinstance(section.get("path", ""), str):
        raise ConfigError(f"config file {path}: plugins.streamfs.path must be a string")
    values = section.get("config", {})
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: plugins.streamfs.config must be a table")
    unknown = set(values) - set(SETTING_KEYS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key plugins.streamfs.config.{sorted(unknown)[0]}"
        )
    # Validate now, so the error names the file.
    for key, value in values.items():
        parse_setting(key, value, f"config file {path}: {key}")
    return values
