"""Mount configuration from defaults, a TOML file, -o options and flags.

Precedence, highest first: command-line flags, ``-o`` options, the config
file, the defaults. Every problem is a :class:`ConfigError` with one line that
says what is wrong and where.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import humanfriendly
from humanfriendly.text import tokenize


__all__ = ["BackendSettings", "ConfigError", "MountConfig", "Setting", "SETTINGS", "parse_size",
           "parse_address", "parse_token_file", "parse_switch", "parse_mount_options", "load_config_file",
           "sections_from", "validate", "read_secret", "HTTPSettings",
           "token_in_the_clear", "Join", "SlowReaderPolicy", "StreamSettings", "physical_memory"]


def physical_memory() -> int:
    """The machine's memory, in bytes: no cap or buffer can usefully be larger."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class SlowReaderPolicy(enum.Enum):
    """What a write does for a reader whose buffer cannot take the chunk."""

    #: The reader misses the chunk; writers and other readers never wait.
    DROP = "drop"
    #: The write waits until every reader has room: lossless, like a pipe.
    BLOCK = "block"
    #: The reader is cut off; its next read fails.
    DISCONNECT = "disconnect"


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Join:
    """Where a reader that opens starts in the stream's history.

    ``ring``: the whole ring; ``keyframe``: the newest keyframe in the ring,
    with the PAT and PMT in front (MPEG-TS; other streams get the whole ring;
    an MPEG-TS stream with no keyframe in its ring starts live); ``live``: no
    history; ``seconds`` back (``10s``): history written in that time, from
    a keyframe at least that old for MPEG-TS.
    """

    where: str = "ring"
    seconds: float = 0.0

    WHERE = ("ring", "keyframe", "live")

    @classmethod
    def parse(cls, text: str) -> Join:
        """``ring``, ``keyframe``, ``live`` or a duration (``10s``, ``1.5m``, ``500ms``)."""
        text = text.strip().lower()
        if text in cls.WHERE:
            return cls(text)
        match = _DURATION.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not ring, keyframe, live or a duration such as 10s")
        return cls("back", float(match[1]) * _SECONDS[match[2] or "s"])

    def __str__(self) -> str:
        return self.where if self.where != "back" else f"{self.seconds:g}s"


@dataclass(frozen=True)
class StreamSettings:
    """How a mount's streams behave; ``max_memory`` is one cap shared by all."""

    channel_buffer_size: int = 6 * 1024 * 1024
    ring_buffer_size: int = 6 * 1024 * 1024
    slow_reader: SlowReaderPolicy = SlowReaderPolicy.DROP
    max_memory: int | None = None
    join: Join = Join()


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


@dataclass(frozen=True)
class BackendSettings:
    """Where a mount's streams are shared: ``url`` None keeps them in this process.

    Declared here, not in stores/redis, so that a mount without a backend
    never imports coredis (0.6 s).
    """

    url: str | None = None
    namespace: str = "streamfs"
    password_file: str | None = None
    #: How long a write waits for an unreachable Redis before it fails with EIO.
    timeout: float = 10.0


@dataclass(frozen=True)
class HTTPSettings:
    """Whether and how the daemon serves its streams over HTTP (see http.py)."""

    #: Where to listen: ``(host, port)`` for TCP, an absolute path for a Unix
    #: socket; none serves no HTTP.
    addresses: tuple[tuple[str, int] | str, ...] = ()
    #: A file holding the bearer token; a request carrying it acts as the file's owner.
    token_file: str | None = None
    #: Refuse PUT, POST and DELETE with 403.
    read_only: bool = False
    #: Where the tree appears in the AGFS API: AGFS's mount path (see agfs.py).
    agfs_path: str = "/streamfs"
    #: Connections served at once; None derives it from the descriptor limit.
    max_connections: int | None = None
    #: An upload that sends nothing for this long is ended (what arrived is kept).
    body_timeout: float = 60.0
    #: TLS: the certificate chain and its private key (PEM); both or neither.
    cert_file: str | None = None
    key_file: str | None = None
    #: Refuse to start when a token would travel off loopback without TLS.
    require_tls: bool = False
    #: ``GET /metrics`` answers anonymous requests (nobody) too.
    metrics_public: bool = False
    #: Series per stream (labelled by path); False reports totals only.
    metrics_per_stream: bool = True
    #: Past this many streams, /metrics reports totals only (a bounded label set).
    metrics_max_streams: int = 1000


