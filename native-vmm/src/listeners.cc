// listeners.cc — published ports: host listening sockets whose peers become flows toward the
// guest once the engine admits them. Part of the Datapath class (datapath.cc).
#include "datapath.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace moat {

// ---- published ports ---------------------------------------------------------------------------------
//
// One listening socket per published port, level-triggered in the epoll set (token
// LISTEN_TOKEN_BASE + id). A new peer is handed to the engine as INK_ACCEPT (layout.ts) and the
// listener is disarmed until the engine's OPK_ACCEPT / OPK_REFUSE: one decision at a time per
// port, and nothing accepted that the engine has not judged. A UDP datagram from a peer the
// engine already admitted goes straight to that peer's flow as INK_UDP_DATA.

static void peerKeyFrom(const sockaddr_storage& ss, uint8_t* addr16, uint16_t& port) {
  memset(addr16, 0, 16);
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    addr16[10] = addr16[11] = 0xff;
    memcpy(addr16 + 12, &sin->sin_addr, 4);
    port = ntohs(sin->sin_port);
  } else {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    memcpy(addr16, &sin6->sin6_addr, 16);
    port = ntohs(sin6->sin6_port);
  }
}

int Datapath::listenOn(uint32_t id, bool tcp, uint32_t family, const uint8_t* addr16, uint32_t port, bool dualStack) {
  if (id >= listeners_.size() || listeners_[id].fd >= 0) return -EBUSY;
  sockaddr_storage ss;
  socklen_t slen = 0;
  if (!sockaddrFor(addr16, port, family, ss, slen)) return -EINVAL;
  int fd = socket(ss.ss_family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  // TCP: rebinding over connections in TIME_WAIT is fine (a second listener is still refused).
  // UDP: no SO_REUSEADDR, which would let two sockets share the port.
  if (tcp) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // An IPv6 listener takes IPv6 only, whatever net.ipv6.bindv6only says, unless the orchestrator
  // asks for dual-stack ([::]: IPv4 peers then arrive as ::ffff:a.b.c.d, the engine's own form).
  const int v6only = dualStack ? 0 : 1;
  if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), slen) != 0 || (tcp && ::listen(fd, 1024) != 0)) {
    const int err = errno;
    close(fd);
    return -err;
  }
  sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  uint8_t a[16];
  uint16_t boundPort = 0;
  peerKeyFrom(bound, a, boundPort);
  Listener& l = listeners_[id];
  l = Listener{};
  l.fd = fd;
  l.tcp = tcp;
  epollSet(epfd_, EPOLL_CTL_ADD, fd, 0, LISTEN_TOKEN_BASE + id);
  armListener(id, true);
  return boundPort;
}

void Datapath::armListener(uint32_t id, bool on) {
  Listener& l = listeners_[id];
  if (l.fd < 0 || l.armed == on || (on && l.waiting)) return;
  epollSet(epfd_, EPOLL_CTL_MOD, l.fd, on ? static_cast<uint32_t>(EPOLLIN) : 0u, LISTEN_TOKEN_BASE + id);
  l.armed = on;
}

