"""The benchmark's command line: ``python -m streamfs_fuse.bench --help``."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from . import __doc__ as DOC
from .common import Sizes
from .http import http_section, http_stalled_section
from .join import join_section
from .latency import latency_section
from .memory import drop_section, idle_section, memory_section, scale_section
from .redis import redis_section
from .report import HEADER, Report, plot
from .throughput import fanout_section, throughput_section

ROOT = Path(__file__).resolve().parents[2]

#: Every section, in the order a run measures them: each adds its rows to the report.
SECTIONS = {"throughput": throughput_section, "fanout": fanout_section,
            "latency": latency_section, "memory": memory_section, "scale": scale_section,
            "idle": idle_section, "drop": drop_section, "http": http_section,
            "http-stalled": http_stalled_section, "join": join_section, "redis": redis_section}


def run(args) -> Report:
    """The sections --only names (all by default), in order, printing the table.

    The redis section needs a Redis: it runs with --backend, or when --only
    names sections (it then starts a private redis-server); else it says so.
    """
    sizes = Sizes.quick() if args.quick else Sizes()
    only = set(args.only.split(",")) if args.only else None
    report = Report(repeats=args.repeats)
    report.sections = [name for name in SECTIONS if only is None or name in only]
    print(HEADER)
    for name in report.sections:
        if name == "redis" and not (only or args.backend):
            print("  (redis skipped: give --backend URL, or --only redis for a private"
                  " redis-server)", flush=True)
            continue
        report.begin(name)
        SECTIONS[name](report, sizes, args)
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streamfs_fuse.bench",
                                     description=DOC.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every workload in < 1 min")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload (median)")
    parser.add_argument("--only", help="comma-separated: " + ",".join(SECTIONS))
    parser.add_argument("--reference", metavar="'COMMAND {mnt}'",
                        help="another streaming FUSE daemon, measured in the same run beside"
                        " streamfs-fuse for throughput, fanout and latency: COMMAND is split at"
                        " whitespace, {mnt} becomes a fresh mountpoint, and it must stay in the"
                        " foreground (e.g. '../shared/fuse-limit/streamlimit -t 2 {mnt}');"
                        " the targets of those rows are ratios to it, and without it they are"
                        " reported only")
    parser.add_argument("--backend", metavar="URL",
                        help="the Redis of the redis section (default: a private redis-server)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results",
                        help="where results.json and bench.png go")
    parser.add_argument("--replot", type=Path, metavar="RESULTS_JSON",
                        help="only draw bench.png (in --out) from an earlier run's results.json")
    return parser


def replot(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    saved = Report(repeats=0, results=json.loads(args.replot.read_text())["results"])
    if not plot(saved, args.out / "bench.png"):
        print("bench: install the bench extra (matplotlib) to plot", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    args = parser().parse_args()
    if args.replot:
        return replot(args)
    unknown = set(args.only.split(",")) - set(SECTIONS) if args.only else set()
    if unknown:
        print(f"bench: no section {', '.join(sorted(unknown))} (--only takes"
              f" {','.join(SECTIONS)})", file=sys.stderr)
        return 2
    if not os.path.exists("/dev/fuse"):
        print("bench: /dev/fuse is missing", file=sys.stderr)
        return 1
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.out.mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), os.getloadavg()
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    document = {"quick": args.quick, "repeats": args.repeats, "reference": args.reference,
                "cpus": os.cpu_count(),
                "kernel": os.uname().release, "seconds": round(time.time() - started, 1),
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                "results": report.results, "table": report.rows}
    (args.out / "results.json").write_text(json.dumps(document, indent=2))
    plotted = plot(report, args.out / "bench.png")
    print(f"wrote {args.out / 'results.json'}"
          + (f" and {args.out / 'bench.png'}" if plotted else
             " (no plot: install the bench extra for matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
