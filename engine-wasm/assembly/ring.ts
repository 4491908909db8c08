// ring.ts — single-producer/single-consumer descriptor rings over the shared memory.
//
// Theory of operation
// A ring is a control block (layout.ts RING_CTRL_*), an array of 16-byte descriptors and one
// fixed SLOT_BYTES buffer per descriptor (slot i always owns buffer i, so a descriptor never
// carries a pointer). head and tail are free-running u32 counters: the consumer owns head, the
// producer owns tail, `tail - head` (mod 2^32) is the fill, and slot index = counter & (slots-1).
//
// Producers fill slots and publish a whole batch with one release store of tail; consumers read
// tail with an acquire load, process what is there, and release slots with one store of head.
// Notification is the consumer's business: before sleeping it sets its sleep flag and re-reads
// tail; a producer that sees the flag set after publishing notifies (Atomics.notify / futex).
// The same protocol is implemented by test/helpers/ring.ts (TypeScript, for tests) and
// native-vmm/src/ring.h (C++); the three are tested against each other.

import { RING_CTRL_HEAD, RING_CTRL_TAIL, RING_CTRL_SLEEP, DESC_BYTES, SLOT_BYTES } from "./layout";

@inline export function ringHead(ctrl: usize): u32 {
  return atomic.load<u32>(ctrl + RING_CTRL_HEAD);
}
@inline export function ringTail(ctrl: usize): u32 {
  return atomic.load<u32>(ctrl + RING_CTRL_TAIL);
}
@inline export function ringPublishTail(ctrl: usize, tail: u32): void {
  atomic.store<u32>(ctrl + RING_CTRL_TAIL, tail);
  if (atomic.load<u32>(ctrl + RING_CTRL_SLEEP) != 0) {
    atomic.notify(ctrl + RING_CTRL_TAIL, 1);
  }
}
@inline export function ringPublishHead(ctrl: usize, head: u32): void {
  atomic.store<u32>(ctrl + RING_CTRL_HEAD, head);
  if (atomic.load<u32>(ctrl + RING_CTRL_SLEEP) != 0) {
    atomic.notify(ctrl + RING_CTRL_HEAD, 1);
  }
}
@inline export function descAt(descBase: usize, slots: u32, counter: u32): usize {
  return descBase + <usize>((counter & (slots - 1)) * DESC_BYTES);
}
@inline export function bufAt(bufBase: usize, slots: u32, counter: u32): usize {
  return bufBase + <usize>(counter & (slots - 1)) * <usize>SLOT_BYTES;
}
