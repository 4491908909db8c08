// ring.ts — the SPSC descriptor ring protocol of engine-wasm/assembly/ring.ts, in TypeScript.
//
// A test helper: the orchestrator never touches a ring's slots itself (the engine and native-vmm
// do), but tests drive the engine's rings, and check the protocol across threads, with this third
// implementation of it.
//
// Theory of operation
// A ring is a control block (layout.ts RING_CTRL_*), an array of 16-byte descriptors and one
// fixed slot buffer per descriptor (slot i always owns buffer i, so a descriptor never carries a
// pointer). head and tail are free-running u32 counters: the consumer owns head, the producer
// owns tail, `tail - head` (mod 2^32) is the fill, and slot index = counter & (slots-1). Each
// counter sits on its own cache line, so producer and consumer threads do not false-share.
//
// Producers fill slots (reserve, write the bytes, commit) and publish a whole batch with one
// store of tail: commit publishes by itself every PUBLISH_BATCH commits, and the producer calls
// publish() when it has nothing more for now. Consumers read tail, process what is there
// (available, peek) and release slots with one store of head. JavaScript's Atomics are
// sequentially consistent, which is at least the acquire/release the other two implementations
// use: a descriptor and its buffer are written before the tail store that publishes them, and
// read only after the tail load that revealed them.
//
// Notification is the sleeper's business: before sleeping a side sets its bit in the sleep flag
// and re-reads the other side's counter; whoever stores a counter afterwards loads the flag and,
// only if it is non-zero, notifies (Atomics.notify on the counter's word, which is what
// memory.atomic.wait32 and the futex in native-vmm/src/ring.h sleep on). Store-then-load on one
// side against set-then-load on the other, all sequentially consistent, means at least one of
// them sees the other: a wakeup is never lost, and a busy pair never pays for a notify.
// The consumer sleeps on tail (waitForData) with bit SLEEP_CONSUMER, a producer waiting for
// room sleeps on head (waitForSpace) with bit SLEEP_PRODUCER. Only one side can be asleep at a
// time (an empty ring has room, a full one has data), so "flag != 0" seen by the side that is
// storing a counter always means "the other side sleeps" — exactly the test the AssemblyScript
// and C++ publishers make. The bits are set and cleared with Atomics.or / Atomics.and; a peer
// in another language that sleeps should do the same (or store 1 / 0 if it is the only sleeper).
//
// A full ring publishes the producer's pending commits (in reserve and waitForSpace): the
// consumer cannot free slots it has not been shown, so a producer that batched a whole ring
// would otherwise wait forever.
//
// The same protocol is implemented by engine-wasm/assembly/ring.ts (AssemblyScript) and
// native-vmm/src/ring.h (C++); the three are tested against each other (test/unit/ring.test.ts).
//
// Hot paths (reserve, commit, publish, available, release) allocate nothing; peek returns one
// reused object per view. Counters and descriptors are read as host-endian words, like the
// engine's own views: the wasm memory is little-endian, and so must the host be (checked below).

import { performance } from "node:perf_hooks";
import { layout } from "../../orchestrator/src/engine/layout.js";

/** Commits after which commit() publishes by itself. */
export const PUBLISH_BATCH = 32;
/** Sleep-flag bit of a consumer waiting on tail. */
export const SLEEP_CONSUMER = 1;
/** Sleep-flag bit of a producer waiting on head. */
export const SLEEP_PRODUCER = 2;
/** How long waitForData / waitForSpace spin on the counter before they sleep. */
const SPIN_MICROS = 50;
const SPIN_CHECKS_PER_CLOCK_READ = 16;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error("moat rings need a little-endian host (the wasm memory is little-endian)");
}

/** A descriptor as peek() returns it (the same object for every call on one view). */
export interface RingEntry {
  /** Byte offset of the slot's buffer in the ring's buffer. */
  offset: number;
  len: number;
  flags: number;
  token: number;
  aux: number;
}

export class RingView {
  readonly slots: number;
  readonly slotBytes: number;
  readonly descBase: number;
  readonly bufBase: number;
  /** Statistics: Atomics.notify calls issued by this view (publish and release). */
  notifyCount = 0;
  /** Statistics: tail stores (publishes) by this view. */
  publishCount = 0;

