#!/usr/bin/env python3
"""The tutorial's "pick a movie by number" download, done correctly.

The server lists the files of a directory; the client picks one by number
and the server sends it. Each step is one framewire frame (a JSON header,
then a body of exactly `len` bytes), so the list, the choice and the file
never run into each other, and a file cut short by a dropped connection
is an error, not a smaller file. A SHA-256 in the header checks the
bytes end to end (framewire's own `get` does this with BLAKE3, and
resumes a cut download).

    python3 movie_download.py serve 127.0.0.1 9998 ./movies
    python3 movie_download.py fetch 127.0.0.1 9998 ./downloads
"""

import hashlib
import os
import socket
import sys
import threading

from framewire import framing


def handle(conn: socket.socket, folder: str) -> None:
    with conn:
        names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
        framing.send_frame(conn, {"type": "list", "names": names})
        asked = framing.recv_frame(conn, max_body=0)
        if asked is None:
            return
        header, _ = asked
        number = header.get("number")
        if not isinstance(number, int) or not 1 <= number <= len(names):
            framing.send_frame(conn, {"type": "error", "message": f"no movie number {number!r}"})
            return
        with open(os.path.join(folder, names[number - 1]), "rb") as f:
            # Read whole for the example; a real server streams it
            # (framewire's own `get` does, and resumes).
            body = f.read()
        framing.send_frame(conn, {"type": "file", "name": names[number - 1], "sha256": hashlib.sha256(body).hexdigest()}, body)


def serve(host: str, port: int, folder: str) -> None:
    with socket.create_server((host, port)) as server:
        print(f"serving {folder} on {host}:{server.getsockname()[1]}", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn, folder), daemon=True).start()


def fetch(host: str, port: int, into: str, number=None) -> str:
    with socket.create_connection((host, port)) as conn:
        header, _ = framing.recv_frame(conn)
        for i, name in enumerate(header["names"], 1):
            print(f"{i}. {name}")
        if number is None:
            number = int(input("movie number: "))
        framing.send_frame(conn, {"type": "pick", "number": number})
        answer = framing.recv_frame(conn, max_body=1 << 30)
        if answer is None:
            raise SystemExit("the server closed without an answer")
        header, body = answer
        if header["type"] == "error":
            raise SystemExit(header["message"])
        if hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise SystemExit("the file arrived damaged")
        # Never outside `into`: the name is the server's, not trusted.
        path = os.path.join(into, os.path.basename(header["name"]))
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        print(f"saved {path} ({len(body)} bytes)")
        return path


if __name__ == "__main__":
    what, host, port, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    serve(host, port, folder) if what == "serve" else fetch(host, port, folder)
