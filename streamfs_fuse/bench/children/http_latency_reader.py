"""A reader over HTTP from a raw socket: parses the chunked body, checks that the
1 KiB messages (sequence number, CLOCK_MONOTONIC send time in ns) come in order
with none missing, stamps their arrival and prints the latencies at the end of
the body.

Usage: http_latency_reader.py PORT PATH. Prints "ready" once the response head is in.
"""

import socket
import sys
import time

port, path = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(("127.0.0.1", port))
sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
raw = b""
while b"\r\n\r\n" not in raw:
    data = sock.recv(65536)
    if not data:
        sys.exit("the connection closed before the response head")
    raw += data
head, _, raw = raw.partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
    sys.exit(f"unexpected response: {head!r}")
print("ready", flush=True)
raw, body, latencies, expected, done = bytearray(raw), bytearray(), [], 0, False
while not done:
    data = sock.recv(1 << 20)
    now = time.monotonic_ns()
    if not data:
        sys.exit("the connection closed before the end of the body")
    raw += data
    while True:  # take every complete chunk
        line_end = raw.find(b"\r\n")
        if line_end < 0:
            break
        size = int(bytes(raw[:line_end]).split(b";")[0], 16)
        if size == 0:
            done = True
            break
        if len(raw) < line_end + 2 + size + 2:
            break
        body += raw[line_end + 2:line_end + 2 + size]
        del raw[:line_end + 2 + size + 2]
    whole = len(body) // 1024 * 1024
    for at in range(0, whole, 1024):
        sequence, sent = int(body[at:at + 20]), int(body[at + 20:at + 40])
        if sequence != expected:
            sys.exit(f"message {expected} missing (got {sequence})")
        expected += 1
        latencies.append(now - sent)
    del body[:whole]
print(" ".join(map(str, latencies)), flush=True)
