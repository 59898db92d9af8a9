"""A deliberately slow reader: 64 KiB reads 2 ms apart (about 30 MB/s at most);
prints "ready" once open, and the bytes it read at EOF.

Usage: slow_reader.py PATH
"""

import os
import sys
import time

fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
total = 0
while data := os.read(fd, 65536):
    total += len(data)
    time.sleep(0.002)  # about 30 MB/s at most
print(total, flush=True)
