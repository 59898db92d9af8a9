"""Opens PATH COUNT times read-only and holds the descriptors without reading;
prints "ready", then sleeps until it is killed.

Usage: idle_crowd.py PATH COUNT
"""

import os
import resource
import signal
import sys

path, count = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < count + 64:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, max(hard, count + 64)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: up to the hard limit only
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = [os.open(path, os.O_RDONLY) for _ in range(count)]
print("ready", flush=True)
while True:
    signal.pause()
