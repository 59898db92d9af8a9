"""A latency reader: stamps the arrival of each 1 KiB message (whose first 20 bytes
are its send time in ns) and prints the latencies when the stream ends.

Usage: latency_reader.py PATH|FD. Prints "ready" once the stream is open.
"""

import os
import sys
import time

fd = int(sys.argv[1]) if sys.argv[1].isdigit() else os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
reads = []  # parsed after EOF, so that the reader costs as little as possible per message
while True:
    data = os.read(fd, 65536)
    if not data:
        break
    reads.append((time.time_ns(), data))
latencies, pending = [], b""
for now, data in reads:
    pending += data
    while len(pending) >= 1024:
        latencies.append(now - int(pending[:20]))
        pending = pending[1024:]
print(" ".join(map(str, latencies)), flush=True)
