// datapath.cc — moving bytes between the link, the rings and host sockets, with batched syscalls.
//
// Theory of operation
// Everything that can become ready lives in one epoll set: the link's fds (tokens LINK_TOKEN_BASE +
// sub, see link.h) and every flow's host socket (token = flow index; UDP level-triggered, TCP
// edge-triggered). The worker's event loop watches the epoll fd (uv_poll) and, when it is
// readable, alternates
//   pump()       readable fds -> RX ring (frames), inbound ring (data), event ring (events)
//   engineRun()  (WASM) rings -> TX ring + host operations
//   flush()      host operations -> syscalls; RX slots released; TX ring -> link
// until a round moves nothing. Frames are read by the kernel straight into ring slots and
// written straight from them; guest TCP payload is written to sockets straight from RX slots.
//
// TCP host->guest bytes are read with MSG_PEEK under SO_PEEK_OFF: they stay in the socket's
// receive queue until the guest acknowledges them (OPK_TCP_ACKED discards them with MSG_TRUNC),
// and a retransmission just rewinds the peek offset. Reads stop at the credit the engine grants
// (the guest's window), so nothing is buffered here. See engine-wasm/assembly/flow/tcp.ts.
//
// Back-pressure: when a ring is full, reads stop and the data stays in the kernel (UDP: epoll
// reports it again; TCP: the flow is kept on `pending_` and retried at the next pump). When the
// link refuses a frame (EAGAIN), the rest of the TX ring waits for EPOLLOUT. Events without data
// go to the event ring, which is sized so it cannot overflow (layout.ts, EV_SLOTS).
#include "datapath.h"

#include <arpa/inet.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace moat {

static constexpr uint64_t LINK_TOKEN_BASE = 0xffffff00ull;  // + link sub-token (< LINK_SUBS)
static constexpr uint64_t LISTEN_TOKEN_BASE = 1ull << 32;  // + listener id
static constexpr uint64_t DNS_TOKEN_BASE = 0xfff00000ull;      // + upstream DNS socket id
static constexpr uint32_t DNS_SOCKS_MAX = 1024;                // the interceptor bounds what is in flight far below
static constexpr size_t DNS_STAGE_MAX = 512 * 1024;            // answers read and not yet taken
static constexpr uint32_t LINK_READ_BUDGET = 64;   // frames per link wake-up
static constexpr uint32_t SOCKET_READ_BUDGET = 16; // datagrams per UDP socket wake-up (fairness)

static inline bool seqLt(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }

Datapath::Datapath(uint8_t* mem, uint32_t memBytes)
    : mem_(mem),
      memBytes_(memBytes),
      rx_{mem, lay::RX_CTRL, lay::RX_DESC_BASE, lay::RX_BUF_BASE, lay::RX_SLOTS},
      tx_{mem, lay::TX_CTRL, lay::TX_DESC_BASE, lay::TX_BUF_BASE, lay::TX_SLOTS},
      in_{mem, lay::IN_CTRL, lay::IN_DESC_BASE, lay::IN_BUF_BASE, lay::IN_SLOTS},
      ev_{mem, lay::EV_CTRL, lay::EV_DESC_BASE, 0, lay::EV_SLOTS} {  // descriptors only
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  socks_.assign(lay::FLOW_CAPACITY, Sock{});
  listeners_.assign(lay::PUB_MAX, Listener{});
}

Datapath::~Datapath() { closeAll(); }

void Datapath::closeAll() {
  for (auto& s : socks_) {
    // A TCP socket resets on close until its guest stream ended (SO_LINGER, set in tcpConnect).
    if (s.fd >= 0 && !s.shared) close(s.fd);
    s = Sock{};
  }
  pending_.clear();
  for (uint32_t id = 0; id < listeners_.size(); id++) unlisten(id);
  udpPeers_.clear();
  for (uint32_t id = 0; id < dnsSocks_.size(); id++) dnsClose(id);
  dnsStage_.clear();
  live_ = 0;
  if (link_) link_->close();
  link_.reset();
  if (epfd_ >= 0) close(epfd_);
  epfd_ = -1;
}

void Datapath::count(uint32_t idx, uint64_t n) {
  auto* c = reinterpret_cast<uint64_t*>(mem_ + lay::COUNTERS_BASE + 8 * idx);
  *c += n;
}