void Datapath::unlisten(uint32_t id) {
  if (id >= listeners_.size()) return;
  Listener& l = listeners_[id];
  if (l.fd < 0) return;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, l.fd, nullptr);
  if (l.pendingFd >= 0) {
    struct linger lg = {1, 0};
    setsockopt(l.pendingFd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(l.pendingFd);
  }
  if (!l.tcp) {
    // The UDP peers' flows lose their socket (the fd is about to be closed and could be reused):
    // their sends are dropped until the engine expires them.
    for (auto it = udpPeers_.begin(); it != udpPeers_.end();) {
      if (it->first.listener == id) {
        Sock& s = socks_[it->second];
        s = Sock{};
        it = udpPeers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  close(l.fd);
  l = Listener{};
}

int Datapath::readListener(uint32_t id) {
  if (id >= listeners_.size()) return 0;
  Listener& l = listeners_[id];
  if (l.fd < 0 || l.waiting) return 0;
  auto header = [&](uint8_t* buf, const sockaddr_storage& ss, uint8_t proto) {
    uint16_t port = 0;
    peerKeyFrom(ss, buf + lay::ACC_ADDR, port);
    buf[lay::ACC_FAMILY] = ss.ss_family == AF_INET ? 4 : 6;
    buf[lay::ACC_PROTO] = proto;
    memcpy(buf + lay::ACC_PORT, &port, 2);  // host order, as the engine reads it
  };
  int got = 0;
  for (uint32_t budget = SOCKET_READ_BUDGET; budget > 0; budget--) {
    if (inboundFull()) {
      armListener(id, false);
      pausedListeners_.push_back(id);
      break;
    }
    const uint32_t tail = in_.tail();
    uint8_t* buf = in_.buf(tail);
    sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (l.tcp) {
      int fd = accept4(l.fd, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        // EAGAIN: nothing more. Out of descriptors or memory: count, and try again at the next
        // pump rather than spin on a listener that stays readable.
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
          count(ctr::HOST_OPEN_ERRORS);
          armListener(id, false);
          pausedListeners_.push_back(id);
        }
        break;
      }
      header(buf, ss, wire::PROTO_TCP);
      l.pendingFd = fd;
      l.waiting = true;
      armListener(id, false);
      pushInbound(id, lay::INK_ACCEPT, lay::ACC_BYTES, 0);
      got++;
      break;
    }
    ssize_t n = recvfrom(l.fd, buf + lay::ACC_BYTES, lay::SLOT_BYTES - lay::ACC_BYTES, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), &sl);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      continue;  // e.g. an ICMP error queued on the socket: skip it
    }
    PeerKey k{id, 0, {}};
    peerKeyFrom(ss, k.addr, k.port);
    auto it = udpPeers_.find(k);
    if (it != udpPeers_.end()) {
      pushInbound(it->second, lay::INK_UDP_DATA, static_cast<uint32_t>(n), lay::ACC_BYTES);
      got++;
      continue;
    }
    header(buf, ss, wire::PROTO_UDP);
    memcpy(&l.pendingPeer, &ss, ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
    l.waiting = true;
    armListener(id, false);
    pushInbound(id, lay::INK_ACCEPT, lay::ACC_BYTES + static_cast<uint32_t>(n), 0);
    got++;
    break;
  }
  return got;
}

// The engine admitted listener `id`'s waiting peer as `flow`.
void Datapath::acceptOp(uint32_t flow, uint32_t id, uint32_t seq, uint32_t seg) {
  if (id >= listeners_.size() || flow >= socks_.size()) return;
  Listener& l = listeners_[id];
  closeSock(flow, false);
  Sock& s = socks_[flow];
  s = Sock{};
  if (l.fd < 0 || (l.tcp ? l.pendingFd < 0 : !l.waiting)) {
    // The port was withdrawn meanwhile: the flow has no socket.
    pushEvent(flow, l.tcp ? lay::INK_TCP_RESET : lay::INK_OPEN_FAILED, 0, static_cast<uint32_t>(ECONNABORTED));
  } else if (l.tcp) {
    tuneTcp(l.pendingFd);
    s.fd = l.pendingFd;
    s.tcp = true;
    s.headSeq = s.peekSeq = s.limitSeq = seq;
    s.segBytes = std::max<uint32_t>(seg, 64);
    l.pendingFd = -1;
    live_++;
    epollSet(epfd_, EPOLL_CTL_ADD, s.fd, EPOLLIN | EPOLLRDHUP | EPOLLET, flow);
  } else {
    s.fd = l.fd;
    s.shared = true;
    s.listener = id;
    memcpy(&s.peer, &l.pendingPeer, sizeof s.peer);
    PeerKey k{id, 0, {}};
    peerKeyFrom(*reinterpret_cast<const sockaddr_storage*>(&l.pendingPeer), k.addr, k.port);
    udpPeers_[k] = flow;
  }
  l.waiting = false;
  armListener(id, true);
}

// The engine refused listener `id`'s waiting peer: a TCP peer is reset.
void Datapath::refuseOp(uint32_t id) {
  if (id >= listeners_.size()) return;
  Listener& l = listeners_[id];
  if (l.pendingFd >= 0) {
    struct linger lg = {1, 0};
    setsockopt(l.pendingFd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(l.pendingFd);
    l.pendingFd = -1;
  }
  l.waiting = false;
  armListener(id, true);
}

}  // namespace moat
