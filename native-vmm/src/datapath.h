#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ring.h"

namespace moat {

// Offsets and sizes from engine-wasm/assembly/layout.ts, handed over by the worker at attach.
struct Layout {
  Ring rx, tx, in;
  uint32_t opsBase = 0, opBytes = 0, opsCountOff = 0;
  uint32_t opKind = 0, opFlow = 0, opData = 0, opLen = 0, opFamily = 0, opPort = 0, opAddr = 0;
  uint32_t opkUdpOpen = 0, opkUdpSend = 0, opkClose = 0;
  uint32_t descLen = 0, descFlags = 0, descToken = 0, descAux = 0;
  uint32_t inkUdpData = 0, inkFlowError = 0, inkOpenFailed = 0;
  uint32_t countersBase = 0, cHostSendErrors = 0, cHostOpenErrors = 0, cLinkRxErrors = 0, cLinkTxErrors = 0;
  uint32_t flowCapacity = 0, slotBytes = 0, memoryBytes = 0;
};

// The data path of one engine: the link's fd (a TAP device) and the flows' host sockets, all in
// one epoll set whose fd the worker's event loop watches. pump() moves what is readable into the
// RX and inbound rings; flush() executes the engine's host operations, releases RX slots and
// writes the TX ring to the link. Single-threaded: called only from the worker that owns it.
class Datapath {
 public:
  Datapath(uint8_t* mem, const Layout& layout);
  ~Datapath();
  int epollFd() const { return epfd_; }
  // Attach the link fd (takes ownership).
  void setLinkFd(int fd);
  // Returns the number of frames/datagrams/events placed in rings.
  int pump();
  // Returns the number of frames written to the link.
  int flush();
  int liveSockets() const { return live_; }
  void closeAll();

 private:
  void count(uint32_t idx, uint64_t n = 1);
  int readLink(uint32_t budget);
  int readSocket(uint32_t flow, uint32_t budget);
  bool pushInbound(uint32_t flow, uint32_t kind, uint32_t len, uint32_t flags);
  void execOps();
  int writeLink();
  void watchLinkOut(bool on);

  uint8_t* mem_;
  Layout L_;
  int epfd_ = -1;
  int linkFd_ = -1;
  bool linkOutWatched_ = false;
  int live_ = 0;
  std::vector<int> fds_;  // flow index -> host socket fd (-1 = none)
};

}  // namespace moat