void Datapath::setLink(Link* link) {
  if (link_) link_->close();  // its fds leave the epoll set as they close
  link_.reset(link);
  auto* c = reinterpret_cast<uint64_t*>(mem_ + lay::COUNTERS_BASE);
  link->counters = LinkCounters{c + ctr::LINK_RX_ERRORS, c + ctr::LINK_TX_ERRORS, c + ctr::LINK_MALFORMED, c + ctr::LINK_PEERS};
  link->watch(epfd_, LINK_TOKEN_BASE);
}

bool Datapath::wrapLink(const std::function<Link*(Link*, int, uint64_t)>& wrap) {
  if (!link_) return false;
  Link* outer = wrap(link_.get(), epfd_, LINK_TOKEN_BASE);
  if (!outer) return false;
  link_.release();  // now the decorator's
  link_.reset(outer);
  return true;
}

// ---- rings toward the engine ----------------------------------------------------------------------

bool Datapath::inboundFull() const { return in_.tail() - in_.head() >= in_.slots; }

static void writeDesc(uint8_t* d, uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags) {
  *reinterpret_cast<uint32_t*>(d + lay::DESC_LEN) = len;
  *reinterpret_cast<uint32_t*>(d + lay::DESC_FLAGS) = flags;
  *reinterpret_cast<uint32_t*>(d + lay::DESC_TOKEN) = flow;
  *reinterpret_cast<uint32_t*>(d + lay::DESC_AUX) = kind;
}

// The caller checked there is room and filled the slot's buffer.
void Datapath::pushInbound(uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags) {
  const uint32_t tail = in_.tail();
  writeDesc(in_.desc(tail), flow, kind, len, flags);
  in_.publishTail(tail + 1);
  pushed_++;
}

void Datapath::pushEvent(uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags) {
  const uint32_t tail = ev_.tail();
  if (tail - ev_.head() >= ev_.slots) return;  // cannot happen by sizing (layout.ts)
  writeDesc(ev_.desc(tail), flow, kind, len, flags);
  ev_.publishTail(tail + 1);
  pushed_++;
}

// ---- readiness ---------------------------------------------------------------------------------------

int Datapath::pump() {
  pushed_ = 0;
  int moved = 0;
  // Retry TCP reads that stopped for lack of inbound ring room.
  if (!pending_.empty() && !inboundFull()) {
    std::vector<uint32_t> retry;
    retry.swap(pending_);
    for (uint32_t flow : retry) {
      socks_[flow].readPending = false;
      readTcp(flow);
    }
  }
  if (!pausedListeners_.empty() && !inboundFull()) {
    std::vector<uint32_t> paused;
    paused.swap(pausedListeners_);
    for (uint32_t id : paused) armListener(id, true);
  }
  // Frames the link holds that no event will announce again (left when the RX ring filled).
  if (link_ && link_->recvPending()) moved += readLink(LINK_READ_BUDGET);
  struct epoll_event evs[64];
  int n = epoll_wait(epfd_, evs, 64, 0);
  for (int i = 0; i < n; i++) {
    const uint64_t token = evs[i].data.u64;
    if (token >= LISTEN_TOKEN_BASE) {
      readListener(static_cast<uint32_t>(token - LISTEN_TOKEN_BASE));
    } else if (token >= DNS_TOKEN_BASE && token < DNS_TOKEN_BASE + DNS_SOCKS_MAX) {
      readDns(static_cast<uint32_t>(token - DNS_TOKEN_BASE));
    } else if (token >= LINK_TOKEN_BASE && token < LINK_TOKEN_BASE + LINK_SUBS) {
      if (!link_) continue;
      const uint32_t what = link_->event(static_cast<uint32_t>(token - LINK_TOKEN_BASE), evs[i].events);
      if (what & LINK_WRITABLE) moved += writeLink();
      if (what & LINK_READABLE) moved += readLink(LINK_READ_BUDGET);
    } else if (token < socks_.size()) {
      const uint32_t flow = static_cast<uint32_t>(token);
      if (socks_[flow].tcp) tcpReady(flow, evs[i].events);
      else readUdp(flow, SOCKET_READ_BUDGET);
    }
  }
  return moved + pushed_;
}

