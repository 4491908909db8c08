// host-sockets.cc — the flows' host sockets: UDP and ping sockets connected to the remote, TCP
// sockets read with MSG_PEEK up to the engine's credit (datapath.cc, "theory of operation";
// engine-wasm/assembly/flow/tcp.ts, "host socket protocol"). Part of the Datapath class.
#include "datapath.h"

#include <arpa/inet.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace moat {

// ---- reads -----------------------------------------------------------------------------------------------

int Datapath::readUdp(uint32_t flow, uint32_t budget) {
  Sock& s = socks_[flow];
  if (s.fd < 0) return 0;
  int got = 0;
  while (budget-- > 0 && !inboundFull()) {  // full: the kernel keeps it; epoll reports it again
    const uint32_t tail = in_.tail();
    ssize_t len = recv(s.fd, in_.buf(tail), lay::SLOT_BYTES, MSG_DONTWAIT);
    if (len < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      // An ICMP error on a connected socket (e.g. port unreachable): tell the engine.
      pushEvent(flow, lay::INK_FLOW_ERROR, 0, static_cast<uint32_t>(errno));
      got++;
      continue;
    }
    pushInbound(flow, lay::INK_UDP_DATA, static_cast<uint32_t>(len), 0);
    got++;
  }
  return got;
}

int Datapath::tcpReady(uint32_t flow, uint32_t events) {
  Sock& s = socks_[flow];
  if (s.fd < 0 || s.dead) return 0;
  if (s.connecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return 0;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      s.dead = true;
      epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
      pushEvent(flow, lay::INK_OPEN_FAILED, 0, static_cast<uint32_t>(err));
      return 1;
    }
    s.connecting = false;
    if (s.redirect && send(s.fd, s.preamble, lay::REDIRECT_PREAMBLE_BYTES, MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(lay::REDIRECT_PREAMBLE_BYTES)) {
      // A fresh connection always takes the preamble; if not, the service is broken: fail the dial.
      s.dead = true;
      epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
      pushEvent(flow, lay::INK_OPEN_FAILED, 0, static_cast<uint32_t>(EPIPE));
      return 1;
    }
    // The peer may have sent its data and FIN already: this event was the only one for them.
    if (events & (EPOLLRDHUP | EPOLLHUP)) s.peerClosed = true;
    setTcpEvents(flow);
    pushEvent(flow, lay::INK_TCP_CONNECTED, 0, 0);
    return 1;
  }
  if ((events & EPOLLOUT) && s.writeWatch) {
    s.writeWatch = false;
    setTcpEvents(flow);
    pushEvent(flow, lay::INK_TCP_WRITABLE, 0, sendSpace(s.fd));
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
    s.drained = false;  // something arrived (data, FIN or an error)
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s.peerClosed = true;
    readTcp(flow);
  }
  return 1;
}

void Datapath::setTcpEvents(uint32_t flow) {
  Sock& s = socks_[flow];
  epollSet(epfd_, EPOLL_CTL_MOD, s.fd, EPOLLIN | EPOLLRDHUP | EPOLLET | ((s.connecting || s.writeWatch) ? static_cast<uint32_t>(EPOLLOUT) : 0u), flow);
}

// Peek host bytes into inbound slots (IN_TCP_DATA_AT in), up to the credit and one segment per slot.
int Datapath::readTcp(uint32_t flow) {
  Sock& s = socks_[flow];
  if (s.fd < 0 || s.dead || s.connecting) return 0;
  int got = 0;
  while (true) {
    if (inboundFull()) {
      if (!s.readPending) { s.readPending = true; pending_.push_back(flow); }
      break;
    }
    // No credit: stop. EOF and errors show up on the first peek once the guest's window opens.
    if (!seqLt(s.peekSeq, s.limitSeq)) break;
    // (after room for the headers of the frame the engine builds around the bytes, in place)
    const uint32_t want = std::min({s.limitSeq - s.peekSeq, s.segBytes, lay::SLOT_BYTES - lay::IN_TCP_DATA_AT});
    const uint32_t tail = in_.tail();
    ssize_t n = recv(s.fd, in_.buf(tail) + lay::IN_TCP_DATA_AT, want, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
      pushInbound(flow, lay::INK_TCP_DATA | (static_cast<uint32_t>(s.epoch) << lay::INK_EPOCH_SHIFT), static_cast<uint32_t>(n), s.peekSeq);
      s.peekSeq += static_cast<uint32_t>(n);
      got++;
      // A short read means the queue is drained: peeking again would only return EAGAIN. Safe
      // with EPOLLET, which signals every new arrival on a TCP socket, not only the first.
      // (Not once the peer has closed: its FIN arrives no more, the next peek must find it.)
      if (static_cast<uint32_t>(n) < want && !s.peerClosed) { s.drained = true; break; }
      continue;
    }
    if (n == 0) {
      if (!s.eofPosted) {
        s.eofPosted = true;
        pushInbound(flow, lay::INK_TCP_EOF | (static_cast<uint32_t>(s.epoch) << lay::INK_EPOCH_SHIFT), 0, s.peekSeq);
        got++;
      }
      break;
    }
    if (errno == EAGAIN || errno == EINTR) { s.drained = errno == EAGAIN; break; }
    s.dead = true;
    epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
    pushInbound(flow, lay::INK_TCP_RESET, 0, static_cast<uint32_t>(errno));
    got++;
    break;
  }
  return got;
}

