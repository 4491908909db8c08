// packet.cc — the attach link (link.h): a network interface whose other side someone else holds,
// served from its kernel side with an AF_PACKET socket.
//
// The interface is a TAP device whose fd a VMM keeps (Firecracker opens /dev/net/tun with
// TUNSETIFF on its `host_dev_name`: the TAP can be held by one process only, so moat cannot open
// it too), or a veth end whose peer is the guest's. What the holder writes to the TAP's fd (the
// guest's frames) is received on the netdev, where moat reads it; what moat sends on the netdev
// is delivered to the holder (to the guest). Likewise across a veth pair.
//
//   socket    AF_PACKET, SOCK_RAW, bound to the interface's index with ETH_P_ALL (created with
//             protocol 0, so nothing is queued before the bind); no virtio-net header, no
//             promiscuous mode: TAP and veth hand a packet socket every frame whatever its
//             destination MAC (there is no hardware filter), and a point-to-point link carries
//             only the guest's frames — on a shared segment (a bridge, a NIC) the gateway would
//             serve whoever sent, which is why other kinds of interface are refused.
//   receive   a TPACKET_V2 ring (PACKET_MMAP): the kernel copies each frame into a ring frame and
//             wakes the socket per frame; recv() copies it into the engine's slot and hands the
//             ring frame back. TPACKET_V3 was measured and not taken: it wakes once per retired
//             block, so a lone frame (a ping, a TCP ACK) waits for the block timer — 0.9 ms on
//             average and up to 3 ms with the smallest timeout (1 ms, a jiffy at HZ=250),
//             against 9 µs here. Frames larger than a ring frame (TCP segmentation offload, see
//             below) come whole through the socket's queue (PACKET_COPY_THRESH: the ring frame
//             says TP_STATUS_COPY and a recv() reads the frame).
//   send      batched sendmmsg(2) of the engine's TX slots (iovecs into the slots, no copy here),
//             once per flush or per 64 frames, with PACKET_QDISC_BYPASS: a TAP or veth does not
//             stop its queue, so a qdisc adds a lock and no back-pressure. Measured toward a
//             guest on a veth through the engine (iperf3, 6 runs each on a busy 2-CPU machine):
//             batched + bypass 2.45 Gbit/s on average, one send per frame 1.71, batched through
//             the qdisc 1.89 (and frames lost with ENOBUFS). When the socket's send buffer is full,
//             the rest of the batch is copied aside and sent on EPOLLOUT.
//   ignored   frames sent on the interface from the host's side (PACKET_OUTGOING: the host's
//             stack talking on it; moat's own frames never loop back to its socket):
//             PACKET_IGNORE_OUTGOING where the kernel has it (4.20+), else by sll_pkttype.
//
// A VMM's guest hands its frames over with checksum and segmentation offloads (Firecracker
// offers VIRTIO_NET_F_CSUM and HOST_TSO4/6; a veth peer's stack does the same): a frame may carry
// only the pseudo-header sum in its TCP/UDP checksum (the ring frame says
// TP_STATUS_CSUMNOTREADY), and a TCP frame may be a superframe of up to 64 KiB. The engine
// expects complete checksums and frames within the MTU, so the checksum is completed here, and a
// TCP superframe is cut into segments of the MTU (IPv4 ID and TCP sequence advanced, FIN/PSH on
// the last segment only, CWR on the first), each with its checksums. Any other frame longer
// than the interface's MTU (plus the Ethernet header, plus a VLAN tag when it has one), or one
// the kernel could not hand over whole, is malformed: dropped and counted (LINK_MALFORMED).
//
// A veth end is given receive packet steering where it has none (steerFlows): without it the
// kernel hands a guest's frames over out of order whenever the guest sends from two CPUs, and
// the engine's TCP, which keeps no out-of-order queue, has them sent again.
//
// The interface must be up: the link brings it up (and says so if it cannot). A netlink socket
// (RTMGRP_LINK) follows it: a carrier coming up is a peer (LINK_PEERS: the VMM opened the TAP,
// the veth's peer came up); when the interface is deleted (a TAP that was not persistent goes
// with the process that held it), frames toward the guest are dropped and counted
// (LINK_TX_ERRORS) until an interface of the same name appears again, which is then bound and
// brought up — a VMM restarting is served again.
#include <net/if.h>  // before the linux/ headers (linux/if.h then leaves glibc's definitions be)
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/ethtool.h>
#include <linux/if_arp.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "link.h"
#include "layout.gen.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