int Datapath::readLink(uint32_t budget) {
  if (!link_) return 0;
  Ring& r = rx_;
  uint32_t tail = r.tail();
  const uint32_t head = r.head();
  int got = 0;
  while (budget-- > 0 && tail - head < r.slots) {
    const uint32_t len = link_->recv(r.buf(tail), lay::SLOT_BYTES);
    if (len == 0) break;
    uint8_t* d = r.desc(tail);
    *reinterpret_cast<uint32_t*>(d + lay::DESC_LEN) = len;
    *reinterpret_cast<uint32_t*>(d + lay::DESC_FLAGS) = 0;
    tail++;
    got++;
  }
  if (got) {
    r.publishTail(tail);
    link_->recvDone();
  }
  return got;
}

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

// Peek host bytes into inbound slots, up to the credit and one segment per slot.
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
    const uint32_t want = std::min({s.limitSeq - s.peekSeq, s.segBytes, lay::SLOT_BYTES});
    const uint32_t tail = in_.tail();
    ssize_t n = recv(s.fd, in_.buf(tail), want, MSG_PEEK | MSG_DONTWAIT);
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

// ---- host operations -----------------------------------------------------------------------------------

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

int Datapath::execOps() {
  auto* countWord = reinterpret_cast<uint32_t*>(mem_ + lay::ST_OPS_COUNT);
  const uint32_t n = *countWord;
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t* op = mem_ + lay::OPS_BASE + i * lay::OP_BYTES;
    auto field = [&](uint32_t off) { return *reinterpret_cast<const uint32_t*>(op + off); };
    const uint32_t kind = field(lay::OP_KIND);
    const uint32_t flow = field(lay::OP_FLOW);
    if (flow >= socks_.size()) continue;
    Sock& s = socks_[flow];
    if (kind == lay::OPK_TCP_SEND) {
      tcpSend(flow, field(lay::OP_DATA), field(lay::OP_LEN), field(lay::OP_PORT));
    } else if (kind == lay::OPK_TCP_ACKED) {
      // Discard what the guest acknowledged, up to the sequence number in DATA. The kernel moves
      // the peek offset back by what is consumed but clamps it at zero: had fewer bytes been
      // peeked than are discarded (a rewind that peeked nothing yet), the offset now points at
      // the new head, and peekSeq must follow it or every later byte would be mislabelled.
      const uint32_t upto = field(lay::OP_DATA);
      while (s.fd >= 0 && seqLt(s.headSeq, upto)) {
        ssize_t d = recv(s.fd, nullptr, upto - s.headSeq, MSG_TRUNC | MSG_DONTWAIT);
        if (d <= 0) break;
        s.headSeq += static_cast<uint32_t>(d);
      }
      if (seqLt(s.peekSeq, s.headSeq)) s.peekSeq = s.headSeq;
    } else if (kind == lay::OPK_TCP_CREDIT) {
      s.limitSeq = field(lay::OP_DATA);
      if (field(lay::OP_LEN)) s.segBytes = std::max<uint32_t>(field(lay::OP_LEN), 64);  // the guest's MSS, once known
      if (!s.drained || s.peerClosed) readTcp(flow);  // else the next arrival's epoll event reads
    } else if (kind == lay::OPK_UDP_SEND) {
      const uint32_t data = field(lay::OP_DATA), len = field(lay::OP_LEN);
      if (s.fd < 0 || data + static_cast<uint64_t>(len) > memBytes_) continue;
      ssize_t sent;
      if (s.shared) {
        const socklen_t plen = s.peer.v4.sin_family == AF_INET ? sizeof s.peer.v4 : sizeof s.peer.v6;
        sent = sendto(s.fd, mem_ + data, len, MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&s.peer), plen);
      } else {
        sent = send(s.fd, mem_ + data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
      if (sent < 0) count(ctr::HOST_SEND_ERRORS);
    } else if (kind == lay::OPK_TCP_CONNECT) {
      tcpConnect(flow, op);
    } else if (kind == lay::OPK_ACCEPT) {
      acceptOp(flow, field(lay::OP_PORT), field(lay::OP_DATA), field(lay::OP_LEN));
    } else if (kind == lay::OPK_REFUSE) {
      refuseOp(field(lay::OP_PORT));
    } else if (kind == lay::OPK_TCP_REWIND) {
      if (s.fd < 0 || s.dead) continue;
      // Peek again from DATA (snd_una): bytes before it were discarded, so it is the queue's
      // head, and the peek offset restarts there.
      const uint32_t from = field(lay::OP_DATA);
      int off = seqLt(s.headSeq, from) ? static_cast<int>(from - s.headSeq) : 0;
      setsockopt(s.fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
      s.peekSeq = s.headSeq + static_cast<uint32_t>(off);
      s.epoch++;
      s.eofPosted = false;
      s.drained = false;  // the rewound bytes are in the queue again
      readTcp(flow);
    } else if (kind == lay::OPK_TCP_SHUTDOWN) {
      if (s.fd < 0 || s.dead || s.writeBlocked) continue;  // the guest retransmits its FIN
      if (shutdown(s.fd, SHUT_WR) == 0) {
        struct linger graceful = {0, 0};  // the stream is complete: a close from now on is a FIN
        setsockopt(s.fd, SOL_SOCKET, SO_LINGER, &graceful, sizeof graceful);
        pushEvent(flow, lay::INK_TCP_SHUT_DONE, 0, 0);
      } else {
        // The connection is gone (the peer reset it after its own FIN, which the reads that
        // stopped at that EOF never saw): say so, or the guest's FIN would wait forever.
        const int err = errno;
        s.dead = true;
        epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
        pushEvent(flow, lay::INK_TCP_RESET, 0, static_cast<uint32_t>(err));
      }
    } else if (kind == lay::OPK_TCP_ABORT) {
      closeSock(flow, true);
    } else if (kind == lay::OPK_CLOSE) {
      closeSock(flow, false);
    } else if (kind == lay::OPK_UDP_OPEN || kind == lay::OPK_ICMP_OPEN) {
      // A connected UDP socket, or an unprivileged ICMP echo ("ping") socket: the kernel picks
      // the echo identifier and hands back only replies to it (net.ipv4.ping_group_range must
      // include our group, or socket() fails with EACCES and the flow is dropped).
      const uint32_t addr = field(lay::OP_ADDR);
      sockaddr_storage ss;
      socklen_t slen = 0;
      int err = 0;
      if (addr + 16ull > memBytes_ || !sockaddrFor(mem_ + addr, field(lay::OP_PORT), field(lay::OP_FAMILY), ss, slen)) {
        err = EINVAL;
      } else {
        const int proto = kind == lay::OPK_UDP_OPEN ? 0 : (ss.ss_family == AF_INET ? static_cast<int>(IPPROTO_ICMP) : static_cast<int>(IPPROTO_ICMPV6));
        int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
        if (fd < 0) {
          err = errno;
        } else if (connect(fd, reinterpret_cast<sockaddr*>(&ss), slen) != 0) {
          err = errno;
          close(fd);
        } else {
          closeSock(flow, false);
          s.fd = fd;
          live_++;
          epollSet(epfd_, EPOLL_CTL_ADD, fd, EPOLLIN, flow);
        }
      }
      if (err) {
        count(ctr::HOST_OPEN_ERRORS);
        pushEvent(flow, lay::INK_OPEN_FAILED, 0, static_cast<uint32_t>(err));
      }
    }
  }
  // Short writes block a flow only within one batch.
  for (uint32_t i = 0; i < n; i++) {
    const uint32_t flow = *reinterpret_cast<const uint32_t*>(mem_ + lay::OPS_BASE + i * lay::OP_BYTES + lay::OP_FLOW);
    if (flow < socks_.size()) socks_[flow].writeBlocked = false;
  }
  *countWord = 0;
  return 0;
}

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

int Datapath::writeLink() {
  Ring& r = tx_;
  uint32_t head = r.head();
  const uint32_t tail = r.tail();
  int wrote = 0;
  while (head != tail && link_) {
    const uint32_t len = *reinterpret_cast<uint32_t*>(r.desc(head) + lay::DESC_LEN);
    if (!link_->send(r.buf(head), len)) break;  // full: the link reports LINK_WRITABLE later
    head++;
    wrote++;
  }
  if (wrote) {
    link_->sendDone();
    r.publishHead(head);
  }
  return wrote;
}

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

int Datapath::flush() {
  pushed_ = 0;
  execOps();
  // Host operations have read the RX slots they pointed into: release them.
  rx_.publishHead(rx_.pendingHead());
  return writeLink() + pushed_;
}

}  // namespace moat
