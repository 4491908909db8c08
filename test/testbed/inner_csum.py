#!/usr/bin/python3
"""inner_csum.py IFACE GATEWAY_MAC GUEST_IP4 SERVER_IP4 PORT — inside a guest: send a UDP echo
request through a packet socket with a virtio-net header (PACKET_VNET_HDR) whose NEEDS_CSUM
points *into the payload*, as a tunnel's inner TCP checksum left to the NIC would (VXLAN, FOU),
then print what the echo brought back: "inner EXPECTED GOT".

The payload is an 8-byte stand-in for a tunnel header, then a 12-byte "inner header" whose
checksum field (at 2) holds a seed, as a kernel leaves a pseudo-header's sum there, then data.
The frame's own UDP checksum is whole and covers the payload as it will be once the inner
checksum is filled in (what a kernel's local checksum offload computes). A NIC fills the inner
field with the complement of the sum from the inner header to the end; the echo shows whether
that happened before the payload left for the server."""
import socket
import struct
import sys

iface, gw, guest, server, port = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3], sys.argv[4], int(sys.argv[5])
SOL_PACKET, PACKET_VNET_HDR, NEEDS_CSUM = 263, 15, 1


def fold(data, acc=0):
    if len(data) % 2:
        data += b"\0"
    acc += sum(struct.unpack(f"!{len(data) // 2}H", data))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


inner_at, field = 8, 2
seed = 0x1234
payload = bytearray(b"TUNNELHD" + b"\x45\x00" + struct.pack("!H", seed) + b"innerhdr" + bytes(range(256)) * 4)
expected = ~fold(bytes(payload[inner_at:])) & 0xFFFF or 0xFFFF

# A socket to receive the echo on (the packet socket only sends).
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind((guest, 0))
rx.settimeout(5)
sport = rx.getsockname()[1]

completed = bytearray(payload)
struct.pack_into("!H", completed, inner_at + field, expected)
udp_len = 8 + len(payload)
pseudo = socket.inet_aton(guest) + socket.inet_aton(server) + struct.pack("!BBH", 0, 17, udp_len)
udp = bytearray(struct.pack("!HHHH", sport, port, udp_len, 0) + completed)
struct.pack_into("!H", udp, 6, ~fold(pseudo + bytes(udp)) & 0xFFFF or 0xFFFF)
udp[8:] = payload  # the inner field back to its seed: left to the NIC
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0, socket.inet_aton(guest), socket.inet_aton(server)))
struct.pack_into("!H", ip, 10, ~fold(bytes(ip)) & 0xFFFF)
me = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
frame = gw + me + b"\x08\x00" + bytes(ip) + bytes(udp)
csum_start = 14 + 20 + 8 + inner_at
vnet = struct.pack("=BBHHHH", NEEDS_CSUM, 0, 0, 0, csum_start, field)

tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
tx.bind((iface, 0))
tx.send(vnet + frame)
echo = rx.recv(65536)
print("inner", f"{expected:#06x}", f"{struct.unpack_from('!H', echo, inner_at + field)[0]:#06x}", flush=True)
