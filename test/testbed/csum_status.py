#!/usr/bin/env python3
"""csum_status.py IFNAME PORT COUNT — inside a guest: watch the TCP segments IFNAME receives from
source PORT, over IPv4 and IPv6, and print for each family how many of them the kernel holds with
their checksum left unsummed ("partial": TP_STATUS_CSUMNOTREADY in the packet socket's auxiliary
data, what a TAP's virtio-net header marked NEEDS_CSUM becomes). Prints "ready" once listening,
then at the end a line per family: "4 PARTIAL SEEN" and "6 PARTIAL SEEN"; stops once COUNT
segments of each family were seen, or after 20 s."""
import socket
import struct
import sys
import time

ifname, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_CSUMNOTREADY = 263, 8, 1 << 3
ETH_P_ALL = 0x0003

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
s.bind((ifname, 0))
s.settimeout(1)
print("ready", flush=True)
seen = {4: [0, 0], 6: [0, 0]}  # family -> [partial, seen]
deadline = time.monotonic() + 20
while min(v[1] for v in seen.values()) < count and time.monotonic() < deadline:
    try:
        frame, anc, _, addr = s.recvmsg(1 << 17, socket.CMSG_SPACE(32))
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0800 and frame[23] == 6:
        family, l4 = 4, 14 + (frame[14] & 15) * 4
    elif ethertype == 0x86DD and frame[20] == 6:
        family, l4 = 6, 14 + 40
    else:
        continue
    if struct.unpack("!H", frame[l4:l4 + 2])[0] != port:
        continue
    status = 0
    for level, kind, data in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status = struct.unpack("I", data[:4])[0]
    seen[family][1] += 1
    if status & TP_STATUS_CSUMNOTREADY:
        seen[family][0] += 1
for family in (4, 6):
    print(family, *seen[family], flush=True)
