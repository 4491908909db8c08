// ring.h — the SPSC descriptor ring protocol of engine-wasm/assembly/ring.ts, in C++.
//
// Same memory, same rules: free-running u32 head (consumer) and tail (producer) counters on
// their own cache lines; slot i owns the fixed buffer i; a producer publishes a batch with one
// release store of tail, a consumer releases with one release store of head; whoever publishes
// wakes the other side only when its sleep flag is set (futex on the counter's address, which is
// what Atomics.wait / memory.atomic.wait32 sleep on). Offsets and sizes are layout.gen.h's.
#pragma once
#include <cstdint>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "layout.gen.h"

namespace moat {

// One ring over the engine's memory: its control block, descriptors and buffers (slot i owns
// buffer i; the event ring has descriptors only).
struct Ring {
  uint8_t* mem = nullptr;
  uint32_t ctrl = 0;      // offset of the control block
  uint32_t descBase = 0;  // offset of the descriptors
  uint32_t bufBase = 0;   // offset of slot 0's buffer
  uint32_t slots = 0;     // power of two

  uint32_t* word(uint32_t off) const { return reinterpret_cast<uint32_t*>(mem + off); }
  uint32_t head() const { return __atomic_load_n(word(ctrl + lay::RING_CTRL_HEAD), __ATOMIC_ACQUIRE); }
  uint32_t tail() const { return __atomic_load_n(word(ctrl + lay::RING_CTRL_TAIL), __ATOMIC_ACQUIRE); }
  uint32_t pendingHead() const { return __atomic_load_n(word(ctrl + lay::RING_CTRL_PENDING_HEAD), __ATOMIC_ACQUIRE); }
  uint8_t* desc(uint32_t counter) const { return mem + descBase + (counter & (slots - 1)) * lay::DESC_BYTES; }
  uint8_t* buf(uint32_t counter) const { return mem + bufBase + static_cast<size_t>(counter & (slots - 1)) * lay::SLOT_BYTES; }
  void wakeIfSleeping(uint32_t counterOff) const {
    if (__atomic_load_n(word(ctrl + lay::RING_CTRL_SLEEP), __ATOMIC_ACQUIRE) != 0) {
      syscall(SYS_futex, word(ctrl + counterOff), FUTEX_WAKE, 1, nullptr, nullptr, 0);
    }
  }
  void publishTail(uint32_t t) const {
    __atomic_store_n(word(ctrl + lay::RING_CTRL_TAIL), t, __ATOMIC_RELEASE);
    wakeIfSleeping(lay::RING_CTRL_TAIL);
  }
  void publishHead(uint32_t h) const {
    __atomic_store_n(word(ctrl + lay::RING_CTRL_HEAD), h, __ATOMIC_RELEASE);
    wakeIfSleeping(lay::RING_CTRL_HEAD);
  }
};

}  // namespace moat