namespace moat {

namespace {

constexpr uint32_t ETH_HDR = 14, VLAN_TAG = 4;
constexpr uint32_t MAX_SUPERFRAME = 65535 + ETH_HDR + VLAN_TAG;  // an IP packet of 64 KiB, framed
constexpr uint32_t RING_BYTES = 4u << 20;                          // the RX ring, whatever the frame size
constexpr uint32_t MAX_RING_FRAME = 64u << 10;                     // larger frames come through the queue
constexpr uint32_t TX_BATCH = 64;
constexpr int RCVBUF = 8 << 20, SNDBUF = 4 << 20;

// Where the kernel puts a frame's Ethernet header in a TPACKET_V2 ring frame (SOCK_RAW, no
// reserve): TPACKET_ALIGN(TPACKET2_HDRLEN + 16) - 14. Ring frames are sized with it.
constexpr uint32_t RING_MAC_OFFSET = TPACKET_ALIGN(TPACKET2_HDRLEN + 16) - ETH_HDR;

void setIfname(ifreq& ifr, const std::string& name) {
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
}

std::string readSmall(const std::string& path) {
  char b[256];
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  ssize_t n = read(fd, b, sizeof b - 1);
  ::close(fd);
  return n > 0 ? std::string(b, static_cast<size_t>(n)) : "";
}

// A veth end receives what its peer sends on the backlog of whichever CPU sent it, so frames a
// guest sends from two CPUs (its application's, and the softirq that sends on an ACK's arrival)
// are often handed over out of order — and the engine's TCP keeps no out-of-order queue: it
// answers with duplicate ACKs and the guest retransmits. Receive packet steering puts each flow
// on one CPU, in order: it is turned on (every CPU) on the veth's receive queues where it is off.
// Only when /sys is this namespace's (the same index under the name); a TAP written by its VMM's
// thread needs none.
void steerFlows(const std::string& name, int index) {
  const std::string dir = "/sys/class/net/" + name;
  if (std::atoi(readSmall(dir + "/ifindex").c_str()) != index) return;
  const long cpus = sysconf(_SC_NPROCESSORS_CONF);
  if (cpus <= 1) return;
  std::string mask;  // 32-bit hex groups, most significant first, comma-separated
  for (long hi = (cpus - 1) / 32; hi >= 0; hi--) {
    const long bits = std::min<long>(32, cpus - hi * 32);
    char g[16];
    snprintf(g, sizeof g, "%s%x", mask.empty() ? "" : ",", bits == 32 ? 0xffffffffu : (1u << bits) - 1);
    mask += g;
  }
  DIR* d = opendir((dir + "/queues").c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    if (strncmp(e->d_name, "rx-", 3) != 0) continue;
    const std::string path = dir + "/queues/" + e->d_name + "/rps_cpus";
    const std::string cur = readSmall(path);
    if (cur.find_first_not_of("0,\n") != std::string::npos) continue;  // set already: the operator's
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) continue;
    if (write(fd, mask.data(), mask.size()) < 0) {}
    ::close(fd);
  }
  closedir(d);
}

// ---- checksums and segments -----------------------------------------------------------------------

uint64_t sumBytes(const uint8_t* p, size_t n, uint64_t acc) {
  while (n >= 4) {
    uint32_t w;
    memcpy(&w, p, 4);
    acc += w;
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t h;
    memcpy(&h, p, 2);
    acc += h;
    p += 2;
    n -= 2;
  }
  if (n) {
    uint8_t last[2] = {p[0], 0};
    uint16_t h;
    memcpy(&h, last, 2);
    acc += h;
  }
  return acc;
}

// The one's complement of the folded sum (network byte order, as stored).
uint16_t finish(uint64_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc);
}

// Where an IP packet's TCP or UDP header is.
struct L4 {
  bool v4 = false;
  uint32_t ip = 0;      // offset of the IP header
  uint32_t l4 = 0;      // offset of the TCP/UDP header
  uint32_t end = 0;     // end of the IP packet (the IP header's length, not the frame's)
  uint8_t proto = 0;    // 6 or 17
};