// ---- dialling, sending, closing ------------------------------------------------------------------------

bool Datapath::sockaddrFor(const uint8_t* addr16, uint32_t port, uint32_t family, sockaddr_storage& ss, socklen_t& len) {
  memset(&ss, 0, sizeof ss);
  if (family == 4) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    memcpy(&sin->sin_addr, addr16 + 12, 4);
    len = sizeof *sin;
  } else if (family == 6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    memcpy(&sin6->sin6_addr, addr16, 16);
    len = sizeof *sin6;
  } else {
    return false;
  }
  return true;
}

// Free send space in payload bytes, the basis of the window offered to the guest. SO_MEMINFO
// gives the kernel's own accounting: a write is taken while the queued memory (skb truesize)
// is below SO_SNDBUF. Payload is a little less than truesize, hence the 7/8. When this reaches
// zero the socket is also "not writable" to tcp_poll, so the EPOLLOUT edge we then watch for
// comes exactly when space returns.
uint32_t Datapath::sendSpace(int fd) {
  uint32_t mi[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof mi;
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mi, &len) != 0) return 0;
  const uint32_t sndbuf = mi[SK_MEMINFO_SNDBUF], queued = mi[SK_MEMINFO_WMEM_QUEUED];
  return sndbuf > queued ? (sndbuf - queued) / 8 * 7 : 0;
}

// Every flow's TCP socket, dialled or accepted, is set up the same way.
void Datapath::tuneTcp(int fd) {
  int zero = 0, one = 1;
  // A fixed, large send buffer (the kernel caps it at net.core.wmem_max): the window offered
  // to the guest is derived from its free space, and an autotuned buffer starts at 16 KiB.
  int sndbuf = 2 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // Urgent data stays in the stream (else it would move the kernel's sequence numbers past the
  // peek offset's idea of them).
  setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof one);
  // Until the guest's stream has ended (its FIN passed on, OPK_TCP_SHUTDOWN), closing this socket
  // resets it, however moat goes away, even killed: a cut-short stream never looks complete.
  struct linger abortive = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abortive, sizeof abortive);
}

void Datapath::tcpConnect(uint32_t flow, const uint8_t* op) {
  auto field = [&](uint32_t off) { return *reinterpret_cast<const uint32_t*>(op + off); };
  const uint32_t addr = field(lay::OP_ADDR);
  sockaddr_storage ss;
  socklen_t slen = 0;
  int err = 0;
  int fd = -1;
  if (addr + 16ull > memBytes_ || !sockaddrFor(mem_ + addr, field(lay::OP_PORT), field(lay::OP_FAMILY), ss, slen)) {
    err = EINVAL;
  } else if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
    err = errno;
  } else {
    tuneTcp(fd);
    if (connect(fd, reinterpret_cast<sockaddr*>(&ss), slen) != 0 && errno != EINPROGRESS) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  if (err) {
    count(ctr::HOST_OPEN_ERRORS);
    pushEvent(flow, lay::INK_OPEN_FAILED, 0, static_cast<uint32_t>(err));
    return;
  }
  closeSock(flow, false);
  Sock& s = socks_[flow];
  s = Sock{};
  const uint32_t orig = field(lay::OP_ORIG);
  if (orig != 0 && orig + lay::ORIG_ADMIT_NAME + 4ull <= memBytes_) {
    // The redirect preamble (layout.ts, OP_ORIG): where the guest was going, from the flow's key,
    // and the domain rule that admitted it, from the flow record.
    const uint8_t* key = mem_ + orig;
    uint16_t port;
    memcpy(&port, key + 6, 2);  // host order in the key
    port = htons(port);
    uint32_t admit;
    memcpy(&admit, key + lay::ORIG_ADMIT_NAME, 4);
    admit = htonl(admit);
    memcpy(s.preamble + lay::PRE_MAGIC, "moat", 4);
    s.preamble[lay::PRE_VERSION] = lay::REDIRECT_PREAMBLE_VERSION;
    s.preamble[lay::PRE_FAMILY] = key[1];
    memcpy(s.preamble + lay::PRE_PORT, &port, 2);
    memcpy(s.preamble + lay::PRE_ADDR, key + 24, 16);
    memcpy(s.preamble + lay::PRE_TOKEN, mem_ + lay::CFG_REDIRECT_TOKEN, 16);
    memcpy(s.preamble + lay::PRE_ADMIT_NAME, &admit, 4);
    s.redirect = true;
  }
  s.fd = fd;
  s.tcp = true;
  s.connecting = true;
  s.headSeq = s.peekSeq = s.limitSeq = field(lay::OP_DATA);
  s.segBytes = std::max<uint32_t>(field(lay::OP_LEN), 64);
  live_++;
  epollSet(epfd_, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, flow);
}