@dataclass
class MountConfig:
    mountpoint: str
    settings: StreamSettings = field(default_factory=StreamSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
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


def parse_join(value: Any, what: str) -> Join:
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected ring, keyframe, live or a duration such as "
                          f"'10s', got {value!r}")
    try:
        return Join.parse(value)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_address(value: Any, what: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT``.

    Without a host it is 127.0.0.1. Port 0 lets the system pick a free port.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected HOST:PORT such as 127.0.0.1:8000, got {value!r}")
    text = value.strip()
    bad = f"{what}: {value!r} is not HOST:PORT"
    if bracketed := re.fullmatch(r"\[([^]]*)\]:([^:]*)", text):
        host, port = bracketed.groups()
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigError(bad) from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            host, port = "", text
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(bad) from None
            raise ConfigError(f"{bad} (put an IPv6 address in brackets: [::1]:8000)")
        if not host:
            host = "127.0.0.1"
        elif re.fullmatch(r"[0-9.]+", host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ConfigError(bad) from None
        elif not _HOSTNAME.fullmatch(host) or len(host) > 253:
            raise ConfigError(bad)
    if not re.fullmatch(r"[0-9]{1,5}", port):
        raise ConfigError(bad)
    if int(port) > 65535:
        raise ConfigError(f"{what}: port {port} in {value!r} is not in 0..65535")
    return host, int(port)


def parse_addresses(value: Any, what: str) -> tuple[tuple[str, int] | str, ...]:
    """One address or several (a list, or the flag given more than once).

    ``unix:PATH`` is a Unix socket at the absolute PATH; anything else is
    ``HOST:PORT`` as :func:`parse_address` reads it.
    """
    values = value if isinstance(value, list) else [value]
    addresses: list[tuple[str, int] | str] = []
    for item in values:
        if isinstance(item, str) and item.startswith("unix:"):
            path = item[len("unix:"):]
            if not path.startswith("/") or "\0" in path or len(os.fsencode(path)) > 107:
                raise ConfigError(f"{what}: {item!r}: a Unix socket needs an absolute path "
                                  "of at most 107 bytes, as unix:/run/streamfs.sock")
            addresses.append(os.path.normpath(path))
        else:
            addresses.append(parse_address(item, what))
    return tuple(addresses)


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_secret(path: str) -> str:
    """The first line of ``path``, stripped: how every token and password file is read.

    Raises OSError if the file cannot be read, ValueError if its first line is
    not text or is empty.
    """
    with open(path, "rb") as f:
        first = f.readline(1 << 16)
    try:
        secret = first.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} does not hold a token: its first line is not text") from None
    if not secret:
        raise ValueError(f"{path} holds no token: its first line is empty")
    return secret


def parse_token_file(value: Any, what: str) -> str:
    """The absolute path of a readable file whose first line is a token or password.

    Absolute because the daemon changes to / before it reads the file.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what}: expected the path of a file holding a token, got {value!r}")
    try:
        read_secret(value)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {value}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None
    return os.path.abspath(value)


def parse_http_token_file(value: Any, what: str) -> str:
    """A token file as :func:`parse_token_file`, that only its owner can read.

    Its owner is who a request carrying the token acts as, so a token that
    others can read would let them act as that owner (ssh refuses such keys too).
    """
    path = parse_token_file(value, what)
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise ConfigError(f"{what}: {path} is readable or writable by others (mode "
                          f"{mode & 0o777:o}): run chmod 600 {path}")
    return path


def parse_pem_file(value: Any, what: str) -> str:
    """The absolute path of a readable file (a PEM certificate or key)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what}: expected the path of a PEM file, got {value!r}")
    try:
        with open(value, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {value}: {e.strerror}") from None
    return os.path.abspath(value)


def parse_yes_no(value: Any, what: str) -> bool:
    """``yes`` or ``no`` (a flag's or -o's value), or a TOML boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return value.strip().lower() == "yes"
    raise ConfigError(f"{what}: expected yes or no, got {value!r}")


def parse_count(value: Any, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: expected a whole number above 0, got {value!r}")
    return value


def parse_switch(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what}: expected true or false, got {value!r}")
    return value


def show(value: Any) -> str:
    """A default as the user would write it: ``6MB``, ``drop``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SlowReaderPolicy):
        return value.value
    for unit, divider in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if isinstance(value, int) and value and value % divider == 0:
            return f"{value // divider}{unit}"
    return str(value)


#: The settings dataclasses, by the name of their :class:`MountConfig` field.
SECTIONS: dict[str, type] = {"settings": StreamSettings, "http": HTTPSettings,
                             "backend": BackendSettings}

BACKEND_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def parse_backend(value: Any, what: str) -> str:
    """A Redis URL: redis://, rediss://, unix:// or redis+cluster://H1:P1,H2:P2."""
    scheme = value.partition("://")[0] if isinstance(value, str) else ""
    if scheme not in BACKEND_SCHEMES or not value.partition("://")[2]:
        raise ConfigError(f"{what}: expected a URL such as redis://127.0.0.1:6379/0 or "
                          f"redis+cluster://h1:7000,h2:7000, got {value!r}")
    return value


