"""Opens COUNT read handles on the paths (round robin) with a thread blocked in
read() on each; prints "ready", then exits at EOF.

Usage: crowd.py PATH... COUNT
"""

import os
import resource
import sys
import threading

resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
threading.stack_size(64 * 1024)
paths, count = sys.argv[1:-1], int(sys.argv[-1])
fds = [os.open(paths[i % len(paths)], os.O_RDONLY) for i in range(count)]


def drain(fd):
    while os.read(fd, 1 << 20):
        pass


threads = [threading.Thread(target=drain, args=(fd,)) for fd in fds]
for t in threads:
    t.start()
print("ready", flush=True)
for t in threads:
    t.join()
