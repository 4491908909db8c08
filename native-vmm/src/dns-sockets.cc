// dns-sockets.cc — the DNS interceptor's upstream sockets, served in the data path's epoll set.
// Part of the Datapath class (datapath.cc).
#include "datapath.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace moat {

// ---- upstream DNS --------------------------------------------------------------------------------
//
// The engine worker's DNS interceptor asks its upstreams over these sockets instead of Node's
// dgram: sends are one syscall with no request object, and answers are read here, in the same
// epoll set and the same wake-up as the frames, then taken by the worker in one call per
// wake-up. Random source ports (a socket per pool slot, rotated by the interceptor) and random
// IDs are the interceptor's; the socket is connected, so only its server's datagrams arrive.

int Datapath::dnsOpen(uint32_t family, const uint8_t* addr16, uint32_t port) {
  uint32_t id = 0;
  while (id < dnsSocks_.size() && dnsSocks_[id] >= 0) id++;
  if (id >= DNS_SOCKS_MAX) return -EMFILE;
  const bool v4 = family == 4;
  int fd = socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  union { sockaddr_in v4; sockaddr_in6 v6; } sa = {};
  socklen_t salen;
  if (v4) {
    sa.v4.sin_family = AF_INET;
    sa.v4.sin_port = htons(static_cast<uint16_t>(port));
    memcpy(&sa.v4.sin_addr, addr16 + 12, 4);
    salen = sizeof(sa.v4);
  } else {
    sa.v6.sin6_family = AF_INET6;
    sa.v6.sin6_port = htons(static_cast<uint16_t>(port));
    memcpy(&sa.v6.sin6_addr, addr16, 16);
    salen = sizeof(sa.v6);
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), salen) < 0) {
    const int e = errno;
    close(fd);
    return -e;
  }
  epollSet(epfd_, EPOLL_CTL_ADD, fd, EPOLLIN, DNS_TOKEN_BASE + id);
  if (id == dnsSocks_.size()) dnsSocks_.push_back(fd);
  else dnsSocks_[id] = fd;
  return static_cast<int>(id);
}

void Datapath::dnsClose(uint32_t id) {
  if (id >= dnsSocks_.size() || dnsSocks_[id] < 0) return;
  close(dnsSocks_[id]);  // leaves the epoll set with it
  dnsSocks_[id] = -1;
}

int Datapath::dnsSend(uint32_t id, const uint8_t* data, uint32_t len) {
  if (id >= dnsSocks_.size() || dnsSocks_[id] < 0) return -EBADF;
  return send(dnsSocks_[id], data, len, MSG_DONTWAIT) < 0 ? -errno : 0;
}

void Datapath::readDns(uint32_t id) {
  if (id >= dnsSocks_.size() || dnsSocks_[id] < 0) return;
  uint8_t buf[65536];
  for (int budget = SOCKET_READ_BUDGET; budget > 0; budget--) {
    // Full: the kernel keeps the rest, and epoll reports it again once the worker took these.
    if (dnsStage_.size() + 4 + sizeof(buf) > DNS_STAGE_MAX) return;
    ssize_t n = recv(dnsSocks_[id], buf, sizeof(buf), MSG_DONTWAIT);
    uint8_t head[6] = {static_cast<uint8_t>(id), static_cast<uint8_t>(id >> 8), 0, 0, 0, 0};
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      head[2] = head[3] = 0xff;  // an error (e.g. ECONNREFUSED from an ICMP port unreachable)
      head[4] = static_cast<uint8_t>(errno);
      head[5] = static_cast<uint8_t>(errno >> 8);
      dnsStage_.insert(dnsStage_.end(), head, head + 6);
      pushed_++;
      return;
    }
    if (n >= 0xffff) continue;  // no DNS answer over UDP is this long: not one of ours
    head[2] = static_cast<uint8_t>(n);
    head[3] = static_cast<uint8_t>(n >> 8);
    dnsStage_.insert(dnsStage_.end(), head, head + 4);
    dnsStage_.insert(dnsStage_.end(), buf, buf + n);
    pushed_++;
  }
}

uint32_t Datapath::dnsTake(uint8_t* out, uint32_t cap) {
  // Whole entries only; what does not fit stays for the next call.
  size_t at = 0;
  while (at + 4 <= dnsStage_.size()) {
    const uint32_t len = dnsStage_[at + 2] | dnsStage_[at + 3] << 8;
    const size_t entry = len == 0xffff ? 6 : 4 + len;
    if (at + entry > cap) break;
    at += entry;
  }
  if (at == 0) return 0;  // (an empty vector's data() may be null, which memcpy must not get)
  memcpy(out, dnsStage_.data(), at);
  dnsStage_.erase(dnsStage_.begin(), dnsStage_.begin() + static_cast<std::ptrdiff_t>(at));
  return static_cast<uint32_t>(at);
}

}  // namespace moat