  private readonly i32: Int32Array;
  private readonly u32: Uint32Array;
  private readonly mask: number;
  private readonly headIdx: number; // word indexes of the control block's counters
  private readonly tailIdx: number;
  private readonly sleepIdx: number;
  private readonly descIdx: number; // word index of descriptor 0
  // producer side
  private nextTail: number; // tail including unpublished commits
  private publishedTail: number;
  private headSeen: number; // last head loaded (the consumer's, only ever moves forward)
  // consumer side
  private head: number;
  private tailSeen: number;
  private readonly entry: RingEntry = { offset: 0, len: 0, flags: 0, token: 0, aux: 0 };

  constructor(buffer: SharedArrayBuffer | ArrayBuffer, ctrlOffset: number, descBase: number, bufBase: number, slots: number, slotBytes: number) {
    if (!Number.isInteger(slots) || slots < 1 || slots > 0x40000000 || (slots & (slots - 1)) !== 0) {
      throw new RangeError(`ring slots must be a power of two, not ${slots}`);
    }
    if (ctrlOffset % 4 !== 0 || descBase % 4 !== 0) throw new RangeError("ring control block and descriptors must be 4-byte aligned");
    if (ctrlOffset + layout.RING_CTRL_BYTES > buffer.byteLength ||
        descBase + slots * layout.DESC_BYTES > buffer.byteLength ||
        bufBase + slots * slotBytes > buffer.byteLength) {
      throw new RangeError("ring does not fit in its buffer");
    }
    this.slots = slots;
    this.slotBytes = slotBytes;
    this.descBase = descBase;
    this.bufBase = bufBase;
    this.mask = slots - 1;
    this.i32 = new Int32Array(buffer, 0, Math.floor(buffer.byteLength / 4));
    this.u32 = new Uint32Array(buffer, 0, Math.floor(buffer.byteLength / 4));
    this.headIdx = (ctrlOffset + layout.RING_CTRL_HEAD) >> 2;
    this.tailIdx = (ctrlOffset + layout.RING_CTRL_TAIL) >> 2;
    this.sleepIdx = (ctrlOffset + layout.RING_CTRL_SLEEP) >> 2;
    this.descIdx = descBase >> 2;
    const tail = Atomics.load(this.i32, this.tailIdx) >>> 0;
    const head = Atomics.load(this.i32, this.headIdx) >>> 0;
    this.nextTail = tail;
    this.publishedTail = tail;
    this.headSeen = head;
    this.head = head;
    this.tailSeen = tail;
  }

  // ---- producer ---------------------------------------------------------------------------------

  /** Byte offset of the next free slot's buffer, or -1 when the ring is full. */
  reserve(): number {
    if (((this.nextTail - this.headSeen) >>> 0) >= this.slots) {
      this.headSeen = Atomics.load(this.i32, this.headIdx) >>> 0;
      if (((this.nextTail - this.headSeen) >>> 0) >= this.slots) {
        this.publish(); // the consumer can only free what it has been shown
        return -1;
      }
    }
    return this.bufBase + (this.nextTail & this.mask) * this.slotBytes;
  }

  /** Describe the slot reserve() returned as holding `len` bytes, and take it. */
  commit(len: number, token = 0, aux = 0, flags = 0): void {
    if (((this.nextTail - this.headSeen) >>> 0) >= this.slots) throw new RangeError("ring commit without a reserved slot");
    if (len > this.slotBytes || len < 0) throw new RangeError(`ring commit of ${len} bytes into ${this.slotBytes}-byte slots`);
    const d = this.descIdx + ((this.nextTail & this.mask) << 2);
    this.u32[d + (layout.DESC_LEN >> 2)] = len;
    this.u32[d + (layout.DESC_FLAGS >> 2)] = flags;
    this.u32[d + (layout.DESC_TOKEN >> 2)] = token;
    this.u32[d + (layout.DESC_AUX >> 2)] = aux;
    this.nextTail = (this.nextTail + 1) >>> 0;
    if (((this.nextTail - this.publishedTail) >>> 0) >= PUBLISH_BATCH) this.publish();
  }

