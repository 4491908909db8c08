#pragma once
#include <netinet/in.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <cstring>

#include "layout.gen.h"
#include "link.h"
#include "ring.h"

namespace moat {

// The data path of one engine: the guest's link (link.h) and the flows' host sockets, all in
// one epoll set whose fd the worker's event loop watches. pump() moves what is readable into the
// RX and inbound rings; flush() executes the engine's host operations, releases RX slots and
// writes the TX ring to the link. Single-threaded: called only from the worker that owns it.
// A table by index whose entries are made a chunk at a time, on first use: a sandbox's idle
// flow table costs nothing (16384 flows' socket state, made whole, was 2 MiB resident per
// sandbox). Entries are value-initialised (their default member initialisers).
template <typename T, uint32_t ChunkBits = 8>
class ChunkedTable {
 public:
  void reset(uint32_t capacity) {
    cap_ = capacity;
    chunks_.clear();
    chunks_.resize((capacity + kChunk - 1) >> ChunkBits);
  }
  uint32_t size() const { return cap_; }
  T& operator[](uint32_t i) {
    auto& c = chunks_[i >> ChunkBits];
    if (!c) c.reset(new T[kChunk]());
    return c[i & (kChunk - 1)];
  }
  // Each entry made so far (the others are in their initial state).
  template <typename F>
  void forEachMade(F f) {
    for (auto& c : chunks_)
      if (c)
        for (uint32_t i = 0; i < kChunk; i++) f(c[i]);
  }

 private:
  static constexpr uint32_t kChunk = 1u << ChunkBits;
  uint32_t cap_ = 0;
  std::vector<std::unique_ptr<T[]>> chunks_;
};

// The engine's memory is laid out as layout.gen.h says (engine-wasm/assembly/layout.ts).
class Datapath {
 public:
  // `mem`: the engine's shared memory, `memBytes` long (at least MEMORY_END).
  Datapath(uint8_t* mem, uint32_t memBytes);
  ~Datapath();
  int epollFd() const { return epfd_; }
  // Attach the guest's link (takes ownership; replaces any earlier one).
  void setLink(Link* link);
  // Put a decorator (link-middleware.h) around the attached link: `wrap` gets the link, the epoll
  // fd and the link's token base, and returns the link used from then on, or nullptr to leave
  // the link as it was (not taken). False when no link is attached or `wrap` refused.
  bool wrapLink(const std::function<Link*(Link*, int, uint64_t)>& wrap);
  // Returns the number of frames/datagrams/events placed in rings.
  int pump();
  // Returns the number of frames written to the link.
  int flush();
  int liveSockets() const { return live_; }
  // Published ports: listen on (addr16, port) for listener `id` (< PUB_MAX). Returns the bound
  // port, or -errno (EADDRINUSE, EACCES, ...).
  int listenOn(uint32_t id, bool tcp, uint32_t family, const uint8_t* addr16, uint32_t port, bool dualStack);
  // Stop listener `id`: its waiting peer is refused; its UDP peers' flows lose their socket.
  void unlisten(uint32_t id);
  // Upstream DNS (the worker's interceptor): a connected UDP socket to (addr16, port). Returns its
  // id, or -errno. Answers are read in pump() and handed over by dnsTake().
  int dnsOpen(uint32_t family, const uint8_t* addr16, uint32_t port);
  void dnsClose(uint32_t id);
  // Send one datagram on socket `id`: 0, or -errno.
  int dnsSend(uint32_t id, const uint8_t* data, uint32_t len);
  // Move the datagrams read since the last call into `out` as entries [u16 id][u16 len][len bytes]
  // (len 0xffff: an error, followed by u16 errno and no bytes); returns the bytes written.
  uint32_t dnsTake(uint8_t* out, uint32_t cap);
  // Close the link and every host socket. A TCP socket whose guest stream did not end with the
  // guest's FIN is aborted (RST, by its SO_LINGER): a connection cut short must never look like a
  // clean end.
  // Close every socket and the link (`deferSlow`: the link may defer a slow fd, link.h).
  void closeAll(bool deferSlow = false);

 private:
  // Tell the engine what the link now attached takes (ST_TX_CSUM_LEFT_OK).
  void announceLink();
  // Give back the inbound slots the engine is done with (after writeLink).
  void releaseInbound();
  // A flow's host socket. TCP sockets are edge-triggered; what could not be done for lack of
  // ring room is remembered in `pending` and retried at every pump.
  struct Sock {
    int fd = -1;
    bool tcp = false;
    bool connecting = false;
    bool eofPosted = false;
    bool dead = false;         // failed: no more reads; waits for the engine's close
    bool writeWatch = false;   // EPOLLOUT watched: the engine waits for send space
    bool readPending = false;  // stopped reading for lack of inbound ring room
    bool writeBlocked = false; // a short write in the current batch of operations
    bool drained = false;      // the last peek found the queue empty: wait for the next arrival
    bool peerClosed = false;   // EPOLLRDHUP seen: the FIN is queued behind the data, keep peeking to it
    // Sequence numbers (the engine's, toward the guest): headSeq is the first byte still in the
    // receive queue (everything before it was acknowledged and discarded), peekSeq the byte at
    // the peek offset, limitSeq the end of the credit. headSeq <= peekSeq <= limitSeq.
    uint32_t headSeq = 0, peekSeq = 0, limitSeq = 0, segBytes = 0;
    uint8_t epoch = 0;  // rewinds executed: tags peeked data and EOF (layout.ts, INK_EPOCH_SHIFT)
    bool redirect = false;     // a redirect: the preamble goes out first, once connected
    uint8_t preamble[lay::REDIRECT_PREAMBLE_BYTES];
    uint32_t spaceEstimate = 0;  // send space measured, less what was written since
    uint32_t wrSeq = 0;          // the guest's sequence number of the next byte the socket takes (once wrKnown)
    bool wrKnown = false;
    uint32_t sendsSinceMeasure = 0;
    // A UDP peer of a published port: the fd is the listener's (never closed here), datagrams
    // go back with sendto to `peer`.
    bool shared = false;
    uint32_t listener = 0;
    union { sockaddr_in v4; sockaddr_in6 v6; } peer = {};
  };

