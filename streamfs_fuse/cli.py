"""The ``streamfs-fuse`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
import textwrap
from typing import Any

from .settings import (SETTINGS, ConfigError, MountConfig, load_config_file, parse_mount_options,
                       sections_from, show, validate)
from .mount import MountError, mount

__all__ = ["main"]

DESCRIPTION = """\
Mount a file system in which every file is a live byte stream. Writers
append; every reader that has the file open gets each chunk written after it
opened, after the recent history kept in a ring buffer; readers wait for new
data; rm ends the stream and every reader gets EOF.
"""

EPILOG = f"""\
sizes take whole bytes or units KB, MB, GB (1024-based; KiB, MiB, GiB too): 512KB, 1.5MB,
524288; at most the machine's memory.
{textwrap.fill("-o options: " + "".join(f"{s.name}{'' if s.switch else '='}, " for s in SETTINGS)
               + "allow_other, "
               "default_permissions, fsname=, subtype= and the usual mount(8) flags.", 92)}
precedence: flags > -o > --config file > defaults.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamfs-fuse", description=DESCRIPTION, epilog=EPILOG,
        usage="%(prog)s [options] [source] mountpoint\n       %(prog)s status MOUNTPOINT "
              "[--once] (what the streams are doing; see streamfs-fuse status --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", nargs="?", help="name shown as the file system's source "
                        "(as passed by mount(8); sets fsname)")
    parser.add_argument("mountpoint", help="an empty directory to mount on")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground and log to stderr")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="log every FUSE request (implies -f)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: streams and readers, -vv: everything)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                        help="mount options, as with mount(8)")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file with [plugins.streamfs.config] settings (AGFS layout)")
    for s in SETTINGS:
        if s.switch:
            # None when absent, so that -o and the config file still apply.
            parser.add_argument(s.flag, action="store_true", default=None, help=s.help)
        else:
            parser.add_argument(s.flag, metavar=s.metavar, choices=s.choices,
                                action="append" if s.repeat else "store",
                                help=f"{s.help} (default: {s.shown_default or show(s.default)})")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('streamfs-fuse')}")
    return parser


def config_from_args(args: argparse.Namespace) -> MountConfig:
    # Parsed values by setting name; later sources override earlier ones.
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    # mount(8) joins every -o into one list: the values of a repeatable
    # setting (--http) add up across them.
    options, fuse_options = parse_mount_options(",".join(args.options))
    values.update(options)
    values.update({s.name: s.parse(value, s.flag)
                   for s in SETTINGS if (value := getattr(args, s.name)) is not None})
    if args.source and not any(o.startswith("fsname=") for o in fuse_options):
        fuse_options.add(f"fsname={args.source}")
    config = MountConfig(
        mountpoint=args.mountpoint, **sections_from(values), fuse_options=fuse_options,
        foreground=args.foreground or args.debug, debug=args.debug, verbosity=args.verbose,
    )
    validate(config)
    return config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # streamfs-fuse status MOUNTPOINT: see status.py
        from .status import main as status
        return status(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as e:
        parser.exit(2, f"streamfs-fuse: error: {e}\n")
    try:
        return mount(config)
    except MountError as e:
        logging.shutdown()
        print(f"streamfs-fuse: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
