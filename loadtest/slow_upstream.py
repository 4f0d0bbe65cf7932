#!/usr/bin/env python3
"""A model of an upstream with a fixed number of workers, for loadtest/fair-share.sh.

    python3 loadtest/slow_upstream.py PORT [WORKERS=8] [SERVICE_MS=20]

HTTP/1.1 with keep-alive on 127.0.0.1:PORT. At most WORKERS requests are served at a time, each
taking SERVICE_MS (a timer, no CPU spent); the rest wait in one FIFO across all connections, first
come first served, as in a worker pool behind a listen queue. WORKERS=0 answers every request at
once (a cheap upstream for the load that must not reach the measured pool). A request whose
connection has closed while it waited is dropped without taking a worker. Every answer is 200 with
a small body. Standard library only; stops on SIGTERM/SIGINT.
"""
import asyncio
import collections
import signal
import sys

BODY = b"ok\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % len(BODY)
) + BODY


class Pool:
    def __init__(self, loop, workers, service_s):
        self.loop = loop
        self.workers = workers
        self.service_s = service_s
        self.busy = 0
        self.fifo = collections.deque()

    def submit(self, conn):
        if self.workers == 0:
            conn.respond()
            return
        self.fifo.append(conn)
        self.dispatch()

    def dispatch(self):
        while self.busy < self.workers and self.fifo:
            conn = self.fifo.popleft()
            if conn.closed:
                continue
            self.busy += 1
            self.loop.call_later(self.service_s, self.done, conn)

    def done(self, conn):
        self.busy -= 1
        conn.respond()
        self.dispatch()


class Conn(asyncio.Protocol):
    """One client connection; requests are answered in order, one at a time (no pipelining
    reaches the pool: the next request of a connection is queued when the previous is answered)."""

    def __init__(self, pool):
        self.pool = pool
        self.buf = b""
        self.pending = 0  # complete requests parsed, not yet answered
        self.in_pool = False
        self.closed = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.pending += 1
            self.next()

    def next(self):
        if self.pending and not self.in_pool and not self.closed:
            self.in_pool = True
            self.pool.submit(self)

    def respond(self):
        self.in_pool = False
        self.pending -= 1
        if not self.closed:
            self.transport.write(RESPONSE)
            self.next()


async def main():
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    service_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    loop = asyncio.get_running_loop()
    pool = Pool(loop, workers, service_ms / 1000.0)
    server = await loop.create_server(lambda: Conn(pool), "127.0.0.1", port, backlog=4096)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main())
