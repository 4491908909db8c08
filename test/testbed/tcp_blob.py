#!/usr/bin/python3
"""Move N deterministic bytes over one TCP connection and say what arrived.

    tcp_blob.py sink   ADDR PORT       listen; read one connection to its end
    tcp_blob.py source ADDR PORT N     listen; send N bytes to one connection, then close
    tcp_blob.py send   ADDR PORT N     connect; send N bytes, then close
    tcp_blob.py recv   ADDR PORT       connect; read to the end

Listeners print "listening" once bound. The side that reads prints "LENGTH SHA256" of what it
read; the side that sends prints the same of what it sent.
"""
import hashlib, random, socket, sys

mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = int(sys.argv[4]) if len(sys.argv) > 4 else 0


def blob():
    return random.Random(7).randbytes(n)


def read_all(c):
    h, total = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        h.update(d)
        total += len(d)
    print(total, h.hexdigest(), flush=True)


def send_all(c):
    data = blob()
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # the peer's end: everything was read
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)


if mode in ("sink", "source"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
else:
    c = socket.create_connection((addr, port), timeout=30)
c.settimeout(30)
if mode in ("sink", "recv"):
    read_all(c)
else:
    send_all(c)
c.close()
