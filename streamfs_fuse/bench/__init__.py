r"""Benchmark streamfs-fuse against another streaming FUSE daemon and the kernel's pipe and tee.

Mounts a fresh file system in a temporary directory for every run, repeats
each workload (3 times by default), and prints medians and ratios, since
absolute numbers drift on shared machines. Writes results.json and, when
matplotlib is installed (the ``bench`` extra), bench.png to --out.

    scripts/bench              # full run, about 10 minutes
    scripts/bench --quick      # every workload, tiny sizes, < 1 minute
    scripts/bench --only latency,fanout --out docs/

With --reference, throughput (1 -> 1 at 1 MiB and 128 KiB), fanout (1 -> 4,
16, 64 readers) and latency (1 KiB every 1 ms, 1 and 100 readers) also run on
that daemon, started in the foreground on a fresh mountpoint ({mnt}); within
each repeat streamfs-fuse, the reference and pipe/tee run in turn. Their
targets are ratios to the reference (issue 10); without --reference those rows
are reported beside pipe/tee with no verdict, except the 1-reader latency's
absolute p99 < 0.5 ms:

    scripts/bench --reference '../shared/fuse-limit/streamlimit -t 2 {mnt}'
    scripts/bench --quick --only throughput,fanout,latency \
        --reference '../shared/fuse-limit/streamlimit -t 2 {mnt}'

The scale section (in the full run, or --only scale) holds 100,000 idle readers
on one stream of streamfs-fuse (5 processes, more where RLIMIT_NOFILE is lower;
2,000 under --quick) and reports the daemon's RSS per reader, the time of one
1 KiB write to all of them, another stream's latency meanwhile, and how long
the readers take to go once their processes are killed (about 1.5 minutes):

    scripts/bench --only scale --repeats 1

The http section serves the mount with --http and compares curl readers, in
the same run, with what the same readers take from a server sending from
memory and, when icecast2 is installed (never under --quick), with Icecast 2
listeners:

    scripts/bench --only http --out /tmp/bench-http

The http-stalled section (issue 19) holds 1,000 HTTP readers that never read
(4 KiB receive buffers) while 48 MiB pass under --max-memory=32MB, and reports
the daemon's RSS before, during and after them and the writer's speed; then
the RSS per idle HTTP reader once each has been sent a 6 MB ring's history
(100 readers):

    scripts/bench --only http-stalled --repeats 1

The join section (skipped, saying so, without ffmpeg) has an ffmpeg -re libx264
writer (1 Mbit/s, 10 s GOP; 1 s under --quick) joined late by a
``cat | ffmpeg -i -`` under join=ring, keyframe and live, and reports for each
how far behind live it plays (media time: the writer's newest PTS when it
opened less the PTS of its first decoded frame; negative when it waited for a
picture written later), its time to first picture (ffmpeg's own stream
analysis included) and the decoder's error lines. Then what the keyframe index
costs: 1 MiB writes of a stream that is not MPEG-TS, and the daemon's CPU per
second of a 20 Mbit/s MPEG-TS writer beside the same bytes made not TS:

    scripts/bench --only join

The redis section mounts two daemons A and B on one Redis namespace and
compares writing on A and reading on B with a bare coredis XADD -> XREAD pair
on the same Redis. It runs with --backend URL, or with --only redis, which
starts a private redis-server on loopback:

    scripts/bench --only redis --backend redis://127.0.0.1:6379/0

Every process it starts is killed by PID and every mount unmounted, also on
Ctrl-C or failure.

scripts/bench runs ``python -m streamfs_fuse.bench`` with the checkout's .venv.
Each section group is a module here (throughput, latency, memory, http, join,
redis), the child programs are files in children/, and mounts, waits, ports,
Redis and /proc figures come from the harness the tests share,
streamfs_fuse.testing.
"""
