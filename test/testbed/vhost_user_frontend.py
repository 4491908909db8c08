#!/usr/bin/python3
"""A vhost-user front-end (the VMM's side) for testing moat's vhost-user-net back-end.

    vhost_user_frontend.py --socket PATH --guest-ip A --gateway-ip B --gateway-mac M CASE...

Plays QEMU and the guest's virtio-net driver at once: connects to moat's socket, negotiates,
shares "guest memory" (a memfd in two regions, contiguous in guest physical addresses, at
unrelated front-end addresses), lays out the two split virtqueues in it (queue 0 = the guest's
RX, queue 1 = its TX), and kicks with eventfds. Then it sends frames the gateway answers (ARP,
ICMP echo), hostile descriptor chains, and hostile control messages. Standard library only.

Every case prints one JSON line: {"case", "ok", "malformed" (how many LINK_MALFORMED moat
should have counted), "detail"}. The test compares the counter moat reports.
"""
import argparse, array, errno, fcntl, json, mmap, os, select, socket, struct, sys, time

# ---- protocol ------------------------------------------------------------------------------------
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE, SET_LOG_BASE, SET_LOG_FD = 1, 2, 3, 4, 5, 6, 7
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE, NET_SET_MTU = 15, 16, 17, 18, 20
F_CSUM, F_GUEST_CSUM, F_MTU, F_MRG_RXBUF, F_INDIRECT, F_EVENT_IDX, F_PROTOCOL, F_VERSION_1 = 0, 1, 3, 15, 28, 29, 30, 32
F_HOST_TSO4 = 11  # never offered
PF_REPLY_ACK, PF_NET_MTU = 3, 4
NEED_REPLY = 0x8
NOFD = 0x100
D_NEXT, D_WRITE, D_INDIRECT = 1, 2, 4
RXQ, TXQ = 0, 1

# ---- guest memory --------------------------------------------------------------------------------
MEM = 4 << 20
GPA = 0x10000000               # region 0: GPA [GPA, GPA+1M) at file offset 0
SPLIT = 1 << 20                # region 1: GPA [GPA+1M, GPA+4M) at file offset 1M (mmap_offset)
UVA = [0x7F0000000000, 0x7F0000400000]   # the "VMM's" addresses of the two regions
QSIZE = 256
RINGS = {RXQ: 0x0000, TXQ: 0x4000}       # desc (4K), avail (+0x1000), used (+0x2000)
TX_BUFS = GPA + 0x10000        # 16 KiB apart, for frames up to 16 KiB; big frames get their own
RX_BUFS = GPA + 0x60000        # 2 KiB receive buffers, one per descriptor index
BIG = GPA + 0x200000           # a large TX frame (crosses no region boundary)
CROSS = GPA + SPLIT - 0x400    # a TX buffer straddling the region boundary


def uva_of(gpa):
    off = gpa - GPA
    return UVA[0] + off if off < SPLIT else UVA[1] + off - SPLIT


class Memory:
    def __init__(self, sealable=True):
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
        self.fd = os.memfd_create("guest-ram", flags)
        os.ftruncate(self.fd, MEM)
        self.m = mmap.mmap(self.fd, MEM)

    def write(self, gpa, data): self.m[gpa - GPA:gpa - GPA + len(data)] = data
    def read(self, gpa, n): return bytes(self.m[gpa - GPA:gpa - GPA + n])
    def u16(self, gpa): return struct.unpack_from("<H", self.m, gpa - GPA)[0]
    def set_u16(self, gpa, v): struct.pack_into("<H", self.m, gpa - GPA, v & 0xFFFF)
    def u32(self, gpa): return struct.unpack_from("<I", self.m, gpa - GPA)[0]

    def regions(self):
        """(guest_phys_addr, memory_size, userspace_addr, mmap_offset) of the two regions."""
        return [(GPA, SPLIT, UVA[0], 0), (GPA + SPLIT, MEM - SPLIT, UVA[1], SPLIT)]


