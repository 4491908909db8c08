#!/usr/bin/env python3
"""tcp_record.py PORT FILE [AFTER MS] — a TCP server that reads each connection to its end and
appends one line to FILE: "end BYTES SHA256" (a clean FIN) or "reset BYTES CODE" (the connection
failed). With AFTER and MS it stops reading for MS once AFTER bytes came: a slow reader, so the
sender's kernel is left holding data. Prints "ready" once listening; runs until killed.

Python rather than Node: Node reports a reset that arrives while a socket is paused as a clean
'end', which would hide exactly what this server exists to see."""
import hashlib
import socket
import sys
import threading
import time

port, path = int(sys.argv[1]), sys.argv[2]
after = int(sys.argv[3]) if len(sys.argv) > 3 else None
pause_s = int(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0
lock = threading.Lock()


def record(line):
    with lock, open(path, "a") as f:
        f.write(line + "\n")


def serve(conn):
    h, got, paused = hashlib.sha256(), 0, False
    try:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                record(f"end {got} {h.hexdigest()}")
                break
            h.update(data)
            got += len(data)
            if after is not None and not paused and got >= after:
                paused = True
                time.sleep(pause_s)
    except OSError as e:
        record(f"reset {got} {'ECONNRESET' if isinstance(e, ConnectionResetError) else e.errno}")
    finally:
        conn.close()


srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", port))
srv.listen(128)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
