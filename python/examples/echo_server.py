#!/usr/bin/env python3
"""The tutorial's upper-case echo server, with its boundaries kept.

The tutorial's version does `conn.recv(1024)` and upper-cases whatever
came: two quick messages come back glued together, a long one in pieces.
Here every message is framed (a 4-byte big-endian length, then the
bytes), so each one comes back whole and alone, however TCP cut it.

    python3 echo_server.py serve 127.0.0.1 9999
    python3 echo_server.py send 127.0.0.1 9999 hello world "a longer one"
"""

import socket
import sys
import threading

from framewire import framing


def handle(conn: socket.socket) -> None:
    with conn:
        # None: the client closed cleanly between two messages. A close
        # inside a message raises framewire.IncompleteFrame instead.
        while (message := framing.recv_msg(conn, max_size=1 << 20)) is not None:
            framing.send_msg(conn, message.upper())


def serve(host: str, port: int) -> None:
    with socket.create_server((host, port)) as server:
        print(f"upper-case echo on {host}:{server.getsockname()[1]}", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


def send(host: str, port: int, words: list) -> None:
    with socket.create_connection((host, port)) as conn:
        # Sent back to back, as a "sticky packet" test: each is answered
        # on its own.
        for word in words:
            framing.send_msg(conn, word.encode())
        for _ in words:
            print(framing.recv_msg(conn).decode())


if __name__ == "__main__":
    what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    serve(host, port) if what == "serve" else send(host, port, sys.argv[4:])