// Parse an untagged IPv4/IPv6 frame down to its TCP or UDP header. False for anything else, or
// headers that do not fit in the frame.
bool findL4(const uint8_t* f, uint32_t len, L4& out) {
  if (len < ETH_HDR + 20) return false;
  const uint16_t type = static_cast<uint16_t>(f[12] << 8 | f[13]);
  const uint32_t ip = ETH_HDR;
  uint32_t l4, end;
  uint8_t proto;
  if (type == ETH_P_IP) {
    if ((f[ip] >> 4) != 4) return false;
    const uint32_t ihl = (f[ip] & 15u) * 4;
    const uint32_t total = static_cast<uint32_t>(f[ip + 2] << 8 | f[ip + 3]);
    const uint16_t frag = static_cast<uint16_t>(f[ip + 6] << 8 | f[ip + 7]);
    if (ihl < 20 || total < ihl || ip + total > len || (frag & 0x3fff) != 0) return false;  // MF or an offset: a fragment
    l4 = ip + ihl;
    end = ip + total;
    proto = f[ip + 9];
  } else if (type == ETH_P_IPV6) {
    if (len < ip + 40 || (f[ip] >> 4) != 6) return false;
    end = ip + 40 + static_cast<uint32_t>(f[ip + 4] << 8 | f[ip + 5]);
    if (end > len) return false;
    proto = f[ip + 6];
    l4 = ip + 40;
    // Hop-by-hop, routing and destination options may come first (a fragment header may not).
    while (proto == 0 || proto == 43 || proto == 60) {
      if (l4 + 8 > end) return false;
      proto = f[l4];
      l4 += (f[l4 + 1] + 1u) * 8;
    }
  } else {
    return false;
  }
  if (proto == IPPROTO_TCP) {
    if (l4 + 20 > end || l4 + (f[l4 + 12] >> 4) * 4u > end || (f[l4 + 12] >> 4) < 5) return false;
  } else if (proto == IPPROTO_UDP) {
    if (l4 + 8 > end) return false;
  } else {
    return false;
  }
  out.v4 = type == ETH_P_IP;
  out.ip = ip;
  out.l4 = l4;
  out.end = end;
  out.proto = proto;
  return true;
}

// Fill the TCP/UDP checksum of the packet `p` describes (the frame's bytes are in `f`).
void fillL4Checksum(uint8_t* f, const L4& p) {
  const uint32_t l4len = p.end - p.l4;
  uint8_t* sum = f + p.l4 + (p.proto == IPPROTO_TCP ? 16 : 6);
  sum[0] = sum[1] = 0;
  uint64_t acc = p.v4 ? sumBytes(f + p.ip + 12, 8, 0) : sumBytes(f + p.ip + 8, 32, 0);
  acc += htons(p.proto);
  acc += htonl(l4len);
  acc = sumBytes(f + p.l4, l4len, acc);
  uint16_t c = finish(acc);
  if (c == 0 && p.proto == IPPROTO_UDP) c = 0xffff;  // 0 means "no checksum" in UDP
  memcpy(sum, &c, 2);
}

void fillIp4Checksum(uint8_t* f, uint32_t ip) {
  const uint32_t ihl = (f[ip] & 15u) * 4;
  f[ip + 10] = f[ip + 11] = 0;
  const uint16_t c = finish(sumBytes(f + ip, ihl, 0));
  memcpy(f + ip + 10, &c, 2);
}

// A TCP superframe being cut into segments of at most `mss` payload bytes.
struct Superframe {
  std::vector<uint8_t> buf;  // the whole frame
  L4 p;
  uint32_t hdr = 0;          // Ethernet + IP + TCP header bytes
  uint32_t off = 0;          // payload bytes already handed out
  uint32_t payload = 0;
  uint32_t mss = 0;
  uint32_t seq = 0;
  uint16_t ipId = 0;
  uint32_t index = 0;
  bool active = false;
};

// ---- the link -------------------------------------------------------------------------------------

class PacketLink final : public Link {
 public:
  enum : uint32_t { SUB_PACKET = 0, SUB_NETLINK = 1 };

  PacketLink(std::string ifname, uint32_t mtu) : ifname_(std::move(ifname)), gatewayMtu_(mtu) {
    staging_.resize(MAX_SUPERFRAME + 64);
    seg_.buf.resize(MAX_SUPERFRAME + 64);
  }
  ~PacketLink() override { close(); }

