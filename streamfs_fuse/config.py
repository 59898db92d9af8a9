"""Mount configuration from defaults, a TOML file, -o options and flags.

Precedence, highest first: command-line flags, ``-o`` options, the config
file, the defaults. Every problem is a :class:`ConfigError` with one line that
says what is wrong and where.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import humanfriendly
from humanfriendly.text import tokenize

from .budget import physical_memory
from .stream import SlowReaderPolicy, StreamSettings

__all__ = ["ConfigError", "MountConfig", "Setting", "SETTINGS", "parse_size",
           "parse_mount_options", "load_config_file"]


class ConfigError(Exception):
    """Bad configuration; the message is shown to the user as it is."""


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


def parse_size(value: Any, what: str, *, minimum: int) -> int:
    """A whole byte count from ``512KB``, ``1.5MiB``, ``524288`` or an integer.

    KB, MB and GB are 1024-based, as in AGFS's streamfs. The count must be at
    least ``minimum`` and at most the machine's physical memory.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what}: expected a size such as 512KB or 1048576, got {value!r}")
    size = value
    if isinstance(value, str):
        value = value.strip()
        try:
            size = humanfriendly.parse_size(value, binary=True)
        except humanfriendly.InvalidSize:
            raise ConfigError(
                f"{what}: {value!r} is not a size (use bytes or KB, MB, GB, e.g. 512KB)"
            ) from None
        # parse_size truncates: '1.5' gives 1 and '0.5B' gives 0.
        number, *unit = tokenize(value)
        if number * humanfriendly.parse_size(f"1 {unit[0]}" if unit else "1", binary=True) != size:
            raise ConfigError(f"{what}: {value!r} is not a whole number of bytes")
    if size < minimum:
        raise ConfigError(f"{what}: must be at least {minimum}, got {value}")
    memory = physical_memory()
    if size > memory:
        raise ConfigError(f"{what}: {value} is more than this machine's memory "
                          f"({humanfriendly.format_size(memory, binary=True)})")
    return size


def parse_policy(value: Any, what: str) -> SlowReaderPolicy:
    try:
        return SlowReaderPolicy(value)
    except ValueError:
        choices = ", ".join(p.value for p in SlowReaderPolicy)
        raise ConfigError(f"{what}: {value!r} is not one of {choices}") from None


def show(value: Any) -> str:
    """A default as the user would write it: ``6MB``, ``drop``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, SlowReaderPolicy):
        return value.value
    for unit, divider in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if value and value % divider == 0:
            return f"{value // divider}{unit}"
    return str(value)


_DEFAULTS = {f.name: f.default for f in fields(StreamSettings)}


@dataclass(frozen=True)
class Setting:
    """One field of :class:`StreamSettings`: how to parse it and describe it."""

    #: As named in -o options and the TOML file; the flag has dashes.
    name: str
    #: ``parse(value, what)`` returns the value or raises :class:`ConfigError`.
    parse: Callable[[Any, str], Any]
    help: str
    metavar: str = "SIZE"
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.name]


#: The stream settings, in the order of the StreamSettings fields.
SETTINGS = (
    Setting("channel_buffer_size", partial(parse_size, minimum=1),
            "bytes queued per reader before the slow-reader policy applies"),
    Setting("ring_buffer_size", partial(parse_size, minimum=0),
            "bytes of recent history replayed to new readers; 0 keeps none"),
    Setting("slow_reader", parse_policy,
            "what happens to a reader whose buffer is full; drop: it misses chunks, "
            "block: writers wait, disconnect: it is cut off",
            metavar="POLICY", choices=tuple(p.value for p in SlowReaderPolicy)),
    Setting("max_memory", partial(parse_size, minimum=1),
            "cap on the data queued for all readers of the mount; over it, "
            "the readers furthest behind lose their oldest data first"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

def parse_mount_options(text: str) -> tuple[dict[str, Any], set[str]]:
    """Split ``-o a=1,b,...`` into parsed stream settings and FUSE options."""
    settings: dict[str, Any] = {}
    fuse: set[str] = set()
    for option in filter(None, (o.strip() for o in text.split(","))):
        key, has_value, value = option.partition("=")
        if key in SETTINGS_BY_NAME and has_value:
            settings[key] = SETTINGS_BY_NAME[key].parse(value, f"-o {key}")
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
    """The parsed ``[plugins.streamfs.config]`` settings of an AGFS-style TOML file."""
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
    unknown = set(values) - set(SETTINGS_BY_NAME)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key plugins.streamfs.config.{sorted(unknown)[0]}"
        )
    return {key: SETTINGS_BY_NAME[key].parse(value, f"config file {path}: {key}")
            for key, value in values.items()}
