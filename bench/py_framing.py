#!/usr/bin/env python3
"""framewire.framing's read rate for small messages (issue 33's target:
at least 50,000 messages/s, pure Python, one core), beside the
tutorial's own helper in the same run.

Usage: python3 bench/py_framing.py [--messages 200000] [--rounds 5]

A thread writes N messages of 64 bytes, framed, into one end of a
socket pair (in batches, so that the writer is not what is measured);
the reader takes them one at a time:

  recv_msg      framewire.framing.recv_msg on the blocking socket
  decoder       FrameDecoder.feed on 64 KiB recv() chunks
  tutorial      the tutorial's recvall(sock, n) loop with struct.unpack
                (which returns a short buffer at the end of a stream:
                the bug framewire.framing fixes; here it never meets one)

Prints the median and min-max messages/s over the rounds, and the
ratios to the tutorial's helper.
"""

import argparse
import os
import socket
import statistics
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from framewire import framing  # noqa: E402

PAYLOAD = b"x" * 64


def writer(sock, n):
    frame = struct.pack("!I", len(PAYLOAD)) + PAYLOAD
    batch = frame * 1000
    with sock:
        for _ in range(n // 1000):
            sock.sendall(batch)
        sock.sendall(frame * (n % 1000))


def tutorial_recvall(sock, n):
    data = b""
    while len(data) < n:
        packet = sock.recv(n - len(data))
        if not packet:
            return data
        data += packet
    return data


def run(kind, n):
    a, b = socket.socketpair()
    t = threading.Thread(target=writer, args=(a, n))
    t.start()
    got = 0
    start = time.perf_counter()
    with b:
        if kind == "recv_msg":
            while framing.recv_msg(b) is not None:
                got += 1
        elif kind == "decoder":
            d = framing.FrameDecoder()
            while chunk := b.recv(65536):
                got += len(d.feed(chunk))
            d.close()
        else:
            while True:
                head = tutorial_recvall(b, 4)
                if len(head) < 4:
                    break
                (size,) = struct.unpack("!I", head)
                tutorial_recvall(b, size)
                got += 1
    elapsed = time.perf_counter() - start
    t.join()
    assert got == n, (kind, got, n)
    return n / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    kinds = ["recv_msg", "decoder", "tutorial"]
    rates = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds[r % 3 :] + kinds[: r % 3]:
            rates[k].append(run(k, args.messages))
    print(f"\n{args.messages:,} messages of 64 bytes over a socket pair, {args.rounds} rounds, Python {sys.version.split()[0]}\n")
    print("| reader | median messages/s | min–max |")
    print("|---|---|---|")
    for k in kinds:
        print(f"| {k} | {statistics.median(rates[k]):,.0f} | {min(rates[k]):,.0f}–{max(rates[k]):,.0f} |")
    base = statistics.median(rates["tutorial"])
    print("\n| ratio of medians | value | target |")
    print("|---|---|---|")
    print(f"| recv_msg / tutorial | {statistics.median(rates['recv_msg']) / base:.2f}x | |")
    print(f"| decoder / tutorial | {statistics.median(rates['decoder']) / base:.2f}x | |")
    print(f"| recv_msg, messages/s | {statistics.median(rates['recv_msg']):,.0f} | ≥ 50,000 |")


if __name__ == "__main__":
    main()