  bool open(std::string& err) {
    ifreq ifr;
    const int index = static_cast<int>(if_nametoindex(ifname_.c_str()));
    if (index == 0) {
      err = "no network interface named " + ifname_ + " in this network namespace";
      return false;
    }
    pfd_ = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (pfd_ < 0) {
      err = std::string("AF_PACKET socket: ") + strerror(errno) + (errno == EPERM ? " (needs CAP_NET_RAW: run as root)" : "");
      return false;
    }
    setIfname(ifr, ifname_);
    if (ioctl(pfd_, SIOCGIFMTU, &ifr) == 0) ifMtu_ = static_cast<uint32_t>(ifr.ifr_mtu);
    int one = 1, v2 = TPACKET_V2;
    if (setsockopt(pfd_, SOL_PACKET, PACKET_VERSION, &v2, sizeof v2) != 0) {
      err = std::string("PACKET_VERSION TPACKET_V2: ") + strerror(errno);
      return false;
    }
    setsockopt(pfd_, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);  // Linux 4.20+; else by sll_pkttype
    setsockopt(pfd_, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    setsockopt(pfd_, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof one);     // frames larger than a ring frame: whole, in the queue
    if (setsockopt(pfd_, SOL_SOCKET, SO_RCVBUFFORCE, &RCVBUF, sizeof RCVBUF) != 0) setsockopt(pfd_, SOL_SOCKET, SO_RCVBUF, &RCVBUF, sizeof RCVBUF);
    if (setsockopt(pfd_, SOL_SOCKET, SO_SNDBUFFORCE, &SNDBUF, sizeof SNDBUF) != 0) setsockopt(pfd_, SOL_SOCKET, SO_SNDBUF, &SNDBUF, sizeof SNDBUF);
    // Ring frames hold a frame of the larger of the two MTUs (and a VLAN tag), up to 64 KiB.
    const uint32_t need = RING_MAC_OFFSET + std::max(ifMtu_, gatewayMtu_) + ETH_HDR + VLAN_TAG;
    frameSize_ = 2048;
    while (frameSize_ < need && frameSize_ < MAX_RING_FRAME) frameSize_ *= 2;
    blockSize_ = std::max<uint32_t>(frameSize_, 64u << 10);
    frames_ = std::max<uint32_t>(RING_BYTES / frameSize_, 64);
    const uint32_t perBlock = blockSize_ / frameSize_;
    frames_ = (frames_ + perBlock - 1) / perBlock * perBlock;
    tpacket_req req = {};
    req.tp_block_size = blockSize_;
    req.tp_block_nr = frames_ / perBlock;
    req.tp_frame_size = frameSize_;
    req.tp_frame_nr = frames_;
    if (setsockopt(pfd_, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) != 0) {
      err = std::string("PACKET_RX_RING: ") + strerror(errno);
      return false;
    }
    ringBytes_ = static_cast<size_t>(blockSize_) * req.tp_block_nr;
    void* ring = mmap(nullptr, ringBytes_, PROT_READ | PROT_WRITE, MAP_SHARED, pfd_, 0);
    if (ring == MAP_FAILED) {
      err = std::string("mmap of the packet ring: ") + strerror(errno);
      return false;
    }
    ring_ = static_cast<uint8_t*>(ring);
    // Follow the interface (carrier, deletion, a new one of the same name) before binding, so
    // no change in between is missed.
    nfd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (nfd_ >= 0) {
      sockaddr_nl nl = {};
      nl.nl_family = AF_NETLINK;
      nl.nl_groups = RTMGRP_LINK;
      int sz = 1 << 20;
      setsockopt(nfd_, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
      if (bind(nfd_, reinterpret_cast<sockaddr*>(&nl), sizeof nl) != 0) {
        ::close(nfd_);
        nfd_ = -1;
      }
    }
    return bindTo(index, err);
  }

  void watch(int epfd, uint64_t base) override {
    epfd_ = epfd;
    base_ = base;
    if (lowerUp_) counters.bump(counters.peers);  // the other side was there already
    epollSet(epfd, EPOLL_CTL_ADD, pfd_, EPOLLIN, base + SUB_PACKET);
    if (nfd_ >= 0) epollSet(epfd, EPOLL_CTL_ADD, nfd_, EPOLLIN, base + SUB_NETLINK);
  }

  uint32_t event(uint32_t sub, uint32_t events) override {
    uint32_t r = 0;
    if (sub == SUB_NETLINK) {
      if (readNetlink()) r |= LINK_READABLE | LINK_WRITABLE;
      return r;
    }
    if (events & EPOLLERR) {
      // The interface went down or away (ENETDOWN): the netlink side deals with that. The error
      // is cleared here, or epoll would report it forever.
      int e = 0;
      socklen_t l = sizeof e;
      getsockopt(pfd_, SOL_SOCKET, SO_ERROR, &e, &l);
      if (e != 0 && e != ENETDOWN && e != ENXIO && e != ENODEV) counters.bump(counters.rxErrors);
    }
    if (events & EPOLLOUT) {
      flushBacklog();
      if (backlog_.empty()) r |= LINK_WRITABLE;
    }
    if (events & EPOLLIN) r |= LINK_READABLE;
    return r;
  }

  uint32_t recv(uint8_t* buf, uint32_t cap) override {
    if (seg_.active) return nextSegment(buf, cap);
    while (ring_) {
      auto* h = reinterpret_cast<tpacket2_hdr*>(frameAt(next_));
      const uint32_t status = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
      if (!(status & TP_STATUS_USER)) return 0;
      const uint32_t n = take(h, status, buf, cap);
      __atomic_store_n(&h->tp_status, static_cast<uint32_t>(TP_STATUS_KERNEL), __ATOMIC_RELEASE);
      next_ = (next_ + 1) % frames_;
      if (n) return n;
      if (seg_.active) return nextSegment(buf, cap);
    }
    return 0;
  }

  bool recvPending() const override {
    if (seg_.active) return true;
    if (!ring_) return false;
    const auto* h = reinterpret_cast<const tpacket2_hdr*>(frameAt(next_));
    return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER;
  }

  bool send(const uint8_t* frame, uint32_t len) override {
    if (!backlog_.empty()) return false;  // EPOLLOUT is watched
    if (ifindex_ <= 0 || len < ETH_HDR || len > ifMtu_ + ETH_HDR + VLAN_TAG) {
      counters.bump(counters.txErrors);  // no interface (deleted, not yet back), or a frame it cannot carry
      return true;
    }
    iov_[batch_].iov_base = const_cast<uint8_t*>(frame);
    iov_[batch_].iov_len = len;
    batch_++;
    if (batch_ == TX_BATCH) flushBatch();
    return true;
  }

  void sendDone() override { flushBatch(); }

  void close() override {
    if (ring_) munmap(ring_, ringBytes_);
    ring_ = nullptr;
    if (pfd_ >= 0) ::close(pfd_);
    if (nfd_ >= 0) ::close(nfd_);
    pfd_ = nfd_ = -1;
    batch_ = 0;
    backlog_.clear();
  }

 private:
  uint8_t* frameAt(uint32_t i) const {
    const uint32_t perBlock = blockSize_ / frameSize_;
    return ring_ + static_cast<size_t>(i / perBlock) * blockSize_ + static_cast<size_t>(i % perBlock) * frameSize_;
  }

  // Bind the socket to interface `index`, up. A failure to bring it up is an error at open and
  // counted later (a re-created interface), when nobody is there to be told.
  bool bindTo(int index, std::string& err) {
    ifreq ifr;
    setIfname(ifr, ifname_);
    if (ioctl(pfd_, SIOCGIFFLAGS, &ifr) != 0) {
      err = "cannot read the flags of " + ifname_ + ": " + strerror(errno);
      return false;
    }
    if (!(ifr.ifr_flags & IFF_UP)) {
      ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
      if (ioctl(pfd_, SIOCSIFFLAGS, &ifr) != 0) {
        err = "cannot bring " + ifname_ + " up: " + strerror(errno) + (errno == EPERM ? " (needs CAP_NET_ADMIN: run as root, or `ip link set " + ifname_ + " up` first)" : "");
        return false;
      }
    }
    InterfaceInfo info;
    std::string ignored;
    if (interfaceInfo(ifname_, info, ignored) == 0 && info.driver == "veth") steerFlows(ifname_, index);
    lowerUp_ = (ifr.ifr_flags & IFF_RUNNING) != 0;
    if (lowerUp_) counters.bump(counters.peers);  // at open the counters are not set yet: watch() counts it
    setIfname(ifr, ifname_);
    if (ioctl(pfd_, SIOCGIFMTU, &ifr) == 0) ifMtu_ = static_cast<uint32_t>(ifr.ifr_mtu);
    sockaddr_ll sll = {};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = index;
    if (bind(pfd_, reinterpret_cast<sockaddr*>(&sll), sizeof sll) != 0) {
      err = "cannot bind a packet socket to " + ifname_ + ": " + strerror(errno);
      return false;
    }
    ifindex_ = index;
    return true;
  }

  // One ring frame: its length when it went into `buf`, 0 when it was dropped or became a
  // superframe to segment.
  uint32_t take(const tpacket2_hdr* h, uint32_t status, uint8_t* buf, uint32_t cap) {
    if (status & TP_STATUS_LOSING) {
      tpacket_stats st = {};
      socklen_t l = sizeof st;
      if (getsockopt(pfd_, SOL_PACKET, PACKET_STATISTICS, &st, &l) == 0) counters.bump(counters.rxErrors, st.tp_drops);
    }
    const auto* sll = reinterpret_cast<const sockaddr_ll*>(reinterpret_cast<const uint8_t*>(h) + TPACKET_ALIGN(sizeof(tpacket2_hdr)));
    const uint8_t* data = reinterpret_cast<const uint8_t*>(h) + h->tp_mac;
    uint32_t len = h->tp_len;
    if (status & TP_STATUS_COPY) {
      // The whole frame is in the socket's queue (the ring frame holds its start): read it.
      ssize_t n = ::recv(pfd_, staging_.data(), staging_.size(), MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        counters.bump(counters.rxErrors);
        return 0;
      }
      if (sll->sll_pkttype == PACKET_OUTGOING) return 0;
      if (static_cast<size_t>(n) > staging_.size()) {
        counters.bump(counters.malformed);  // longer than any IP packet: cannot be a frame of the guest's
        return 0;
      }
      data = staging_.data();
      len = static_cast<uint32_t>(n);
    } else {
      if (sll->sll_pkttype == PACKET_OUTGOING) return 0;  // the host's own stack, on a kernel without IGNORE_OUTGOING
      if (h->tp_snaplen < len || h->tp_mac + h->tp_snaplen > frameSize_) {
        counters.bump(counters.malformed);  // not handed over whole (larger than a ring frame, no room to queue it)
        return 0;
      }
    }
    // A VLAN tag the kernel took into the ring header goes back into the frame (the engine
    // drops tagged frames, and counts them as such).
    const bool tagged = (status & TP_STATUS_VLAN_VALID) != 0;
    const uint32_t total = len + (tagged ? VLAN_TAG : 0);
    if (len < ETH_HDR) {
      counters.bump(counters.malformed);
      return 0;
    }
    const uint16_t type = static_cast<uint16_t>(data[12] << 8 | data[13]);
    const bool inlineTag = tagged || type == ETH_P_8021Q || type == ETH_P_8021AD;
    const uint32_t limit = ifMtu_ + ETH_HDR + (inlineTag ? VLAN_TAG : 0);
    if (total <= limit && total <= cap) {
      if (tagged) {
        memcpy(buf, data, 12);
        const uint16_t tpid = htons((status & TP_STATUS_VLAN_TPID_VALID) ? h->tp_vlan_tpid : ETH_P_8021Q);
        const uint16_t tci = htons(h->tp_vlan_tci);
        memcpy(buf + 12, &tpid, 2);
        memcpy(buf + 14, &tci, 2);
        memcpy(buf + 16, data + 12, len - 12);
        return total;  // not completed: the engine does not take tagged frames
      }
      memcpy(buf, data, len);
      if (status & TP_STATUS_CSUMNOTREADY) completeL4Checksum(buf, len);
      return len;
    }
    // Longer than the interface carries: a TCP superframe (segmentation offload) is cut into
    // segments; anything else is malformed.
    if (!tagged && startSuperframe(data, len)) return 0;
    counters.bump(counters.malformed);
    return 0;
  }

  bool startSuperframe(const uint8_t* data, uint32_t len) {
    Superframe& s = seg_;
    if (len > s.buf.size()) return false;
    memcpy(s.buf.data(), data, len);
    if (!findL4(s.buf.data(), len, s.p) || s.p.proto != IPPROTO_TCP) return false;
    const uint8_t* f = s.buf.data();
    const uint32_t tcpHdr = (f[s.p.l4 + 12] >> 4) * 4u;
    s.hdr = s.p.l4 + tcpHdr;
    s.payload = s.p.end - s.hdr;
    const uint32_t l3hdr = s.hdr - ETH_HDR;  // IP (with any extension headers) + TCP
    if (std::min(ifMtu_, gatewayMtu_) <= l3hdr + 8 || s.payload == 0) return false;
    s.mss = std::min(ifMtu_, gatewayMtu_) - l3hdr;
    memcpy(&s.seq, f + s.p.l4 + 4, 4);
    s.seq = ntohl(s.seq);
    s.ipId = s.p.v4 ? static_cast<uint16_t>(f[s.p.ip + 4] << 8 | f[s.p.ip + 5]) : 0;
    s.off = 0;
    s.index = 0;
    s.active = true;
    return true;
  }

  // The superframe's next segment into `buf`.
  uint32_t nextSegment(uint8_t* buf, uint32_t cap) {
    Superframe& s = seg_;
    const uint32_t chunk = std::min(s.mss, s.payload - s.off);
    const uint32_t len = s.hdr + chunk;
    if (len > cap) {  // cannot happen: a segment is within the MTU, and a slot holds the largest
      counters.bump(counters.malformed);
      s.active = false;
      return 0;
    }
    memcpy(buf, s.buf.data(), s.hdr);
    memcpy(buf + s.hdr, s.buf.data() + s.hdr + s.off, chunk);
    const bool first = s.off == 0, last = s.off + chunk == s.payload;
    L4 p = s.p;
    p.end = len;
    if (p.v4) {
      const uint16_t total = htons(static_cast<uint16_t>(len - p.ip));
      const uint16_t id = htons(static_cast<uint16_t>(s.ipId + s.index));
      memcpy(buf + p.ip + 2, &total, 2);
      memcpy(buf + p.ip + 4, &id, 2);
      fillIp4Checksum(buf, p.ip);
    } else {
      const uint16_t plen = htons(static_cast<uint16_t>(len - p.ip - 40));
      memcpy(buf + p.ip + 4, &plen, 2);
    }
    const uint32_t seq = htonl(s.seq + s.off);
    memcpy(buf + p.l4 + 4, &seq, 4);
    uint8_t& flags = buf[p.l4 + 13];
    if (!last) flags = static_cast<uint8_t>(flags & ~0x09);  // FIN, PSH: the last segment's
    if (!first) flags = static_cast<uint8_t>(flags & ~0x80); // CWR: the first's
    fillL4Checksum(buf, p);
    s.off += chunk;
    s.index++;
    if (last) s.active = false;
    return len;
  }

  // Send the batched frames; what the socket cannot take now is copied aside for EPOLLOUT.
  void flushBatch() {
    uint32_t i = 0;
    while (i < batch_) {
      mmsghdr msgs[TX_BATCH];
      memset(msgs, 0, sizeof(mmsghdr) * (batch_ - i));
      for (uint32_t k = i; k < batch_; k++) {
        msgs[k - i].msg_hdr.msg_iov = &iov_[k];
        msgs[k - i].msg_hdr.msg_iovlen = 1;
      }
      int n = sendmmsg(pfd_, msgs, batch_ - i, MSG_DONTWAIT);
      if (n > 0) {
        i += static_cast<uint32_t>(n);
        continue;  // stopped at a frame that failed, if any: it is tried again and its error seen
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        for (uint32_t k = i; k < batch_; k++) {
          const auto* p = static_cast<const uint8_t*>(iov_[k].iov_base);
          backlog_.emplace_back(p, p + iov_[k].iov_len);
        }
        watchOut(true);
        break;
      }
      counters.bump(counters.txErrors);  // e.g. ENOBUFS (no carrier: no VMM holds the TAP), ENETDOWN, ENXIO
      i++;
    }
    batch_ = 0;
  }

  void flushBacklog() {
    size_t i = 0;
    while (i < backlog_.size()) {
      ssize_t n = ::send(pfd_, backlog_[i].data(), backlog_[i].size(), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) counters.bump(counters.txErrors);
      i++;
    }
    backlog_.erase(backlog_.begin(), backlog_.begin() + static_cast<std::ptrdiff_t>(i));
    if (backlog_.empty()) watchOut(false);
  }

  void watchOut(bool on) {
    if (on == outWatched_ || pfd_ < 0 || epfd_ < 0) return;
    epollSet(epfd_, EPOLL_CTL_MOD, pfd_, EPOLLIN | (on ? static_cast<uint32_t>(EPOLLOUT) : 0u), base_ + SUB_PACKET);
    outWatched_ = on;
  }

  // Link notifications: returns whether the socket was bound anew (frames may be waiting).
  bool readNetlink() {
    alignas(nlmsghdr) uint8_t buf[16384];
    bool rebound = false;
    for (;;) {
      ssize_t n = ::recv(nfd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == ENOBUFS) {  // notifications were lost: look the interface up afresh
          rebound |= resync();
          continue;
        }
        return rebound;
      }
      int left = static_cast<int>(n);
      for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, left); nh = NLMSG_NEXT(nh, left)) {
        if (nh->nlmsg_type != RTM_NEWLINK && nh->nlmsg_type != RTM_DELLINK) continue;
        if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(ifinfomsg))) continue;
        const auto* ifi = static_cast<const ifinfomsg*>(NLMSG_DATA(nh));
        std::string name;
        uint32_t mtu = 0;
        int alen = static_cast<int>(IFLA_PAYLOAD(nh));
        for (auto* a = IFLA_RTA(ifi); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
          if (a->rta_type == IFLA_IFNAME) name.assign(static_cast<const char*>(RTA_DATA(a)), strnlen(static_cast<const char*>(RTA_DATA(a)), RTA_PAYLOAD(a)));
          if (a->rta_type == IFLA_MTU && RTA_PAYLOAD(a) >= 4) memcpy(&mtu, RTA_DATA(a), 4);
        }
        if (nh->nlmsg_type == RTM_DELLINK) {
          if (ifi->ifi_index == ifindex_) {
            ifindex_ = 0;  // gone: frames toward the guest are counted as lost until it is back
            lowerUp_ = false;
          }
          continue;
        }
        if (ifi->ifi_index == ifindex_) {
          if (mtu) ifMtu_ = mtu;
          const bool lower = (ifi->ifi_flags & IFF_RUNNING) != 0;
          if (lower && !lowerUp_) counters.bump(counters.peers);  // the VMM opened the TAP, the peer came up
          lowerUp_ = lower;
        } else if (name == ifname_ && ifindex_ <= 0) {
          std::string err;
          if (bindTo(ifi->ifi_index, err)) rebound = true;
          else counters.bump(counters.txErrors);
        }
      }
    }
  }

  bool resync() {
    const int index = static_cast<int>(if_nametoindex(ifname_.c_str()));
    if (index == 0) {
      ifindex_ = 0;
      return false;
    }
    if (index == ifindex_) return false;
    std::string err;
    return bindTo(index, err);
  }

  std::string ifname_;
  uint32_t gatewayMtu_;
  uint32_t ifMtu_ = 1500;
  int pfd_ = -1, nfd_ = -1, epfd_ = -1;
  int ifindex_ = 0;
  bool lowerUp_ = false;
  uint64_t base_ = 0;
  uint8_t* ring_ = nullptr;
  size_t ringBytes_ = 0;
  uint32_t frameSize_ = 0, blockSize_ = 0, frames_ = 0, next_ = 0;
  std::vector<uint8_t> staging_;  // a frame read from the queue (TP_STATUS_COPY)
  Superframe seg_;
  iovec iov_[TX_BATCH];
  uint32_t batch_ = 0;
  std::vector<std::vector<uint8_t>> backlog_;
  bool outWatched_ = false;
};

}  // namespace