void Datapath::tcpSend(uint32_t flow, uint32_t data, uint32_t len, uint32_t seq) {
  Sock& s = socks_[flow];
  if (s.fd < 0 || s.dead || s.connecting || data + static_cast<uint64_t>(len) > memBytes_) return;
  // After a short write every later write of this batch would leave a hole in the stream: skip
  // them (the engine rewound to what was written and the guest retransmits).
  if (s.writeBlocked) return;
  // A write that would not continue the stream exactly where the socket is (the engine's view of
  // its guest's stream out of step with what was written) would corrupt it: it is refused as a
  // short write of nothing, so the engine goes back to what was written and the guest resends.
  ssize_t n = s.wrKnown && seq != s.wrSeq ? 0 : send(s.fd, mem_ + data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n >= 0) {
    s.wrSeq = seq + static_cast<uint32_t>(n);
    s.wrKnown = true;
  }
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR) {
      s.dead = true;
      epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
      pushEvent(flow, lay::INK_TCP_RESET, 0, static_cast<uint32_t>(errno));
      return;
    }
    n = 0;
  }
  const bool partial = static_cast<uint32_t>(n) < len;
  // Measuring the send space is a syscall: between measurements, count down what we wrote (an
  // underestimate, since the peer's ACKs free space meanwhile); measure again when the estimate
  // nears a few segments, after a short write, or every 16 writes.
  const uint32_t wrote = static_cast<uint32_t>(n);
  uint32_t space;
  if (partial || s.spaceEstimate < wrote + 4 * s.segBytes || ++s.sendsSinceMeasure >= 16) {
    space = sendSpace(s.fd);
    s.sendsSinceMeasure = 0;
  } else {
    space = s.spaceEstimate - wrote;
  }
  s.spaceEstimate = space;
  if (partial) {
    count(ctr::TCP_SHORT_WRITES);
    s.writeBlocked = true;
  }
  // Too little room for another couple of segments: the window we offer is closing (after window
  // scaling rounds it down, one segment's worth offers less than a segment, and a bulk sender
  // then waits for more), so watch for the socket to drain (the EPOLLOUT edge) to reopen it.
  // Nothing else would tell the engine: the guest sends nothing more into a window that small.
  if ((partial || space < 2 * s.segBytes) && !s.writeWatch) {
    s.writeWatch = true;
    setTcpEvents(flow);
  }
  pushEvent(flow, lay::INK_TCP_SENT | (partial ? lay::INK_PARTIAL : 0), static_cast<uint32_t>(n), space);
}

void Datapath::closeSock(uint32_t flow, bool abort) {
  Sock& s = socks_[flow];
  if (s.fd < 0) return;
  if (s.shared) {  // a published UDP port's peer: the socket is the listener's
    PeerKey k{s.listener, 0, {}};
    if (s.peer.v4.sin_family == AF_INET) {
      k.port = ntohs(s.peer.v4.sin_port);
      k.addr[10] = k.addr[11] = 0xff;
      memcpy(k.addr + 12, &s.peer.v4.sin_addr, 4);
    } else {
      k.port = ntohs(s.peer.v6.sin6_port);
      memcpy(k.addr, &s.peer.v6.sin6_addr, 16);
    }
    auto it = udpPeers_.find(k);
    if (it != udpPeers_.end() && it->second == flow) udpPeers_.erase(it);
    s = Sock{};
    return;
  }
  epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
  if (abort && s.tcp) {
    struct linger lg = {1, 0};  // close now and send RST
    setsockopt(s.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(s.fd);
  s = Sock{};
  live_--;
}

}  // namespace moat
