"""The ``streamfs-fuse`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from dataclasses import replace

from .config import (
    ConfigError, MountConfig, StreamSettings, apply_settings, load_config_file,
    parse_mount_options, parse_policy, parse_size,
)
from .mount import MountError, mount

__all__ = ["main"]

DESCRIPTION = """\
Mount a file system in which every file is a live byte stream. Writers
append; every reader that has the file open gets each chunk written after it
opened, after the recent history kept in a ring buffer; readers wait for new
data; rm ends the stream and every reader gets EOF.
"""

EPILOG = """\
sizes take bytes or units KB, MB, GB (1024-based; KiB, MiB, GiB too): 512KB, 1.5MB, 524288.
-o options: channel_buffer_size=, ring_buffer_size=, slow_reader=, max_memory=, allow_other,
default_permissions, fsname=, subtype= and the usual mount(8) flags.
precedence: flags > -o > --config file > defaults.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamfs-fuse", description=DESCRIPTION, epilog=EPILOG,
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
    parser.add_argument("--channel-buffer-size", metavar="SIZE",
                        help="bytes queued per reader before the slow-reader policy applies"
                        " (default 6MB)")
    parser.add_argument("--ring-buffer-size", metavar="SIZE",
                        help="bytes of recent history replayed to new readers (default 6MB)")
    parser.add_argument("--slow-reader", metavar="POLICY", choices=["drop", "block", "disconnect"],
                        help="what happens to a reader whose buffer is full: drop (it misses "
                        "chunks; default), block (writers wait), disconnect (it is cut off)")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="cap on the data queued for all readers of the mount; over it, "
                        "the readers furthest behind lose their oldest data first (default: none)")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('streamfs-fuse')}")
    return parser


def config_from_args(args: argparse.Namespace) -> MountConfig:
    settings = StreamSettings()
    if args.config:
        settings = apply_settings(settings, load_config_file(args.config),
                                  f"config file {args.config}:")
    fuse_options: set[str] = set()
    for text in args.options:
        values, fuse = parse_mount_options(text)
        settings = apply_settings(settings, values, "-o")
        fuse_options |= fuse
    flags = {}
    if args.channel_buffer_size is not None:
        flags["channel_buffer_size"] = parse_size(args.channel_buffer_size, "--channel-buffer-size")
    if args.ring_buffer_size is not None:
        flags["ring_buffer_size"] = parse_size(args.ring_buffer_size, "--ring-buffer-size")
    if args.max_memory is not None:
        flags["max_memory"] = parse_size(args.max_memory, "--max-memory")
    if args.slow_reader is not None:
        flags["slow_reader"] = parse_policy(args.slow_reader, "--slow-reader")
    settings = replace(settings, **flags)
    if args.source and not any(o.startswith("fsname=") for o in fuse_options):
        fuse_options.add(f"fsname={args.source}")
    return MountConfig(
        mountpoint=args.mountpoint, settings=settings, fuse_options=fuse_options,
        foreground=args.foreground or args.debug, debug=args.debug, verbosity=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
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
