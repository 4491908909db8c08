// tcp-reassembly.ts — guest segments that arrive ahead of a gap, held until the gap fills, and the
// SACK blocks (RFC 2018) that tell the guest what is held, so one loss costs one retransmission.
//
// Guest payload is normally written to the host socket straight from its RX slot, which is
// released at the end of the batch; a segment beyond rcv_wr cannot wait there. It is copied into a
// slot of a pool shared by every flow (layout.ts, OOO_*), kept on its flow's list sorted by
// sequence number. When the segment at rcv_wr arrives, flow/tcp.ts writes it and then every held
// segment the stream now reaches, straight from the pool slots.
//
// Invariants:
//   - a flow holds at most OOO_PER_FLOW_MAX slots, the pool OOO_SLOTS: beyond that a segment is
//     dropped (DROP_TCP_OUT_OF_ORDER), never buffered elsewhere;
//   - a slot released in a batch is not reused until the next engineRun (ST_RUN): the OPK_TCP_SEND
//     that points into it is executed by native-vmm after this batch;
//   - held data is never acknowledged (only SACKed), so dropping it (a flow reset, a short write)
//     costs a retransmission, never a byte.

import { OOO_SLOTS, OOO_PER_FLOW_MAX, OOO_META_BASE, OOO_META_BYTES, OOO_BUF_BASE, SLOT_BYTES, ST_RUN } from "../layout";
import { wr32 } from "../wire/bytes";

// Per-flow fields in the TCP flow record (after flow/tcp.ts's own).
export const T_OOO_HEAD = 232; // u32: first held slot + 1 (0 = none), lowest sequence number first
export const T_OOO_COUNT = 236; // u32: slots held
export const T_OOO_LAST = 240; // u32: sequence number of the segment held most recently (its SACK block goes first)

const M_OWNER = 0;
const M_SEQ = 4;
const M_LEN = 8;
const M_FIN = 12;
const M_NEXT = 16;
const M_FREED = 20;

@inline function meta(s: u32): usize { return OOO_META_BASE + <usize>s * OOO_META_BYTES; }
@inline function seqLt(a: u32, b: u32): bool { return <i32>(a - b) < 0; }

@inline export function oooData(s: u32): usize { return OOO_BUF_BASE + <usize>s * SLOT_BYTES; }
@inline export function oooSeq(s: u32): u32 { return load<u32>(meta(s), M_SEQ); }
@inline export function oooLen(s: u32): u32 { return load<u32>(meta(s), M_LEN); }
@inline export function oooFin(s: u32): bool { return load<u32>(meta(s), M_FIN) != 0; }
/** The held slot with the lowest sequence number, + 1 (0: nothing held). */
@inline export function oooFirst(rec: usize): u32 { return load<u32>(rec, T_OOO_HEAD); }

let cursor: u32 = 0; // where the next free-slot search starts (a hint: per-instance state is fine)

/**
 * Hold `len` bytes at `data` (sequence `seq`, FIN after them if `fin`) for flow `idx`. False when
 * there is no room (the caller drops the segment). A segment already held whole is not held twice.
 */
export function oooHold(idx: u32, rec: usize, seq: u32, data: usize, len: u32, fin: bool): bool {
  if (len > <u32>SLOT_BYTES) return false;
  // Where it goes in the sorted list, and whether it is a duplicate.
  let prev: u32 = 0;
  let cur = load<u32>(rec, T_OOO_HEAD);
  while (cur) {
    const m = meta(cur - 1);
    const s = load<u32>(m, M_SEQ);
    if (s == seq && load<u32>(m, M_LEN) >= len) { store<u32>(rec, seq, T_OOO_LAST); return true; }
    if (seqLt(seq, s)) break;
    prev = cur;
    cur = load<u32>(m, M_NEXT);
  }
  if (load<u32>(rec, T_OOO_COUNT) >= <u32>OOO_PER_FLOW_MAX) return false;
  const run = load<u32>(ST_RUN);
  let slot: i32 = -1;
  for (let i: u32 = 0; i < <u32>OOO_SLOTS; i++) {
    const s = (cursor + i) % <u32>OOO_SLOTS;
    const m = meta(s);
    if (load<u32>(m, M_OWNER) == 0 && load<u32>(m, M_FREED) != run) { slot = <i32>s; break; }
  }
  if (slot < 0) return false;
  const s = <u32>slot;
  cursor = (s + 1) % <u32>OOO_SLOTS;
  const m = meta(s);
  store<u32>(m, idx + 1, M_OWNER);
  store<u32>(m, seq, M_SEQ);
  store<u32>(m, len, M_LEN);
  store<u32>(m, fin ? 1 : 0, M_FIN);
  store<u32>(m, cur, M_NEXT);
  memory.copy(oooData(s), data, len);
  if (prev) store<u32>(meta(prev - 1), s + 1, M_NEXT);
  else store<u32>(rec, s + 1, T_OOO_HEAD);
  store<u32>(rec, load<u32>(rec, T_OOO_COUNT) + 1, T_OOO_COUNT);
  store<u32>(rec, seq, T_OOO_LAST);
  return true;
}

/** Release the first held slot (its bytes stay readable until the next engineRun). */
export function oooPop(rec: usize): void {
  const head = load<u32>(rec, T_OOO_HEAD);
  if (!head) return;
  const m = meta(head - 1);
  store<u32>(rec, load<u32>(m, M_NEXT), T_OOO_HEAD);
  store<u32>(rec, load<u32>(rec, T_OOO_COUNT) - 1, T_OOO_COUNT);
  store<u32>(m, 0, M_OWNER);
  store<u32>(m, load<u32>(ST_RUN), M_FREED);
}

/** Release everything the flow holds (it is going away, or its stream was cut). */
export function oooClear(rec: usize): void {
  while (load<u32>(rec, T_OOO_HEAD)) oooPop(rec);
}

/**
 * Write the SACK blocks for what the flow holds at `out` (each: left edge, right edge, big-endian),
 * at most `max`, merging adjacent segments; the block holding the most recent arrival first
 * (RFC 2018 §4). Returns the number of blocks.
 */
export function oooSackBlocks(rec: usize, out: usize, max: u32): u32 {
  const last = load<u32>(rec, T_OOO_LAST);
  let n: u32 = 0;
  let firstDone = false;
  // Two passes: the block with the latest arrival, then the others in sequence order.
  for (let pass = 0; pass < 2; pass++) {
    let cur = load<u32>(rec, T_OOO_HEAD);
    while (cur && n < max) {
      const left = oooSeq(cur - 1);
      let right = left + oooLen(cur - 1);
      let hasLast = left == last;
      cur = load<u32>(meta(cur - 1), M_NEXT);
      while (cur && !seqLt(right, oooSeq(cur - 1))) {  // adjacent or overlapping: one block
        const s = cur - 1;
        if (oooSeq(s) == last) hasLast = true;
        const r = oooSeq(s) + oooLen(s);
        if (seqLt(right, r)) right = r;
        cur = load<u32>(meta(s), M_NEXT);
      }
      if (pass == 0 ? hasLast : !(hasLast && firstDone)) {
        wr32(out + <usize>n * 8, left);
        wr32(out + <usize>n * 8 + 4, right);
        n++;
        if (pass == 0) { firstDone = true; break; }
      }
    }
  }
  return n;
}
