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
//
// The data path is one class in four files: this one (the loop: pump, the rings, the link, and
// the engine's host operations), host-sockets.cc (the flows' TCP and UDP sockets),
// listeners.cc (published ports) and dns-sockets.cc (the interceptor's upstream sockets).
#include "datapath.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace moat {

Datapath::Datapath(uint8_t* mem, uint32_t memBytes)
    : mem_(mem),
      memBytes_(memBytes),
      rx_{mem, lay::RX_CTRL, lay::RX_DESC_BASE, lay::RX_BUF_BASE, lay::RX_SLOTS},
      tx_{mem, lay::TX_CTRL, lay::TX_DESC_BASE, lay::TX_BUF_BASE, lay::TX_SLOTS},
      in_{mem, lay::IN_CTRL, lay::IN_DESC_BASE, lay::IN_BUF_BASE, lay::IN_SLOTS},
      ev_{mem, lay::EV_CTRL, lay::EV_DESC_BASE, 0, lay::EV_SLOTS} {  // descriptors only
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  socks_.reset(lay::FLOW_CAPACITY);
  listeners_.assign(lay::PUB_MAX, Listener{});
}

Datapath::~Datapath() { closeAll(); }

void Datapath::closeAll(bool deferSlow) {
  socks_.forEachMade([](Sock& s) {
    // A TCP socket resets on close until its guest stream ended (SO_LINGER, set in tcpConnect).
    if (s.fd >= 0 && !s.shared) close(s.fd);
    s = Sock{};
  });
  pending_.clear();
  for (uint32_t id = 0; id < listeners_.size(); id++) unlisten(id);
  udpPeers_.clear();
  for (uint32_t id = 0; id < dnsSocks_.size(); id++) dnsClose(id);
  dnsStage_.clear();
  live_ = 0;
  if (link_) {
    if (deferSlow) link_->closeDeferring();
    else link_->close();
  }
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
  announceLink();
}

void Datapath::announceLink() {
  *reinterpret_cast<uint32_t*>(mem_ + lay::ST_TX_CSUM_LEFT_OK) = link_ && link_->takesCsumLeft() ? 1 : 0;
}

bool Datapath::wrapLink(const std::function<Link*(Link*, int, uint64_t)>& wrap) {
  if (!link_) return false;
  Link* outer = wrap(link_.get(), epfd_, LINK_TOKEN_BASE);
  if (!outer) return false;
  link_.release();  // now the decorator's
  link_.reset(outer);
  announceLink();
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
      announceLink();  // (a VMM's front-end negotiates the offloads after the link attached)
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
    *reinterpret_cast<uint32_t*>(d + lay::DESC_FLAGS) = link_->recvFlags();
    tail++;
    got++;
  }
  if (got) {
    r.publishTail(tail);
    link_->recvDone();
  }
  return got;
}

int Datapath::writeLink() {
  Ring& r = tx_;
  uint32_t head = r.head();
  const uint32_t tail = r.tail();
  int wrote = 0;
  while (head != tail && link_) {
    const uint8_t* d = r.desc(head);
    auto field = [&](uint32_t off) { return *reinterpret_cast<const uint32_t*>(d + off); };
    const uint32_t len = field(lay::DESC_LEN), flags = field(lay::DESC_FLAGS), csum = field(lay::DESC_TOKEN);
    uint8_t* frame = r.buf(head);
    if (flags & lay::TX_F_EXTERNAL) {
      // Built in the inbound slot whose bytes it carries: it must lie within one.
      const uint64_t at = field(lay::DESC_AUX), slot = (at - lay::IN_BUF_BASE) / lay::SLOT_BYTES;
      if (at < lay::IN_BUF_BASE || slot >= lay::IN_SLOTS || at + len > lay::IN_BUF_BASE + (slot + 1) * lay::SLOT_BYTES) {
        count(ctr::LINK_TX_ERRORS);
        head++;
        continue;
      }
      frame = mem_ + at;
    } else if (len > lay::SLOT_BYTES) {
      count(ctr::LINK_TX_ERRORS);
      head++;
      continue;
    }
    const bool taken = flags & lay::TX_F_CSUM_LEFT ? link_->sendCsumLeft(frame, len, csum & 0xffff, csum >> 16) : link_->send(frame, len);
    if (!taken) break;  // full: the link reports LINK_WRITABLE later
    head++;
    wrote++;
  }
  if (wrote) link_->sendDone();
  if (head != r.head()) r.publishHead(head);
  releaseInbound();
  return wrote;
}

// The inbound slots the engine has consumed go back to the ring in order; one lent to the frame
// built in it (layout.ts, IN_TCP_DATA_AT) only once the link has taken that frame.
void Datapath::releaseInbound() {
  const uint32_t consumed = in_.pendingHead(), sent = tx_.head();
  uint32_t h = in_.head();
  while (h != consumed) {
    const auto* lent = reinterpret_cast<const uint32_t*>(mem_ + lay::IN_LENT_BASE + (h & (lay::IN_SLOTS - 1)) * 8);
    if (lent[0] && static_cast<int32_t>(sent - lent[1]) <= 0) break;  // its frame is still queued
    h++;
  }
  if (h != in_.head()) in_.publishHead(h);
}

int Datapath::flush() {
  pushed_ = 0;
  execOps();
  // Host operations have read the RX slots they pointed into: release them.
  rx_.publishHead(rx_.pendingHead());
  return writeLink() + pushed_;
}

// ---- host operations (OPK_*, queued by the engine) -----------------------------------------------------

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

}  // namespace moat
