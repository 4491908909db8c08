// datapath.cc — moving bytes between the link, the rings and host sockets, with batched syscalls.
//
// Theory of operation
// Everything that can become readable lives in one epoll set (level-triggered): the link fd with
// token LINK_TOKEN and every flow's host socket with the flow's index as token. The worker's
// event loop watches the epoll fd (uv_poll) and, when it is readable, alternates
//   pump()            readable fds -> RX ring (frames) and inbound ring (datagrams, errors)
//   engineRun()       (WASM) rings -> TX ring + host operations
//   flush()           host operations -> syscalls; RX slots released; TX ring -> link
// until a round moves nothing. Frames are read by the kernel straight into ring slots and
// written straight from them: no copy in this file.
//
// Back-pressure: when a ring is full, pump() leaves the data in the kernel (level-triggered
// epoll reports it again once the engine has drained the ring). When the link refuses a frame
// (EAGAIN), the rest of the TX ring waits and EPOLLOUT is watched until the link drains.
#include "datapath.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace moat {

static constexpr uint64_t LINK_TOKEN = 0xffffffffull;
static constexpr uint32_t LINK_READ_BUDGET = 64;   // frames per link wake-up
static constexpr uint32_t SOCKET_READ_BUDGET = 16; // datagrams per socket wake-up (fairness)

Datapath::Datapath(uint8_t* mem, const Layout& layout) : mem_(mem), L_(layout) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  fds_.assign(L_.flowCapacity, -1);
}

Datapath::~Datapath() { closeAll(); }

void Datapath::closeAll() {
  for (auto& fd : fds_) {
    if (fd >= 0) close(fd);
    fd = -1;
  }
  live_ = 0;
  if (linkFd_ >= 0) close(linkFd_);
  linkFd_ = -1;
  if (epfd_ >= 0) close(epfd_);
  epfd_ = -1;
}

void Datapath::count(uint32_t idx, uint64_t n) {
  auto* c = reinterpret_cast<uint64_t*>(mem_ + L_.countersBase + 8 * idx);
  *c += n;
}

void Datapath::setLinkFd(int fd) {
  linkFd_ = fd;
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = LINK_TOKEN;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
}

void Datapath::watchLinkOut(bool on) {
  if (on == linkOutWatched_ || linkFd_ < 0) return;
  struct epoll_event ev = {};
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
  ev.data.u64 = LINK_TOKEN;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, linkFd_, &ev);
  linkOutWatched_ = on;
}

int Datapath::pump() {
  struct epoll_event evs[64];
  int n = epoll_wait(epfd_, evs, 64, 0);
  int moved = 0;
  for (int i = 0; i < n; i++) {
    if (evs[i].data.u64 == LINK_TOKEN) {
      if (evs[i].events & EPOLLOUT) moved += writeLink();
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) moved += readLink(LINK_READ_BUDGET);
    } else {
      moved += readSocket(static_cast<uint32_t>(evs[i].data.u64), SOCKET_READ_BUDGET);
    }
  }
  return moved;
}

int Datapath::readLink(uint32_t budget) {
  Ring& r = L_.rx;
  uint32_t tail = r.tail();
  const uint32_t head = r.head();
  int got = 0;
  while (budget-- > 0 && tail - head < r.g.slots) {
    ssize_t len = read(linkFd_, r.buf(tail), L_.slotBytes);
    if (len < 0) {
      if (errno != EAGAIN && errno != EINTR) count(L_.cLinkRxErrors);
      break;
    }
    uint8_t* d = r.desc(tail);
    *reinterpret_cast<uint32_t*>(d + L_.descLen) = static_cast<uint32_t>(len);
    *reinterpret_cast<uint32_t*>(d + L_.descFlags) = 0;
    tail++;
    got++;
  }
  if (got) r.publishTail(tail);
  return got;
}

bool Datapath::pushInbound(uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags) {
  Ring& r = L_.in;
  uint32_t tail = r.tail();
  uint8_t* d = r.desc(tail);
  *reinterpret_cast<uint32_t*>(d + L_.descLen) = len;
  *reinterpret_cast<uint32_t*>(d + L_.descFlags) = flags;
  *reinterpret_cast<uint32_t*>(d + L_.descToken) = flow;
  *reinterpret_cast<uint32_t*>(d + L_.descAux) = kind;
  r.publishTail(tail + 1);
  return true;
}

