#!/usr/bin/env python3
"""Memory per idle client connection of a running proxy: opens up to
10,000 connections to 127.0.0.1:PORT (bounded in count and in time), each
sending one request and reading its answer first when SEND is 1, waits a
second, and prints "count rss-after-KiB KiB-each" from PID's VmRSS growth.

    benches/idle_connections.py PORT PID SEND
"""
import resource, socket, sys, time
port, pid, send_request = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
count = min(10_000, min(hard, 20000) - 200)
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

def rss():
    return int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))

before, conns, deadline = rss(), [], time.time() + 120
for _ in range(count):
    if time.time() > deadline:
        break
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if send_request:
        s.sendall(request)
        s.recv(4096)
    conns.append(s)
time.sleep(1)
after = rss()
print(len(conns), after, f"{(after - before) / max(len(conns), 1):.1f}")
for s in conns:
    s.close()
