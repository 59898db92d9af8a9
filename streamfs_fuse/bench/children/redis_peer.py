"""One side of a bare coredis XADD -> XREAD pair.

The writer XADDs COUNT entries of SIZE bytes, each starting with its send time
in ns, one every INTERVAL s (0: each as soon as the last is in); the reader,
started first, XREADs them 16 at a time (as the daemon does), deletes the key,
and prints bytes/s from the first send to the last arrival, then each entry's
latency.

Usage: redis_peer.py read|write URL KEY COUNT SIZE INTERVAL
"""

import sys
import time

import coredis
import trio

role, url, key = sys.argv[1:4]
count, size, interval = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])


async def main():
    client = coredis.Redis.from_url(url)
    async with client:
        if role == "write":
            pad, next_send = bytes(size - 20), time.perf_counter()
            for _ in range(count):
                await client.xadd(key, {"d": b"%020d" % time.time_ns() + pad})
                next_send += interval
                await trio.sleep(max(0.0, next_send - time.perf_counter()))
            return
        print("ready", flush=True)
        last, latencies, first = "0-0", [], 0
        while len(latencies) < count:
            reply = await client.xread({key: last}, count=16, block=0)
            now = time.time_ns()
            for entry in reply[key.encode()]:
                last, sent = entry.identifier, int(entry.field_values[b"d"][:20])
                first = first or sent
                latencies.append(now - sent)
        await client.delete([key])
        print(count * size * 1e9 / (now - first), flush=True)
        print(" ".join(map(str, latencies)), flush=True)


trio.run(main)