def parse_key_prefix(value: Any, what: str) -> str:
    if (not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value)):
        raise ConfigError(f"{what}: expected a name of letters, digits, '.', '_' or '-', "
                          f"got {value!r}")
    return value


def parse_seconds(value: Any, what: str) -> float:
    given = value
    if isinstance(value, str):
        try:
            value = humanfriendly.parse_timespan(value.strip())
        except humanfriendly.InvalidTimespan:
            raise ConfigError(f"{what}: {value!r} is not a time (e.g. 10 or 10s)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        raise ConfigError(f"{what}: expected a number of seconds above 0, got {given!r}")
    return float(value)


def parse_agfs_path(value: Any, what: str) -> str:
    """An absolute path with no . or .. in it, such as /streamfs."""
    if (not isinstance(value, str) or not value.startswith("/")
            or any(name in (".", "..") for name in value.split("/")) or "\0" in value):
        raise ConfigError(f"{what}: expected an absolute path such as /streamfs, got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One field of a :data:`SECTIONS` dataclass: how to parse it and describe it."""

    #: As named in -o options and the TOML file; the flag has dashes.
    name: str
    #: ``parse(value, what)`` returns the value or raises :class:`ConfigError`.
    parse: Callable[[Any, str], Any]
    help: str
    metavar: str = "SIZE"
    choices: tuple[str, ...] | None = None
    #: The :class:`MountConfig` field holding the dataclass this setting belongs to.
    section: str = "settings"
    #: The dataclass field, when it is not named as the setting is.
    field: str = ""
    #: Takes no value: a flag without one, ``-o name``, ``name = true`` in TOML.
    switch: bool = False
    #: The default as the help shows it, when :func:`show` would not say it well.
    shown_default: str = ""
    #: May be given more than once; the values add up.
    repeat: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def attribute(self) -> str:
        return self.field or self.name

    @property
    def default(self) -> Any:
        return next(f.default for f in fields(SECTIONS[self.section]) if f.name == self.attribute)

    def get(self, config: MountConfig) -> Any:
        """This setting's value in ``config``."""
        return getattr(getattr(config, self.section), self.attribute)


#: Every setting, section by section, in the order of the dataclasses' fields.
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
            "cap on the memory the mount holds for its streams: rings, data queued for "
            "readers, bookkeeping; over it the oldest history goes first, then the "
            "oldest data of the readers furthest behind; at it new streams and readers "
            "get ENOSPC"),
    Setting("join", parse_join,
            "where a reader that opens starts: ring (all history), keyframe (the newest "
            "MPEG-TS keyframe in the ring, with PAT and PMT), live (no history), or a "
            "duration back such as 10s (from a keyframe for MPEG-TS)",
            metavar="ring|keyframe|live|DURATION"),
    Setting("http", parse_addresses,
            "also serve the streams over HTTP on HOST:PORT (:PORT or PORT alone means "
            "127.0.0.1:PORT, port 0 any free port; a HOST that is not loopback needs "
            "--http-token), or on the Unix socket unix:PATH, where each request acts as the "
            "connecting user; may be given more than once",
            metavar="HOST:PORT|unix:PATH", section="http", field="addresses", repeat=True,
            shown_default="off; when on, HOST defaults to 127.0.0.1, loopback only"),
    Setting("http_token", parse_http_token_file,
            "file (mode 600) whose first line is a token: a request that carries it as "
            "'Authorization: Bearer TOKEN' acts as the file's owner",
            metavar="FILE", section="http", field="token_file"),
    Setting("http_read_only", parse_switch,
            "refuse HTTP requests that write or remove streams (PUT, POST, DELETE)",
            section="http", field="read_only", switch=True),
    Setting("agfs_path", parse_agfs_path,
            "where the tree appears in the AGFS HTTP API under /api/v1 (AGFS's mount "
            "path; also the TOML's [plugins.streamfs] path)",
            metavar="PATH", section="http"),
    Setting("http_max_connections", parse_count,
            "HTTP connections served at once; past it the oldest idle one is closed, or the "
            "newcomer gets 503",
            metavar="N", section="http", field="max_connections",
            shown_default="the descriptor limit less an eighth (at least 64) for the rest"),
    Setting("http_body_timeout", parse_seconds,
            "an HTTP upload that sends nothing for this long is ended; what arrived is kept",
            metavar="SECONDS", section="http", field="body_timeout"),
    Setting("http_cert", parse_pem_file,
            "serve HTTPS on the TCP addresses with this certificate chain (PEM); needs "
            "--http-key", metavar="FILE", section="http", field="cert_file",
            shown_default="none: plain HTTP"),
    Setting("http_key", parse_pem_file,
            "the private key of --http-cert (PEM)",
            metavar="FILE", section="http", field="key_file"),
    Setting("http_require_tls", parse_switch,
            "refuse to start when a token would be sent off loopback without TLS (rather "
            "than warn)", section="http", field="require_tls", switch=True),
    Setting("metrics_public", parse_switch,
            "answer GET /metrics without a token too (as nobody: only streams others may "
            "read)", section="http", switch=True),
    Setting("metrics_per_stream", parse_yes_no,
            "report each stream's series in /metrics (labelled by path); no: totals only",
            metavar="yes|no", choices=("yes", "no"), section="http", shown_default="yes"),
    Setting("metrics_max_streams", parse_count,
            "past this many streams /metrics reports totals only, so the label set stays "
            "bounded", metavar="N", section="http"),
    Setting("backend", parse_backend,
            "share the tree and its streams with every mount that names the same Redis: "
            "redis://HOST:PORT/DB, rediss:// (TLS), unix://PATH, redis+cluster://H1:P1,H2:P2",
            metavar="URL", section="backend", field="url",
            shown_default="none: streams live in this process"),
    Setting("namespace", parse_key_prefix,
            "prefix of the backend's keys, so that several file systems share one Redis",
            metavar="NAME", section="backend"),
    Setting("backend_password_file", parse_token_file,
            "file whose first line is the Redis password (or put it in the URL)",
            metavar="FILE", section="backend", field="password_file"),
    Setting("backend_timeout", parse_seconds,
            "how long writes wait for an unreachable Redis before they fail with EIO",
            metavar="SECONDS", section="backend", field="timeout"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def sections_from(values: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SECTIONS` dataclasses, by section, from parsed values by setting name."""
    return {section: cls(**{s.attribute: values[s.name] for s in SETTINGS
                            if s.section == section and s.name in values})
            for section, cls in SECTIONS.items()}


def validate(config: MountConfig) -> None:
    """The rules across settings, which no single setting's parser can see."""
    if config.backend.url and config.settings.ring_buffer_size == 0:
        raise ConfigError("--ring-buffer-size 0 cannot work with --backend: the ring in Redis "
                          "is what every host reads the stream from")
    http = config.http
    tcp = any(not isinstance(address, str) for address in http.addresses)
    if tcp and (http.cert_file is None) != (http.key_file is None):
        raise ConfigError("--http-cert and --http-key go together: give both, or neither")
    for address in http.addresses:
        if not isinstance(address, str) and not is_loopback(address[0]) and not http.token_file:
            raise ConfigError(f"--http {format_address(address)} is not loopback: give "
                              f"--http-token FILE so that requests must carry a bearer token")
    if http.require_tls and (exposed := token_in_the_clear(http)):
        raise ConfigError(f"--http {exposed} is not loopback and serves plain HTTP, where the "
                          "token travels in the clear: give --http-cert and --http-key")


def token_in_the_clear(http: HTTPSettings) -> str | None:
    """An address off loopback where a token would travel over plain HTTP, if any."""
    if http.token_file is None or http.cert_file is not None:
        return None
    return next((format_address(a) for a in http.addresses
                 if not isinstance(a, str) and not is_loopback(a[0])), None)


def parse_mount_options(text: str) -> tuple[dict[str, Any], set[str]]:
    """Split ``-o a=1,b,...`` into parsed settings, by name, and FUSE options."""
    settings: dict[str, Any] = {}
    fuse: set[str] = set()
    for option in filter(None, (o.strip() for o in text.split(","))):
        key, has_value, value = option.partition("=")
        if (setting := SETTINGS_BY_NAME.get(key)) and setting.switch:
            if has_value:
                raise ConfigError(f"-o {option}: {key} takes no value")
            settings[key] = True
        elif setting and not has_value:
            raise ConfigError(f"-o {key}: needs a value, as in {key}={setting.metavar}")
        elif setting and setting.repeat:
            settings[key] = settings.get(key, ()) + setting.parse(value, f"-o {key}")
        elif setting:
            settings[key] = setting.parse(value, f"-o {key}")
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
    parsed = {key: SETTINGS_BY_NAME[key].parse(value, f"config file {path}: {key}")
              for key, value in values.items()}
    if "path" in section:  # AGFS's mount path, which the AGFS HTTP API serves
        parsed.setdefault("agfs_path", parse_agfs_path(
            section["path"], f"config file {path}: plugins.streamfs.path"))
    return parsed