int Datapath::readSocket(uint32_t flow, uint32_t budget) {
  if (flow >= fds_.size() || fds_[flow] < 0) return 0;
  Ring& r = L_.in;
  int got = 0;
  while (budget-- > 0) {
    uint32_t tail = r.tail();
    if (tail - r.head() >= r.g.slots) break;  // full: the kernel keeps it until the engine drains
    ssize_t len = recv(fds_[flow], r.buf(tail), L_.slotBytes, MSG_DONTWAIT);
    if (len < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      // An ICMP error on a connected socket (e.g. port unreachable): tell the engine.
      pushInbound(flow, L_.inkFlowError, 0, static_cast<uint32_t>(errno));
      got++;
      continue;
    }
    pushInbound(flow, L_.inkUdpData, static_cast<uint32_t>(len), 0);
    got++;
  }
  return got;
}

static bool sockaddrFor(const uint8_t* addr16, uint32_t port, uint32_t family, sockaddr_storage& ss, socklen_t& len) {
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

void Datapath::execOps() {
  auto* countWord = reinterpret_cast<uint32_t*>(mem_ + L_.opsCountOff);
  const uint32_t n = *countWord;
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t* op = mem_ + L_.opsBase + i * L_.opBytes;
    auto field = [&](uint32_t off) { return *reinterpret_cast<const uint32_t*>(op + off); };
    const uint32_t kind = field(L_.opKind);
    const uint32_t flow = field(L_.opFlow);
    if (flow >= fds_.size()) continue;
    if (kind == L_.opkUdpSend) {
      const uint32_t data = field(L_.opData), len = field(L_.opLen);
      if (fds_[flow] < 0 || data + static_cast<uint64_t>(len) > L_.memoryBytes) continue;
      if (send(fds_[flow], mem_ + data, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) count(L_.cHostSendErrors);
    } else if (kind == L_.opkUdpOpen) {
      const uint32_t addr = field(L_.opAddr);
      sockaddr_storage ss;
      socklen_t slen = 0;
      int err = 0;
      if (addr + 16ull > L_.memoryBytes ||
          !sockaddrFor(mem_ + addr, field(L_.opPort), field(L_.opFamily), ss, slen)) {
        err = EINVAL;
      } else {
        int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
          err = errno;
        } else if (connect(fd, reinterpret_cast<sockaddr*>(&ss), slen) != 0) {
          err = errno;
          close(fd);
        } else {
          if (fds_[flow] >= 0) { close(fds_[flow]); live_--; }
          fds_[flow] = fd;
          live_++;
          struct epoll_event ev = {};
          ev.events = EPOLLIN;
          ev.data.u64 = flow;
          epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
        }
      }
      if (err) {
        count(L_.cHostOpenErrors);
        Ring& r = L_.in;
        if (r.tail() - r.head() < r.g.slots) pushInbound(flow, L_.inkOpenFailed, 0, static_cast<uint32_t>(err));
      }
    } else if (kind == L_.opkClose) {
      if (fds_[flow] >= 0) {
        epoll_ctl(epfd_, EPOLL_CTL_DEL, fds_[flow], nullptr);
        close(fds_[flow]);
        fds_[flow] = -1;
        live_--;
      }
    }
  }
  *countWord = 0;
}

int Datapath::writeLink() {
  Ring& r = L_.tx;
  uint32_t head = r.head();
  const uint32_t tail = r.tail();
  int wrote = 0;
  while (head != tail && linkFd_ >= 0) {
    const uint32_t len = *reinterpret_cast<uint32_t*>(r.desc(head) + L_.descLen);
    ssize_t w = write(linkFd_, r.buf(head), len);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) { watchLinkOut(true); break; }
      count(L_.cLinkTxErrors);  // e.g. EIO while the device is down: the frame is lost, counted
    }
    head++;
    wrote++;
  }
  if (head == tail) watchLinkOut(false);
  if (wrote) r.publishHead(head);
  return wrote;
}

int Datapath::flush() {
  execOps();
  // Host operations have read the RX slots they pointed into: release them.
  L_.rx.publishHead(L_.rx.pendingHead());
  return writeLink();
}

}  // namespace moat
