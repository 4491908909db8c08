#!/usr/bin/python3
"""Hold a TAP device the way Firecracker does, and be its guest's NIC.

    tap_holder.py TAP GUEST_LINK

Opens /dev/net/tun with TUNSETIFF on TAP (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR; the device is
created if it is missing, and then goes when this process ends, as Firecracker's does), sets a
12-byte virtio-net header (virtio_net_hdr_v1, TUNSETVNETHDRSZ) and the offloads a Linux guest
negotiates (TUNSETOFFLOAD: checksum, TSO4, TSO6), and keeps the fd. Frames are then moved as
Firecracker's virtio-net device moves them, header and all, between the fd and GUEST_LINK: an
interface (a veth end) of this namespace whose peer is the guest's eth0 in another namespace,
read and written through an AF_PACKET socket with PACKET_VNET_HDR, so the guest kernel's
checksum and segmentation offloads reach the TAP as a guest's would (partial checksums, TCP
superframes).

Prints "holding TAP" once the fd is held. Commands on stdin, one per line:
    hostile     write malformed frames straight to the fd (as a hostile guest or VMM would);
                prints "hostile N": the number the kernel took
    exit        (or end of input) close the fd and exit
"""
import fcntl, os, select, socket, struct, sys

TAP, LINK = sys.argv[1], sys.argv[2]
TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
SOL_PACKET, PACKET_VNET_HDR, PACKET_OUTGOING = 263, 15, 4
VNET_HDR = 12  # the fd's header: virtio_net_hdr_v1 (the packet socket's is the 10-byte legacy one)

tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
fcntl.ioctl(tap, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR))
fcntl.ioctl(tap, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)

link = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
link.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
link.bind((LINK, 0x0003))

print(f"holding {TAP}", flush=True)


def gateway_mac():
    return bytes.fromhex("02" + "00" * 5)  # any unicast MAC: the link drops by length before the engine looks


def hostile():
    """Frames no guest of an MTU-1500 link can send: longer than the MTU and not a TCP
    superframe, or claiming a length the frame does not have."""
    me = bytes.fromhex("525400abcdef")
    eth = lambda ethertype: gateway_mac() + me + struct.pack("!H", ethertype)
    ip4 = lambda proto, payload, total=None: struct.pack("!BBHHHBBH4s4s", 0x45, 0, total if total is not None else 20 + len(payload),
                                                          1, 0x4000, 64, proto, 0, socket.inet_aton("172.30.0.2"), socket.inet_aton("203.0.113.10")) + payload
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x10, 65535, 0, 0)
    frames = [
        eth(0x0800) + ip4(17, struct.pack("!HHHH", 4000, 53, 8 + 8972, 0) + b"u" * 8972),  # 9000-byte UDP
        eth(0x88B5) + b"x" * 4000,                                                          # 4 KB of an unknown type
        eth(0x0800) + ip4(6, tcp + b"t" * 3000, total=20 + 20 + 60000),                     # TCP claiming more than it has
        eth(0x0800) + ip4(6, tcp + b"t" * 3000, total=40),                                  # over-long TCP with no payload
        eth(0x0800) + ip4(17, b"y" * 66000, total=0xFFFF),                                  # longer than any IP packet
    ]
    took = 0
    for f in frames:
        try:
            os.write(tap, bytes(VNET_HDR) + f)
            took += 1
        except OSError:
            pass  # the kernel refused it (too long for the TAP): nothing reached the interface
    return took


inputs = [tap, link, sys.stdin]
while True:
    ready, _, _ = select.select(inputs, [], [])
    if tap in ready:  # the guest's receive path: what moat sent on the TAP's kernel side
        data = os.read(tap, 70000)
        link.send(data[:10] + data[VNET_HDR:])
    if link in ready:  # the guest's transmit path
        data, addr = link.recvfrom(70000)
        if addr[2] != PACKET_OUTGOING:
            try:
                os.write(tap, data[:10] + bytes(VNET_HDR - 10) + data[10:])
            except OSError:
                pass  # the TAP is down: dropped, as a VMM's would be
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line or line.strip() == "exit":
            break
        if line.strip() == "hostile":
            print(f"hostile {hostile()}", flush=True)
os.close(tap)