  // A published port's listening socket (layout.ts, "published ports").
  struct Listener {
    int fd = -1;
    bool tcp = false;
    bool waiting = false;  // an INK_ACCEPT is with the engine: nothing more is taken until it answers
    bool armed = false;    // EPOLLIN watched
    int pendingFd = -1;    // TCP: the accepted peer the engine is deciding about
    union { sockaddr_in v4; sockaddr_in6 v6; } pendingPeer = {};  // UDP: the new peer's address
  };
  struct PeerKey {
    uint32_t listener;
    uint16_t port;
    uint8_t addr[16];
    bool operator==(const PeerKey& o) const { return listener == o.listener && port == o.port && memcmp(addr, o.addr, 16) == 0; }
  };
  struct PeerKeyHash {
    size_t operator()(const PeerKey& k) const {
      uint64_t h = 1469598103934665603ull ^ (static_cast<uint64_t>(k.listener) << 16 | k.port);
      for (uint8_t b : k.addr) h = (h ^ b) * 1099511628211ull;
      return static_cast<size_t>(h);
    }
  };

  // epoll tokens: a flow's host socket is filed under its index (< FLOW_CAPACITY), the rest above.
  static constexpr uint64_t LINK_TOKEN_BASE = 0xffffff00ull;  // + link sub-token (< LINK_SUBS)
  static constexpr uint64_t LISTEN_TOKEN_BASE = 1ull << 32;   // + listener id
  static constexpr uint64_t DNS_TOKEN_BASE = 0xfff00000ull;   // + upstream DNS socket id
  static constexpr uint32_t DNS_SOCKS_MAX = 1024;             // the interceptor bounds what is in flight far below
  static constexpr size_t DNS_STAGE_MAX = 512 * 1024;         // answers read and not yet taken
  static constexpr uint32_t LINK_READ_BUDGET = 64;            // frames per link wake-up
  static constexpr uint32_t SOCKET_READ_BUDGET = 16;          // datagrams per UDP socket wake-up (fairness)

  static bool seqLt(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }
  // (addr16, port) of `family` (4: the address is ::ffff:a.b.c.d) as a socket address; false for
  // another family.
  static bool sockaddrFor(const uint8_t* addr16, uint32_t port, uint32_t family, sockaddr_storage& ss, socklen_t& len);

  void count(uint32_t idx, uint64_t n = 1);
  int readLink(uint32_t budget);
  int readUdp(uint32_t flow, uint32_t budget);
  int readTcp(uint32_t flow);
  int tcpReady(uint32_t flow, uint32_t events);
  bool inboundFull() const;
  void pushInbound(uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags);
  void pushEvent(uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags);
  int execOps();
  void tcpConnect(uint32_t flow, const uint8_t* op);
  void tcpSend(uint32_t flow, uint32_t data, uint32_t len, uint32_t seq);
  uint32_t sendSpace(int fd);
  void setTcpEvents(uint32_t flow);
  void closeSock(uint32_t flow, bool abort);
  int writeLink();
  int readListener(uint32_t id);
  void armListener(uint32_t id, bool on);
  void acceptOp(uint32_t flow, uint32_t id, uint32_t seq, uint32_t seg);
  void refuseOp(uint32_t id);
  void tuneTcp(int fd);

  uint8_t* mem_;
  uint32_t memBytes_;
  Ring rx_, tx_, in_, ev_;
  int epfd_ = -1;
  std::unique_ptr<Link> link_;
  int live_ = 0;
  int pushed_ = 0;                // inbound entries produced since the last pump/flush
  ChunkedTable<Sock> socks_;        // by flow index
  std::vector<uint32_t> pending_;  // flows with reads to retry
  std::vector<Listener> listeners_;  // by listener id
  std::vector<uint32_t> pausedListeners_;  // stopped for lack of inbound ring room: re-armed at the next pump
  std::unordered_map<PeerKey, uint32_t, PeerKeyHash> udpPeers_;  // published UDP ports: peer -> flow
  void readDns(uint32_t id);
  std::vector<int> dnsSocks_;       // by id; -1 = free
  std::vector<uint8_t> dnsStage_;   // datagrams read, not yet taken (bounded: DNS_STAGE_MAX)
};

}  // namespace moat
