#!/usr/bin/python3
"""Send a burst of malformed and hostile Ethernet frames out of an interface (AF_PACKET).

    inject_frames.py IFACE GATEWAY_MAC COUNT GUEST_IP4

Run inside a sandbox by the system tests: frames that lie about their lengths, truncated
headers, bad checksums, fragments, spoofed sources, random garbage. Prints the number sent.
"""
import os, random, socket, struct, sys

iface, gw_mac, count, guest = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
me = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
rng = random.Random(1234)

def ip4(src, dst, proto, payload, total=None, ihl=5, frag=0x4000):
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total if total is not None else 20 + len(payload),
                    1, frag, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return h + payload

def frame(body, ethertype=0x0800, dst=gw_mac):
    return dst + me + struct.pack("!H", ethertype) + body

shapes = [
    lambda: frame(b"", 0x0800)[:rng.randint(1, 13)],                             # runt
    lambda: frame(ip4(guest, "203.0.113.10", 17, b"x" * 8, total=60000)), # total length lies
    lambda: frame(ip4(guest, "203.0.113.10", 17, b"x" * 8, ihl=15)),     # IHL past the packet
    lambda: frame(ip4(guest, "203.0.113.10", 17, b"\x00\x07\x00\x07\xff\xff\x00\x00")),  # UDP length lies
    lambda: frame(ip4(guest, "203.0.113.10", 17, b"x" * 40, frag=0x2000)),  # fragment
    lambda: frame(ip4("10.9.9.9", "203.0.113.10", 17, b"x" * 16)),              # spoofed source
    lambda: frame(bytes([0x60]) + os.urandom(rng.randint(0, 60)), 0x86DD),      # IPv6 garbage
    lambda: frame(os.urandom(rng.randint(0, 40)), 0x0806),                       # ARP garbage
    lambda: frame(os.urandom(rng.randint(0, 1500)), rng.choice([0x0800, 0x86DD, 0x88CC, 0x8100])),
    lambda: os.urandom(rng.randint(14, 1514)),                                   # anything at all
]
sent = 0
for i in range(count):
    try:
        s.send(shapes[i % len(shapes)]())
        sent += 1
    except OSError:
        pass  # the kernel refuses some (e.g. shorter than a header); that is fine
print(sent)
