#pragma once
// link-middleware.h — decorators at the link seam (link.h): a Link that wraps any Link, the way
// smoltcp's phy middleware (PcapWriter, FaultInjector) wraps a device. The data path cannot tell
// a decorated link from a bare one; a decorator forwards every call and adds its own work.
//
//   pcap     every frame that enters (recv) or leaves (send) the inner link, appended to a pcap
//            file (nanosecond timestamps, LINKTYPE_ETHERNET), written in batches; stops at a size
//            bound and says so once on stderr.
//   faults   drop / duplicate / reorder / delay / corrupt frames in either direction, by rate and
//            a seed (tests only: turned on by MOAT_FAULTS or the API's `faults` option).
//
// A decorator is put on after the inner link was attached and watched (Datapath::wrapLink). It
// owns the inner link: close() closes it, and deleting the decorator deletes it.
#include <cstdint>
#include <string>

#include "link.h"

namespace moat {

// Sub-token a decorator may register in the link's epoll range (link.h: LINK_SUBS). The links
// themselves count up from 0.
static constexpr uint32_t FAULT_TIMER_SUB = LINK_SUBS - 1;

// Opens (creates or truncates, mode 0600) `path` and writes the pcap header. `maxBytes` bounds the
// file (header included); 0 = unbounded. Returns nullptr with `err` when the file cannot be opened
// (the inner link is then not taken).
Link* newPcapLink(Link* inner, const std::string& path, uint64_t maxBytes, std::string& err);

struct FaultSpec {
  // Probabilities in [0, 1] per frame and direction.
  double drop = 0, dup = 0, reorder = 0, delay = 0, corrupt = 0;
  uint32_t delayMs = 20;   // how long a delayed frame is held
  uint32_t blackoutMs = 0; // from this long after the decorator is put on, every frame is dropped (0: never): a peer that vanishes
  uint64_t seed = 1;
  bool toEngine = true;    // faults on frames from the guest (recv)
  bool toGuest = true;     // faults on frames to the guest (send)
};

// Wraps `inner`; registers a timerfd in `epfd` under `base + FAULT_TIMER_SUB` for held frames.
Link* newFaultLink(Link* inner, const FaultSpec& spec, int epfd, uint64_t base);

}  // namespace moat