  /** Make every commit visible to the consumer; wake it if it sleeps. */
  publish(): void {
    if (this.nextTail === this.publishedTail) return;
    this.publishedTail = this.nextTail;
    Atomics.store(this.i32, this.tailIdx, this.nextTail | 0);
    this.publishCount++;
    if (Atomics.load(this.i32, this.sleepIdx) !== 0) {
      Atomics.notify(this.i32, this.tailIdx, 1);
      this.notifyCount++;
    }
  }

  /** Slots the producer may still fill (reloads head). */
  free(): number {
    this.headSeen = Atomics.load(this.i32, this.headIdx) >>> 0;
    return this.slots - ((this.nextTail - this.headSeen) >>> 0);
  }

  /**
   * Wait until a slot is free or `timeoutMs` passed; returns the free slot count (0 on timeout).
   * Publishes pending commits first. Spins briefly, then sleeps on head.
   */
  waitForSpace(timeoutMs: number): number {
    let n = this.free();
    if (n > 0) return n;
    this.publish();
    const deadline = performance.now() + SPIN_MICROS / 1000;
    for (let i = 1; ; i++) {
      n = this.free();
      if (n > 0) return n;
      if (i % SPIN_CHECKS_PER_CLOCK_READ === 0 && performance.now() >= deadline) break;
    }
    Atomics.or(this.i32, this.sleepIdx, SLEEP_PRODUCER);
    n = this.free();
    if (n === 0) Atomics.wait(this.i32, this.headIdx, this.headSeen | 0, timeoutMs);
    Atomics.and(this.i32, this.sleepIdx, ~SLEEP_PRODUCER);
    return this.free();
  }

  // ---- consumer ---------------------------------------------------------------------------------

  /** Published entries not yet released (reloads tail and head). */
  available(): number {
    this.tailSeen = Atomics.load(this.i32, this.tailIdx) >>> 0;
    this.head = Atomics.load(this.i32, this.headIdx) >>> 0;
    return (this.tailSeen - this.head) >>> 0;
  }

  /** Entry `i` (0 = oldest) of those the last available() reported. The object is reused. */
  peek(i: number): RingEntry {
    if (i < 0 || i >= ((this.tailSeen - this.head) >>> 0)) throw new RangeError(`ring peek(${i}) beyond what is available`);
    const slot = (this.head + i) & this.mask;
    const d = this.descIdx + (slot << 2);
    const e = this.entry;
    e.offset = this.bufBase + slot * this.slotBytes;
    e.len = this.u32[d + (layout.DESC_LEN >> 2)]!;
    e.flags = this.u32[d + (layout.DESC_FLAGS >> 2)]!;
    e.token = this.u32[d + (layout.DESC_TOKEN >> 2)]!;
    e.aux = this.u32[d + (layout.DESC_AUX >> 2)]!;
    return e;
  }

  /** Hand the `n` oldest entries back to the producer; wake it if it sleeps. */
  release(n: number): void {
    if (n <= 0) return;
    if (n > ((this.tailSeen - this.head) >>> 0)) throw new RangeError(`ring release(${n}) beyond what is available`);
    this.head = (this.head + n) >>> 0;
    Atomics.store(this.i32, this.headIdx, this.head | 0);
    if (Atomics.load(this.i32, this.sleepIdx) !== 0) {
      Atomics.notify(this.i32, this.headIdx, 1);
      this.notifyCount++;
    }
  }

  /**
   * Wait until entries are available or `timeoutMs` passed; returns available() (0 on timeout
   * or a spurious wakeup). Spins for about SPIN_MICROS, then sets the sleep flag, re-checks
   * tail and sleeps on it; the flag is cleared before returning.
   */
  waitForData(timeoutMs: number): number {
    let n = this.available();
    if (n > 0) return n;
    const deadline = performance.now() + SPIN_MICROS / 1000;
    for (let i = 1; ; i++) {
      n = this.available();
      if (n > 0) return n;
      if (i % SPIN_CHECKS_PER_CLOCK_READ === 0 && performance.now() >= deadline) break;
    }
    Atomics.or(this.i32, this.sleepIdx, SLEEP_CONSUMER);
    n = this.available();
    if (n === 0) Atomics.wait(this.i32, this.tailIdx, this.tailSeen | 0, timeoutMs);
    Atomics.and(this.i32, this.sleepIdx, ~SLEEP_CONSUMER);
    return this.available();
  }
}