class Queue:
    """The driver's side of one split virtqueue in guest memory."""

    def __init__(self, mem, index):
        self.mem, self.index = mem, index
        base = GPA + RINGS[index]
        self.desc, self.avail, self.used = base, base + 0x1000, base + 0x2000
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        mem.write(base, bytes(0x3000))

    def set_desc(self, i, addr, length, flags=0, nxt=0, table=None):
        struct.pack_into("<QIHH", self.mem.m, (table if table is not None else self.desc) - GPA + 16 * i, addr, length, flags, nxt)

    def alloc(self, n):
        """n consecutive descriptor indexes (wrapping; the tests never keep a ring's worth in flight)."""
        if self.next_desc + n > QSIZE:
            self.next_desc = 0
        i = self.next_desc
        self.next_desc += n
        return i

    def chain(self, bufs):
        """Descriptors for [(addr, len, flags)] linked with NEXT; returns the head."""
        head = self.alloc(len(bufs))
        for k, (addr, length, flags) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.set_desc(head + k, addr, length, flags | (0 if last else D_NEXT), 0 if last else head + k + 1)
        return head

    def publish(self, head, kick=True):
        self.mem.set_u16(self.avail + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.set_u16(self.avail + 2, self.avail_idx)
        if kick:
            os.eventfd_write(self.kick, 1)

    def used_idx(self): return self.mem.u16(self.used + 2)

    def take_used(self, timeout=3.0, want=1):
        """Used entries [(id, len)] once at least `want` are there, or what arrived by the timeout."""
        end = time.time() + timeout
        while ((self.used_idx() - self.used_seen) & 0xFFFF) < want and time.time() < end:
            time.sleep(0.001)
        out = []
        while self.used_seen != self.used_idx():
            e = self.used + 4 + 8 * (self.used_seen % QSIZE)
            out.append((self.mem.u32(e), self.mem.u32(e + 4)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def calls(self):
        try:
            return os.eventfd_read(self.call)
        except BlockingIOError:
            return 0


class Closed(Exception):
    pass


class Frontend:
    def __init__(self, path, features=None, protocol=None, rx_buf=2048, rx_count=64, sealable=True):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(3)
        self.mem = Memory(sealable)
        self.q = {RXQ: Queue(self.mem, RXQ), TXQ: Queue(self.mem, TXQ)}
        self.want_features = features
        self.want_protocol = protocol
        self.rx_buf, self.rx_count = rx_buf, rx_count
        self.rx_posted = 0
        self.reply_ack = False
        self.features = 0

    # -- messages --
    def send(self, req, payload=b"", fds=(), flags=0x1, size=None):
        hdr = struct.pack("<III", req, flags, len(payload) if size is None else size)
        if fds:
            socket.send_fds(self.s, [hdr + payload], list(fds))
        else:
            self.s.sendall(hdr + payload)

    def recv_exact(self, n):
        b = b""
        while len(b) < n:
            chunk = self.s.recv(n - len(b))
            if not chunk:
                raise Closed()
            b += chunk
        return b

    def reply(self, req):
        r, flags, size = struct.unpack("<III", self.recv_exact(12))
        if r != req or flags != 0x5:
            raise RuntimeError(f"reply to {req}: request {r} flags {flags:#x}")
        return self.recv_exact(size)

    def get_u64(self, req):
        self.send(req)
        return struct.unpack("<Q", self.reply(req))[0]

    def set(self, req, payload, fds=()):
        """A request that changes state: with REPLY_ACK, ask for and check the ack."""
        self.send(req, payload, fds, flags=0x1 | (NEED_REPLY if self.reply_ack else 0))
        if self.reply_ack:
            ack = struct.unpack("<Q", self.reply(req))[0]
            if ack != 0:
                raise RuntimeError(f"request {req} refused ({ack})")

    def mem_table(self, regions, fds=None):
        body = struct.pack("<II", len(regions), 0) + b"".join(struct.pack("<QQQQ", *r) for r in regions)
        return body, fds if fds is not None else [self.mem.fd] * len(regions)

    def vring_addr(self, q):
        return struct.pack("<IIQQQQ", q.index, 0, uva_of(q.desc), uva_of(q.used), uva_of(q.avail), 0)

    # -- setup as QEMU does it --
    def negotiate(self):
        offered = self.get_u64(GET_FEATURES)
        self.offered = offered
        if offered & (1 << F_PROTOCOL):
            pf = self.get_u64(GET_PROTOCOL_FEATURES)
            self.offered_protocol = pf
            want = pf if self.want_protocol is None else self.want_protocol & pf
            self.send(SET_PROTOCOL_FEATURES, struct.pack("<Q", want))
            self.reply_ack = bool(want & (1 << PF_REPLY_ACK))
        self.set(SET_OWNER, b"")
        self.features = offered if self.want_features is None else self.want_features & offered
        self.set(SET_FEATURES, struct.pack("<Q", self.features))

    def setup(self):
        self.negotiate()
        body, fds = self.mem_table(self.mem.regions())
        self.set(SET_MEM_TABLE, body, fds)
        for q in self.q.values():
            self.set(SET_VRING_CALL, struct.pack("<Q", q.index), [q.call])
            self.set(SET_VRING_NUM, struct.pack("<II", q.index, QSIZE))
            self.set(SET_VRING_BASE, struct.pack("<II", q.index, q.avail_idx))
            self.set(SET_VRING_ADDR, self.vring_addr(q))
            self.set(SET_VRING_KICK, struct.pack("<Q", q.index), [q.kick])
            if self.features & (1 << F_PROTOCOL):
                self.set(SET_VRING_ENABLE, struct.pack("<II", q.index, 1))
        self.post_rx(self.rx_count)
        return self

    def hdr_len(self): return 12 if self.features & ((1 << F_VERSION_1) | (1 << F_MRG_RXBUF)) else 10

    # -- the guest's driver --
    def post_rx(self, n, kick=True):
        q = self.q[RXQ]
        for _ in range(n):
            slot = self.rx_posted % QSIZE
            self.rx_posted += 1
            q.set_desc(slot, RX_BUFS + slot * self.rx_buf if self.rx_buf <= 2048 else BIG + 0x20000, self.rx_buf, D_WRITE)
            q.publish(slot, kick=False)
        if kick and n:
            os.eventfd_write(q.kick, 1)

    def transmit(self, frame, split=None, indirect=False, at=None):
        """The frame behind a zeroed virtio-net header in a TX chain; `split` = descriptor sizes."""
        q = self.q[TXQ]
        data = bytes(self.hdr_len()) + frame
        base = at if at is not None else (BIG if len(data) > 0x4000 else TX_BUFS + 0x4000 * (q.avail_idx % 8))
        self.mem.write(base, data)
        sizes = split or [len(data)]
        assert sum(sizes) == len(data)
        bufs, off = [], 0
        for n in sizes:
            bufs.append((base + off, n, 0))
            off += n
        if indirect:
            table = TX_BUFS - 0x1000
            for k, (addr, n, _) in enumerate(bufs):
                last = k == len(bufs) - 1
                q.set_desc(k, addr, n, 0 if last else D_NEXT, 0 if last else k + 1, table=table)
            head = q.alloc(1)
            q.set_desc(head, table, 16 * len(bufs), D_INDIRECT)
        else:
            head = q.chain(bufs)
        q.publish(head)
        return head

    def wait_tx(self, n=1):
        return self.q[TXQ].take_used(want=n)

    def receive(self, match, timeout=3.0):
        """The next frame from moat that `match` accepts (others are skipped)."""
        q = self.q[RXQ]
        end = time.time() + timeout
        pending = []
        while time.time() < end:
            pending += q.take_used(timeout=0.05)
            while pending:
                first_id, first_len = pending[0]
                buf = self.rx_addr(first_id)
                nbuf = struct.unpack("<H", self.mem.read(buf + 10, 2))[0] if self.hdr_len() == 12 else 1
                if first_len == 0:
                    pending.pop(0)
                    self.post_rx(1)
                    continue
                if len(pending) < nbuf:
                    break
                data = b"".join(self.mem.read(self.rx_addr(i), n) for i, n in pending[:nbuf])[self.hdr_len():]
                del pending[:nbuf]
                self.post_rx(nbuf)
                self.last_nbuf = nbuf
                if match(data):
                    return data
        raise TimeoutError("no matching frame from moat")

    def rx_addr(self, desc_id):
        return RX_BUFS + desc_id * self.rx_buf if self.rx_buf <= 2048 else BIG + 0x20000

    def expect_closed(self, timeout=3.0):
        """True once moat has closed the connection."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(4096):
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


# ---- frames --------------------------------------------------------------------------------------
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


GUEST_MAC = bytes.fromhex("525400123456")


def arp_request(a):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, socket.inet_aton(a.guest_ip), bytes(6), socket.inet_aton(a.gateway_ip))
    return b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + body


def ping(a, ident, size=56):
    data = bytes(i & 0xFF for i in range(size))
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + data
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x1234, 0x4000, 64, 1, 0, socket.inet_aton(a.guest_ip), socket.inet_aton(a.gateway_ip))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return bytes.fromhex(a.gateway_mac.replace(":", "")) + GUEST_MAC + b"\x08\x00" + ip + icmp


def is_arp_reply(f): return len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02"


def is_echo_reply(ident):
    return lambda f: len(f) >= 42 and f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 0 and struct.unpack("!H", f[38:40])[0] == ident


def ping_ok(fe, a, ident, size=56, **kw):
    fe.transmit(ping(a, ident, size), **kw)
    reply = fe.receive(is_echo_reply(ident))
    return len(reply) == 14 + 20 + 8 + size and reply[42:] == bytes(i & 0xFF for i in range(size))


# ---- cases ---------------------------------------------------------------------------------------
CASES = {}


def case(malformed=0):
    def reg(fn):
        CASES[fn.__name__.replace("_", "-")] = (fn, malformed)
        return fn
    return reg


@case()
def negotiation(a):
    fe = Frontend(a.socket)
    fe.negotiate()
    want = (1 << F_VERSION_1) | (1 << F_PROTOCOL) | (1 << F_MRG_RXBUF) | (1 << F_EVENT_IDX) | (1 << F_INDIRECT) | (1 << F_MTU) | (1 << F_CSUM) | (1 << F_GUEST_CSUM)
    ok = fe.offered == want and fe.offered_protocol == (1 << PF_REPLY_ACK) | (1 << PF_NET_MTU)
    ok &= fe.get_u64(GET_QUEUE_NUM) == 1
    fe.set(NET_SET_MTU, struct.pack("<Q", a.mtu))          # moat's own MTU: accepted
    fe.send(NET_SET_MTU, struct.pack("<Q", a.mtu + 1), flags=0x1 | NEED_REPLY)
    ok &= struct.unpack("<Q", fe.reply(NET_SET_MTU))[0] != 0   # larger: refused
    return ok, {"features": hex(fe.offered), "protocol": hex(fe.offered_protocol)}


@case()
def arp(a):
    fe = Frontend(a.socket).setup()
    fe.transmit(arp_request(a))
    reply = fe.receive(is_arp_reply)
    return socket.inet_ntoa(reply[28:32]) == a.gateway_ip, {"reply": reply[:42].hex()}


@case()
def ping_small(a):
    fe = Frontend(a.socket).setup()
    ok = all(ping_ok(fe, a, 0x100 + i) for i in range(5))
    return ok, {}


@case()
def ping_split_header(a):
    """The header in its own descriptor, the frame in pieces, one straddling the regions."""
    fe = Frontend(a.socket).setup()
    ok = ping_ok(fe, a, 0x201, 1000, split=[12, 30, 1000 + 42 - 30])
    ok &= ping_ok(fe, a, 0x202, 1000, split=[5, 7, 600, 442], at=CROSS)
    return ok, {}


@case()
def ping_indirect(a):
    fe = Frontend(a.socket).setup()
    return ping_ok(fe, a, 0x301, 300, split=[12, 100, 300 + 42 - 100], indirect=True), {}


@case()
def ping_big(a):
    """60000 bytes of ping: the reply spans many 2 KiB receive buffers (MRG_RXBUF)."""
    fe = Frontend(a.socket, rx_count=128).setup()
    ok = ping_ok(fe, a, 0x401, 60000, split=[12, 60042])
    return ok and fe.last_nbuf > 1, {"num_buffers": fe.last_nbuf}


@case()
def minimal_features(a):
    """VERSION_1 only (no EVENT_IDX, MRG_RXBUF, PROTOCOL_FEATURES): rings run once kicked, one buffer a frame."""
    fe = Frontend(a.socket, features=(1 << F_VERSION_1), rx_buf=65536 + 12, rx_count=1).setup()
    ok = ping_ok(fe, a, 0x501)
    ok &= ping_ok(fe, a, 0x502, 30000)
    return ok, {}


@case()
def legacy_header(a):
    """No VERSION_1 and no MRG_RXBUF: the 10-byte virtio-net header."""
    fe = Frontend(a.socket, features=0, rx_buf=65536 + 10, rx_count=1).setup()
    return fe.hdr_len() == 10 and ping_ok(fe, a, 0x503, 1000), {}


@case()
def rx_stopped_drops(a):
    """A reply for a guest whose receive ring was stopped is dropped (counted as a TX error)."""
    fe = Frontend(a.socket).setup()
    fe.send(GET_VRING_BASE, struct.pack("<II", RXQ, 0))
    fe.reply(GET_VRING_BASE)
    fe.transmit(ping(a, 0x504))
    fe.wait_tx()
    time.sleep(0.2)
    return fe.q[RXQ].used_idx() == 0, {}


@case()
def no_rx_buffers(a):
    """A reply waits for the guest's receive buffers, and goes out when they are posted and kicked."""
    fe = Frontend(a.socket, rx_count=0).setup()
    fe.transmit(ping(a, 0x601))
    fe.wait_tx()
    time.sleep(0.2)
    if fe.q[RXQ].used_idx() != 0:
        return False, {"error": "used without buffers"}
    fe.post_rx(8)
    return bool(fe.receive(is_echo_reply(0x601))), {}


@case()
def interrupts(a):
    """Calls: suppressed by NO_INTERRUPT (no EVENT_IDX), and by used_event (EVENT_IDX)."""
    detail = {}
    fe = Frontend(a.socket, features=(1 << F_VERSION_1) | (1 << F_PROTOCOL) | (1 << F_MRG_RXBUF)).setup()
    txq = fe.q[TXQ]
    ok = ping_ok(fe, a, 0x701)
    detail["calls"] = c1 = txq.calls()
    fe.mem.set_u16(txq.avail, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    ok &= ping_ok(fe, a, 0x702)
    detail["calls_suppressed"] = c2 = txq.calls()
    fe.close()
    fe = Frontend(a.socket).setup()
    txq = fe.q[TXQ]
    fe.mem.set_u16(txq.avail + 4 + 2 * QSIZE, 0xFFFF)  # used_event far away
    ok &= ping_ok(fe, a, 0x703)
    ok &= ping_ok(fe, a, 0x704)
    detail["calls_event_far"] = c3 = txq.calls()
    fe.mem.set_u16(txq.avail + 4 + 2 * QSIZE, txq.used_idx())  # the next completion
    ok &= ping_ok(fe, a, 0x705)
    detail["calls_event_next"] = c4 = txq.calls()
    # The first completion after a start is always signalled (nothing to compare it with).
    return ok and c1 >= 1 and c2 == 0 and c3 <= 1 and c4 == 1, detail


@case()
def qemu_order(a):
    """QEMU 7.2's order: calls, errs and SET_VRING_ENABLE(1) at connection, before SET_FEATURES;
    then NET_SET_MTU, and at the guest driver's start the rest, with no second ENABLE."""
    fe = Frontend(a.socket)
    offered = fe.get_u64(GET_FEATURES)
    fe.send(SET_PROTOCOL_FEATURES, struct.pack("<Q", fe.get_u64(GET_PROTOCOL_FEATURES)))
    fe.reply_ack = True
    fe.send(SET_OWNER)
    fe.get_u64(GET_FEATURES)
    for q in fe.q.values():
        fe.send(SET_VRING_CALL, struct.pack("<Q", q.index), [q.call])
        fe.send(SET_VRING_ERR, struct.pack("<Q", q.index), [os.eventfd(0)])
    for q in fe.q.values():
        fe.send(SET_VRING_ENABLE, struct.pack("<II", q.index, 1))
    fe.set(NET_SET_MTU, struct.pack("<Q", a.mtu))
    fe.features = offered
    fe.set(SET_FEATURES, struct.pack("<Q", offered))
    body, fds = fe.mem_table(fe.mem.regions())
    fe.set(SET_MEM_TABLE, body, fds)
    for q in fe.q.values():
        fe.set(SET_VRING_NUM, struct.pack("<II", q.index, QSIZE))
        fe.set(SET_VRING_BASE, struct.pack("<II", q.index, 0))
        fe.set(SET_VRING_ADDR, fe.vring_addr(q))
        fe.set(SET_VRING_KICK, struct.pack("<Q", q.index), [q.kick])
        fe.set(SET_VRING_CALL, struct.pack("<Q", q.index), [q.call])
    fe.post_rx(16)
    return ping_ok(fe, a, 0x7F1), {}


@case()
def get_vring_base(a):
    """GET_VRING_BASE stops a ring and reports where it stopped; the ring restarts from there."""
    fe = Frontend(a.socket).setup()
    ok = ping_ok(fe, a, 0x801)
    txq = fe.q[TXQ]
    fe.send(GET_VRING_BASE, struct.pack("<II", TXQ, 0))
    idx, base = struct.unpack("<II", fe.reply(GET_VRING_BASE))
    ok &= idx == TXQ and base == txq.avail_idx
    fe.transmit(ping(a, 0x802))  # the ring is stopped: not taken
    time.sleep(0.2)
    ok &= txq.used_idx() == base
    fe.set(SET_VRING_BASE, struct.pack("<II", TXQ, base))
    fe.set(SET_VRING_ADDR, fe.vring_addr(txq))
    fe.set(SET_VRING_CALL, struct.pack("<Q", TXQ), [txq.call])
    fe.set(SET_VRING_KICK, struct.pack("<Q", TXQ), [txq.kick])
    ok &= bool(fe.receive(is_echo_reply(0x802)))
    return ok, {"base": base}


@case()
def reconnect(a):
    fe = Frontend(a.socket).setup()
    ok = ping_ok(fe, a, 0x901)
    fe.close()
    fe = Frontend(a.socket).setup()
    ok &= ping_ok(fe, a, 0x902)
    # The newest front-end wins: the old connection is closed, the new one served.
    newer = Frontend(a.socket).setup()
    ok &= fe.expect_closed()
    ok &= ping_ok(newer, a, 0x903)
    return ok, {}


@case()
def memory_sealed(a):
    """moat seals the memory it maps against shrinking (a shrunk file would fault on access)."""
    fe = Frontend(a.socket).setup()
    try:
        os.ftruncate(fe.mem.fd, MEM // 2)
        return False, {"error": "shrinking the guest memory was allowed"}
    except PermissionError:
        return ping_ok(fe, a, 0xA01), {}


# -- hostile chains: each consumed (len 0), counted once, and a good frame goes through after --
def hostile_chain(a, build, count=1):
    fe = Frontend(a.socket).setup()
    txq = fe.q[TXQ]
    heads = build(fe, txq)
    if heads is None:
        used = []
    else:
        txq.publish(heads if isinstance(heads, int) else heads[0])
        used = fe.wait_tx()
    ok = heads is None or (len(used) == 1 and used[0][1] == 0)
    ok &= ping_ok(fe, a, 0xB00 + len(used))
    return ok, {"used": used}


def tx_head(txq, bufs):
    return txq.chain(bufs)


def tx_with_header(a, flags, gso_type, csum_start, csum_offset):
    """A ping frame behind a virtio-net header saying what the case says (CSUM is negotiated)."""
    def build(fe, q):
        data = struct.pack("<BBHHHHH", flags, gso_type, 0, 0, csum_start, csum_offset, 0) + ping(a, 0xC01)
        fe.mem.write(TX_BUFS, data)
        return tx_head(q, [(TX_BUFS, len(data), 0)])
    return hostile_chain(a, build)


@case(malformed=1)
def csum_beyond_frame(a):
    """NEEDS_CSUM with a checksum to fill in past the frame's end."""
    return tx_with_header(a, 1, 0, 60000, 6)


@case(malformed=1)
def gso_not_offered(a):
    """A superframe (GSO TCPV4), which was never offered."""
    return tx_with_header(a, 0, 1, 0, 0)


@case(malformed=1)
def head_out_of_range(a):
    return hostile_chain(a, lambda fe, q: QSIZE + 7)


@case(malformed=1)
def next_out_of_range(a):
    return hostile_chain(a, lambda fe, q: (q.set_desc(0, TX_BUFS, 12, D_NEXT, QSIZE), 0)[1])


@case(malformed=1)
def descriptor_loop(a):
    def build(fe, q):
        q.set_desc(10, TX_BUFS, 12, D_NEXT, 11)
        q.set_desc(11, TX_BUFS + 12, 100, D_NEXT, 10)
        return 10
    return hostile_chain(a, build)


@case(malformed=1)
def self_loop(a):
    return hostile_chain(a, lambda fe, q: (q.set_desc(20, TX_BUFS, 64, D_NEXT, 20), 20)[1])


@case(malformed=1)
def address_outside_memory(a):
    return hostile_chain(a, lambda fe, q: tx_head(q, [(GPA + MEM - 16, 64, 0)]))


@case(malformed=1)
def address_below_memory(a):
    return hostile_chain(a, lambda fe, q: tx_head(q, [(0x1000, 64, 0)]))


@case(malformed=1)
def length_wraps_u32(a):
    """addr + len overflows 32 bits (and lands inside memory if truncated)."""
    return hostile_chain(a, lambda fe, q: tx_head(q, [(0xFFFFFF00, 0x10000100 + 64, 0)]))


@case(malformed=1)
def length_wraps_u64(a):
    return hostile_chain(a, lambda fe, q: tx_head(q, [(0xFFFFFFFFFFFFFFC0, 0x100, 0)]))


@case(malformed=1)
def oversized_chain(a):
    """More than a ring slot (64 KiB) after the header: 4 x 20000 bytes."""
    return hostile_chain(a, lambda fe, q: tx_head(q, [(BIG, 12, 0)] + [(BIG + 12 + 20000 * i, 20000, 0) for i in range(4)]))


@case(malformed=1)
def write_only_in_tx(a):
    return hostile_chain(a, lambda fe, q: tx_head(q, [(TX_BUFS, 12, 0), (TX_BUFS + 12, 100, D_WRITE)]))


@case(malformed=1)
def header_only(a):
    return hostile_chain(a, lambda fe, q: tx_head(q, [(TX_BUFS, 12, 0)]))


@case(malformed=1)
def runt_after_header(a):
    return hostile_chain(a, lambda fe, q: tx_head(q, [(TX_BUFS, 12 + 13, 0)]))


def indirect(q, table, length, flags=D_INDIRECT):
    head = q.alloc(1)
    q.set_desc(head, table, length, flags)
    return head


@case(malformed=1)
def indirect_nested(a):
    def build(fe, q):
        t1, t2 = TX_BUFS - 0x1000, TX_BUFS - 0x800
        q.set_desc(0, TX_BUFS, 100, 0, table=t2)
        q.set_desc(0, t2, 16, D_INDIRECT, table=t1)
        return indirect(q, t1, 16)
    return hostile_chain(a, build)


def indirect_table(entries, length=None, flags=D_INDIRECT):
    """A chain whose head points at an indirect table of `entries` (addr, len, flags, next)."""
    def build(fe, q):
        t = TX_BUFS - 0x1000
        for i, e in enumerate(entries):
            q.set_desc(i, *e, table=t)
        return indirect(q, t, 16 * len(entries) if length is None else length, flags)
    return build


@case(malformed=1)
def indirect_misaligned(a):
    """A table length that is not a whole number of descriptors."""
    return hostile_chain(a, indirect_table([(TX_BUFS, 100, 0, 0)], length=20))


@case(malformed=1)
def indirect_out_of_range(a):
    return hostile_chain(a, lambda fe, q: indirect(q, GPA + MEM - 32, 64))


@case(malformed=1)
def indirect_next_out_of_table(a):
    return hostile_chain(a, indirect_table([(TX_BUFS, 12, D_NEXT, 5), (TX_BUFS + 12, 100, 0, 0)]))


@case(malformed=1)
def indirect_loop(a):
    return hostile_chain(a, indirect_table([(TX_BUFS, 12, D_NEXT, 1), (TX_BUFS + 12, 100, D_NEXT, 0)]))


@case(malformed=1)
def indirect_with_next(a):
    return hostile_chain(a, indirect_table([(TX_BUFS, 100, 0, 0)], flags=D_INDIRECT | D_NEXT))


@case(malformed=1)
def indirect_not_negotiated(a):
    fe = Frontend(a.socket, features=(1 << F_VERSION_1) | (1 << F_PROTOCOL) | (1 << F_MRG_RXBUF)).setup()
    q = fe.q[TXQ]
    t = TX_BUFS - 0x1000
    fe.mem.write(TX_BUFS, bytes(12) + ping(a, 0xC01))
    q.set_desc(0, TX_BUFS, 12 + 98, 0, table=t)
    q.publish(indirect(q, t, 16))
    used = fe.wait_tx()
    return len(used) == 1 and used[0][1] == 0 and ping_ok(fe, a, 0xC02), {"used": used}


@case(malformed=1)
def avail_index_jump(a):
    """An avail index more than a ring ahead is not acted on, counted once, until it is sane."""
    fe = Frontend(a.socket).setup()
    q = fe.q[TXQ]
    ok = ping_ok(fe, a, 0xD01)
    fe.mem.set_u16(q.avail + 2, q.avail_idx + QSIZE + 10)
    for _ in range(3):
        os.eventfd_write(q.kick, 1)
        time.sleep(0.1)
    ok &= q.used_idx() == q.avail_idx
    fe.mem.set_u16(q.avail + 2, q.avail_idx)
    ok &= ping_ok(fe, a, 0xD02)
    return ok, {}


@case(malformed=1)
def rx_readable_buffer(a):
    """A receive buffer the device may not write is returned empty, counted; the next one is used."""
    fe = Frontend(a.socket, rx_count=0).setup()
    rxq = fe.q[RXQ]
    rxq.set_desc(0, RX_BUFS, 2048, 0)    # no WRITE
    rxq.publish(0, kick=False)
    fe.rx_posted = 1
    fe.post_rx(8)
    ok = ping_ok(fe, a, 0xE01)
    return ok, {}


@case(malformed=1)
def rx_buffer_outside_memory(a):
    fe = Frontend(a.socket, rx_count=0).setup()
    rxq = fe.q[RXQ]
    rxq.set_desc(0, GPA + MEM - 100, 2048, D_WRITE)
    rxq.publish(0, kick=False)
    fe.rx_posted = 1
    fe.post_rx(8)
    return ping_ok(fe, a, 0xE02), {}


# -- hostile messages: the connection is dropped and counted; a new front-end is served --------
def hostile_message(a, act, setup=False, **kw):
    fe = Frontend(a.socket, **kw)
    if setup:
        fe.setup()
    else:
        fe.negotiate()
    try:
        act(fe)
    except (BrokenPipeError, ConnectionResetError, Closed):
        pass
    closed = fe.expect_closed()
    fe.close()
    after = Frontend(a.socket).setup()
    return closed and ping_ok(after, a, 0xF00), {"closed": closed}


@case(malformed=1)
def msg_size_beyond_payload(a):
    """SET_VRING_NUM claiming 64 bytes: refused from the header, not waited for."""
    return hostile_message(a, lambda fe: fe.send(SET_VRING_NUM, struct.pack("<II", 0, 256), size=64))


@case(malformed=1)
def msg_size_huge(a):
    return hostile_message(a, lambda fe: fe.send(99, b"", size=0x7FFFFFFF))


@case(malformed=1)
def msg_truncated(a):
    """An unknown request promising 100 bytes, 8 sent, then the front-end goes away."""
    def act(fe):
        fe.send(99, b"x" * 8, size=100)
        fe.s.shutdown(socket.SHUT_WR)
    return hostile_message(a, act)


@case(malformed=1)
def msg_bad_version(a):
    return hostile_message(a, lambda fe: fe.send(GET_FEATURES, flags=0x2))


@case(malformed=1)
def mem_nine_regions(a):
    def act(fe):
        regions = [(GPA + i * 0x10000, 0x10000, UVA[0] + i * 0x10000, i * 0x10000) for i in range(9)]
        body, _ = fe.mem_table(regions)
        fe.send(SET_MEM_TABLE, body, [fe.mem.fd] * 8)
    return hostile_message(a, act)


@case(malformed=1)
def mem_count_mismatch(a):
    """nregions says 3, the size carries 2."""
    def act(fe):
        body, fds = fe.mem_table(fe.mem.regions())
        fe.send(SET_MEM_TABLE, struct.pack("<II", 3, 0) + body[8:], fds)
    return hostile_message(a, act)


@case(malformed=1)
def mem_fd_count_mismatch(a):
    def act(fe):
        body, _ = fe.mem_table(fe.mem.regions())
        fe.send(SET_MEM_TABLE, body, [fe.mem.fd])
    return hostile_message(a, act)


@case(malformed=1)
def mem_offset_overflow(a):
    def act(fe):
        body, fds = fe.mem_table([(GPA, 0x100000, UVA[0], 0xFFFFFFFFFFFFF000)])
        fe.send(SET_MEM_TABLE, body, fds)
    return hostile_message(a, act)


@case(malformed=1)
def mem_beyond_file(a):
    def act(fe):
        body, fds = fe.mem_table([(GPA, MEM, UVA[0], 0x1000)])
        fe.send(SET_MEM_TABLE, body, fds)
    return hostile_message(a, act)


@case(malformed=1)
def mem_gpa_overflow(a):
    def act(fe):
        body, fds = fe.mem_table([(0xFFFFFFFFFFFFF000, 0x100000, UVA[0], 0)])
        fe.send(SET_MEM_TABLE, body, fds)
    return hostile_message(a, act)


@case(malformed=1)
def mem_not_sealable(a):
    """A memfd that cannot be sealed against shrinking is refused."""
    def act(fe):
        body, fds = fe.mem_table(fe.mem.regions())
        fe.send(SET_MEM_TABLE, body, fds)
    return hostile_message(a, act, sealable=False)


@case(malformed=1)
def mem_not_a_file(a):
    def act(fe):
        r, w = os.pipe()
        body, _ = fe.mem_table([(GPA, 0x1000, UVA[0], 0)])
        fe.send(SET_MEM_TABLE, body, [r])
    return hostile_message(a, act)


def bad_vring_num(index, num):
    return lambda a: hostile_message(a, lambda fe: fe.send(SET_VRING_NUM, struct.pack("<II", index, num)))


# Ring sizes: zero, not a power of two, beyond 32768; and a ring index moat does not have.
for _name, _index, _num in [("vring-num-zero", 0, 0), ("vring-num-not-power-of-two", 1, 100),
                            ("vring-num-too-large", 0, 65536), ("vring-index-out-of-range", 2, 256)]:
    CASES[_name] = (bad_vring_num(_index, _num), 1)


def bad_vring_addr(a, addrs):
    """SET_VRING_ADDR for the TX ring after a good memory table and size; `addrs(q)` = desc, used, avail."""
    def act(fe):
        body, fds = fe.mem_table(fe.mem.regions())
        fe.set(SET_MEM_TABLE, body, fds)
        fe.set(SET_VRING_NUM, struct.pack("<II", TXQ, QSIZE))
        fe.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", TXQ, 0, *addrs(fe.q[TXQ]), 0))
    return hostile_message(a, act)


@case(malformed=1)
def vring_addr_outside_memory(a):
    return bad_vring_addr(a, lambda q: (UVA[1] + MEM - SPLIT - 0x800, uva_of(q.used), uva_of(q.avail)))


@case(malformed=1)
def vring_addr_by_guest_address(a):
    """Ring addresses are the VMM's addresses: a guest physical address does not translate."""
    return bad_vring_addr(a, lambda q: (q.desc, q.used, q.avail))


@case(malformed=1)
def vring_addr_misaligned(a):
    return bad_vring_addr(a, lambda q: (uva_of(q.desc) + 8, uva_of(q.used), uva_of(q.avail)))


@case(malformed=1)
def mem_table_drops_running_ring(a):
    """A new memory table that no longer holds a running ring."""
    def act(fe):
        body, fds = fe.mem_table([(GPA + SPLIT, MEM - SPLIT, UVA[1], SPLIT)])
        fe.send(SET_MEM_TABLE, body, fds)
    return hostile_message(a, act, setup=True)


@case(malformed=1)
def features_not_offered(a):
    return hostile_message(a, lambda fe: fe.send(SET_FEATURES, struct.pack("<Q", (1 << F_VERSION_1) | (1 << F_HOST_TSO4))))


@case(malformed=1)
def kick_not_an_eventfd(a):
    def act(fe):
        r, w = os.pipe()
        fe.send(SET_VRING_KICK, struct.pack("<Q", TXQ), [r])
    return hostile_message(a, act)


@case(malformed=1)
def kick_fd_missing(a):
    return hostile_message(a, lambda fe: fe.send(SET_VRING_KICK, struct.pack("<Q", TXQ)))


@case(malformed=1)
def too_many_fds(a):
    def act(fe):
        fds = [os.eventfd(0) for _ in range(9)]
        fe.send(SET_VRING_CALL, struct.pack("<Q", TXQ), fds)
    return hostile_message(a, act)


@case(malformed=1)
def vring_num_while_running(a):
    return hostile_message(a, lambda fe: fe.send(SET_VRING_NUM, struct.pack("<II", TXQ, 128)), setup=True)


# -- fuzzing: random chains and messages; moat must keep serving (counts not predicted) -----------
@case(malformed=None)
def fuzz_chains(a):
    import random
    rng = random.Random(a.seed)
    fe = Frontend(a.socket).setup()
    txq, rxq = fe.q[TXQ], fe.q[RXQ]
    addrs = [GPA - 64, GPA, GPA + SPLIT - 8, TX_BUFS, GPA + MEM - 16, 0, 0xFFFFFFFFFFFFFFF0, 0xFFFFFF00]
    for round_ in range(200):
        for i in range(QSIZE):
            txq.set_desc(i, (rng.choice(addrs) + rng.randrange(0, 4096)) & 0xFFFFFFFFFFFFFFFF, rng.choice([0, 1, 12, 100, 4096, 70000, 0xFFFFFFFF]),
                         rng.randrange(0, 8), rng.randrange(0, QSIZE + 4))
        for _ in range(rng.randrange(1, 8)):
            txq.publish(rng.randrange(0, QSIZE + 2), kick=False)
        if rng.random() < 0.1:  # the avail index itself, now and then
            fe.mem.set_u16(txq.avail + 2, rng.randrange(0, 65536))
            time.sleep(0.01)
            fe.mem.set_u16(txq.avail + 2, txq.avail_idx)
        os.eventfd_write(txq.kick, 1)
        txq.take_used(timeout=0.5, want=1)
    # The ring may hold entries moat never consumed (an index set back): start afresh.
    fe.close()
    fe = Frontend(a.socket).setup()
    return ping_ok(fe, a, 0x1101), {}


@case(malformed=None)
def fuzz_messages(a):
    import random
    rng = random.Random(a.seed)
    dropped = 0
    fe = Frontend(a.socket).setup()
    for _ in range(400):
        req = rng.choice([rng.randrange(0, 45), SET_MEM_TABLE, SET_VRING_ADDR, SET_VRING_NUM, SET_VRING_KICK, SET_VRING_BASE, GET_VRING_BASE])
        size = rng.choice([0, 8, 16, 40, 8 + 32 * rng.randrange(0, 10), rng.randrange(0, 300)])
        payload = bytes(rng.randrange(0, 256) for _ in range(size))
        if rng.random() < 0.5 and size >= 8:  # plausible indexes and counts
            payload = struct.pack("<II", rng.randrange(0, 3), rng.choice([0, 1, 2, 256, 100, 65536])) + payload[8:]
        fds = [rng.choice([fe.mem.fd, fe.q[TXQ].kick]) for _ in range(rng.choice([0, 0, 1, 2]))]
        flags = rng.choice([0x1, 0x1, 0x9, 0x0, 0x5])
        try:
            fe.send(req, payload, fds, flags=flags)
            fe.s.setblocking(False)
            try:
                gone = fe.s.recv(4096) == b""
            except BlockingIOError:
                gone = False
            fe.s.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            gone = True
        if gone:
            dropped += 1
            fe.close()
            fe = Frontend(a.socket).setup()
    fe.close()
    fe = Frontend(a.socket).setup()
    return ping_ok(fe, a, 0x1102), {"reconnects": dropped}


@case()
def unknown_requests_answered(a):
    """Requests not offered: failure when a reply is asked for, else ignored; fds closed."""
    fe = Frontend(a.socket).setup()
    fe.send(99, b"abcdefgh", flags=0x1 | NEED_REPLY)
    ok = struct.unpack("<Q", fe.reply(99))[0] != 0
    fe.send(SET_LOG_BASE, struct.pack("<QQ", 4096, 0), [os.eventfd(0)], flags=0x1 | NEED_REPLY)
    ok &= struct.unpack("<Q", fe.reply(SET_LOG_BASE))[0] != 0
    fe.send(SET_LOG_FD, b"", [os.eventfd(0)])
    fe.send(77, b"")
    ok &= fe.get_u64(GET_QUEUE_NUM) == 1  # still talking
    ok &= ping_ok(fe, a, 0x1001)
    return ok, {}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--guest-ip", required=True)
    p.add_argument("--gateway-ip", required=True)
    p.add_argument("--gateway-mac", required=True)
    p.add_argument("--mtu", type=int, default=65520)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("cases", nargs="*")
    a = p.parse_args()
    if a.cases == ["list"]:
        print(json.dumps({name: m for name, (_, m) in CASES.items()}))
        return
    for name in a.cases or list(CASES):
        fn, malformed = CASES[name]
        try:
            ok, detail = fn(a)
        except Exception as e:  # a case that cannot go on is a failed case, with the reason
            ok, detail = False, {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({"case": name, "ok": bool(ok), "malformed": malformed, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