bool completeL4Checksum(uint8_t* frame, uint32_t len) {
  L4 p;
  if (!findL4(frame, len, p)) return false;
  fillL4Checksum(frame, p);
  return true;
}

uint32_t takeLeftChecksum(uint8_t* frame, uint32_t len, uint32_t csumStart, uint32_t csumOffset) {
  if (static_cast<uint64_t>(csumStart) + csumOffset + 2 > len) return UINT32_MAX;
  L4 p;
  if (findL4(frame, len, p) && csumStart == p.l4 && csumOffset == (p.proto == IPPROTO_TCP ? 16u : 6u)) return lay::RX_F_CSUM_LEFT;
  // Another checksum (a tunnelled packet's, inside this one's payload): summed from csumStart to
  // the end, the field holding its pseudo-header's part, as a NIC does (Linux's
  // skb_checksum_help: a sum of 0 goes out as 0xffff).
  const uint16_t c = finish(sumBytes(frame + csumStart, len - csumStart, 0));
  const uint16_t v = c ? c : 0xffff;
  memcpy(frame + csumStart + csumOffset, &v, 2);
  return 0;
}

int interfaceInfo(const std::string& name, InterfaceInfo& out, std::string& err) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    err = "interface name '" + name + "' is empty or longer than " + std::to_string(IFNAMSIZ - 1) + " characters";
    return -EINVAL;
  }
  const int index = static_cast<int>(if_nametoindex(name.c_str()));
  if (index == 0) {
    const int e = errno;
    err = "no network interface named " + name + " in this network namespace";
    return -(e ? e : ENODEV);
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);  // any socket takes the interface ioctls
  if (fd < 0) {
    err = std::string("socket: ") + strerror(errno);
    return -errno;
  }
  out = InterfaceInfo{};
  out.index = index;
  ifreq ifr;
  setIfname(ifr, name);
  if (ioctl(fd, SIOCGIFMTU, &ifr) == 0) out.mtu = static_cast<uint32_t>(ifr.ifr_mtu);
  setIfname(ifr, name);
  if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
    out.up = (ifr.ifr_flags & IFF_UP) != 0;
    out.running = (ifr.ifr_flags & IFF_RUNNING) != 0;
  }
  setIfname(ifr, name);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0) out.ethernet = ifr.ifr_hwaddr.sa_family == ARPHRD_ETHER;
  ethtool_drvinfo info = {};
  info.cmd = ETHTOOL_GDRVINFO;
  setIfname(ifr, name);
  ifr.ifr_data = reinterpret_cast<char*>(&info);
  if (ioctl(fd, SIOCETHTOOL, &ifr) == 0) out.driver.assign(info.driver, strnlen(info.driver, sizeof info.driver));
  ::close(fd);
  return 0;
}

Link* newPacketLink(const std::string& ifname, uint32_t mtu, std::string& err) {
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
    err = "interface name '" + ifname + "' is empty or longer than " + std::to_string(IFNAMSIZ - 1) + " characters";
    return nullptr;
  }
  auto* link = new PacketLink(ifname, mtu);
  if (!link->open(err)) {
    delete link;
    return nullptr;
  }
  return link;
}

}  // namespace moat
