// table.ts — the flow table: 5-tuple -> flow record (the engine's NAT).
//
// Theory of operation
// Records live in a fixed slab of FLOW_CAPACITY entries of FLOW_RECORD_BYTES; a flow's slab
// index is its identity everywhere (the token native-vmm files its host socket under, the
// inbound ring's token). Free indexes wait in a FIFO queue (FLOW_FREE_BASE, free-running head
// and tail in the state block): a freed index is reused only after every other free one, so an
// event still in flight for a removed flow cannot land on a newcomer that took its index.
// The index is an open-addressing table of FLOW_INDEX_SLOTS u32 (index + 1; 0 = empty) with
// linear probing; removal shifts the following cluster back (Knuth's algorithm R), so there are
// no tombstones and probe lengths never degrade with churn. With the load factor at most 0.5
// the expected probe length of a hit is about 1.5.
//
// A key is 40 bytes, written by the caller at KEY_SCRATCH and stored at the head of a record:
//   0 u8 protocol (6/17/1/58)  1 u8 family (4/6)  2 u16 zero  4 u16 guest port  6 u16 remote port
//   8 guest address (16 bytes; IPv4 as ::ffff:a.b.c.d)  24 remote address (16 bytes)
// Ports are stored in host order; addresses in network order. Nothing here allocates.

import {
  FLOW_CAPACITY, FLOW_INDEX_SLOTS, FLOW_RECORD_BYTES, FLOW_INDEX_BASE, FLOW_FREE_BASE,
  FLOW_SLAB_BASE, ST_FLOW_FREE_HEAD, ST_FLOW_FREE_TAIL, ST_FLOWS_LIVE, KEY_SCRATCH, PIN_MATCHED,
  SECRET_CARRY_BASE, SECRET_CARRY_BYTES,
} from "../layout";
import { pinHold, pinRelease, pinName } from "../policy/pinset";
import { copy16 } from "../wire/bytes";

// record fields after the key
export const F_HASH = 40; // u32
export const F_STATE = 44; // u32, protocol specific (0 = free)
export const F_LAST_MS = 48; // f64 time of last activity
export const F_PKTS_OUT = 56; // u64 guest -> world
export const F_PKTS_IN = 64; // u64 world -> guest
export const F_BYTES_OUT = 72; // u64
export const F_BYTES_IN = 80; // u64
export const F_DIAL_ADDR = 88; // 16 bytes: where the host socket connects (usually the remote)
export const F_DIAL_PORT = 104; // u32
export const F_PIN = 108; // u32: pin handle + 0 (pinset.ts) the flow was admitted through, 0 = none
// Forwarding, decided once when the flow is created and never recomputed per packet:
export const F_ORIGIN = 112; // u8: who opened it: ORIGIN_GUEST, or ORIGIN_HOST (a peer on a published port)
export const F_ROUTE = 113; // u8: where its host side goes (ROUTE_*)
export const F_LISTENER = 114; // u16: ORIGIN_HOST: the published port's listener id
export const F_ADMIT_NAME = 116; // u32: name id of the domain rule that admitted the flow (0: none); layout.ts ORIG_ADMIT_NAME
export const ORIGIN_GUEST: u8 = 0;
export const ORIGIN_HOST: u8 = 1;
export const ROUTE_REMOTE: u8 = 0; // a host socket to the remote the guest addressed (F_DIAL_* = the remote)
export const ROUTE_HOST_LOOPBACK: u8 = 1; // the gateway's address: the host's loopback (Group Host)
export const ROUTE_DNS_FORWARDER: u8 = 2; // DNS to the gateway, to the forwarder (F_DIAL_*)
export const ROUTE_SERVICE: u8 = 3; // an orchestrator service, told the original destination (OP_ORIG)
export const ROUTE_PEER: u8 = 4; // ORIGIN_HOST: the accepted peer (F_DIAL_* = the peer's address and port)
export const F_PROTO_STATE = 128; // protocol-specific state (TCP)

export const KEY_BYTES = 40;

/** A flow the guest opened: its host side goes where flow/outbound.ts decided (`route`, `dial`/`dialPort`). */
export function flowToRemote(rec: usize, route: u8, dial: usize, dialPort: u32): void {
  store<u8>(rec, ORIGIN_GUEST, F_ORIGIN);
  store<u8>(rec, route, F_ROUTE);
  copy16(rec + F_DIAL_ADDR, dial);
  store<u32>(rec, dialPort, F_DIAL_PORT);
}

/** A flow a host peer opened on published port `listener`: where it came from is where it goes. */
export function flowFromPeer(rec: usize, listener: u32, peer: usize, peerPort: u32): void {
  store<u8>(rec, ORIGIN_HOST, F_ORIGIN);
  store<u8>(rec, ROUTE_PEER, F_ROUTE);
  store<u16>(rec, <u16>listener, F_LISTENER);
  copy16(rec + F_DIAL_ADDR, peer);
  store<u32>(rec, peerPort, F_DIAL_PORT);
}

@inline export function flowRecord(idx: u32): usize {
  return FLOW_SLAB_BASE + <usize>idx * FLOW_RECORD_BYTES;
}

/** The index of the flow whose record is at `rec` (flowRecord's inverse). */
@inline export function flowIndexOf(rec: usize): u32 {
  return <u32>((rec - FLOW_SLAB_BASE) / FLOW_RECORD_BYTES);
}

/** Empty the flow table; `fresh`: the memory is all zero already (nothing to clear). */
export function flowTableInit(fresh: bool): void {
  if (!fresh) memory.fill(FLOW_INDEX_BASE, 0, FLOW_INDEX_SLOTS * 4);
  for (let i: u32 = 0; i < <u32>FLOW_CAPACITY; i++) store<u32>(FLOW_FREE_BASE + (<usize>i << 2), i);
  store<u32>(ST_FLOW_FREE_HEAD, 0);
  store<u32>(ST_FLOW_FREE_TAIL, FLOW_CAPACITY);
  store<u32>(ST_FLOWS_LIVE, 0);
  if (!fresh) memory.fill(FLOW_SLAB_BASE, 0, <usize>FLOW_CAPACITY * FLOW_RECORD_BYTES);
}

/** Hash of the key at KEY_SCRATCH (never 0). */
@inline export function keyHash(): u32 {
  let h: u64 = 0x9e3779b97f4a7c15;
  h = (h ^ load<u64>(KEY_SCRATCH)) * 0xff51afd7ed558ccd;
  h = (h ^ load<u64>(KEY_SCRATCH, 8) ^ (h >> 29)) * 0xc4ceb9fe1a85ec53;
  h = (h ^ load<u64>(KEY_SCRATCH, 16) ^ (h >> 31)) * 0xff51afd7ed558ccd;
  h = (h ^ load<u64>(KEY_SCRATCH, 24) ^ (h >> 29)) * 0xc4ceb9fe1a85ec53;
  h = (h ^ load<u64>(KEY_SCRATCH, 32) ^ (h >> 31)) * 0xff51afd7ed558ccd;
  h ^= h >> 33;
  const r = <u32>h ^ <u32>(h >> 32);
  return r == 0 ? 1 : r;
}

@inline function keyEquals(rec: usize): bool {
  const a = v128.xor(v128.load(rec), v128.load(KEY_SCRATCH));
  const b = v128.xor(v128.load(rec, 16), v128.load(KEY_SCRATCH, 16));
  const c = load<u64>(rec, 32) ^ load<u64>(KEY_SCRATCH, 32);
  return !v128.any_true(v128.or(a, b)) && c == 0;
}

/** Find the flow whose key is at KEY_SCRATCH. Returns its index or -1. */
export function flowLookup(hash: u32): i32 {
  const mask: u32 = FLOW_INDEX_SLOTS - 1;
  let slot = hash & mask;
  while (true) {
    const v = load<u32>(FLOW_INDEX_BASE + (<usize>slot << 2));
    if (v == 0) return -1;
    const rec = flowRecord(v - 1);
    if (load<u32>(rec, F_HASH) == hash && keyEquals(rec)) return <i32>(v - 1);
    slot = (slot + 1) & mask;
  }
}

/** True when no flow can be inserted (checked before a new flow is judged, so a full table is
 * counted as such and not as an allowed flow). */
@inline export function flowTableFull(): bool {
  return load<u32>(ST_FLOW_FREE_HEAD) == load<u32>(ST_FLOW_FREE_TAIL);
}

/**
 * Insert the key at KEY_SCRATCH (the caller checked it is absent). Returns the new flow's index
 * with its record zeroed except key and hash, or -1 when the slab is full.
 */
export function flowInsert(hash: u32): i32 {
  const head = load<u32>(ST_FLOW_FREE_HEAD);
  if (head == load<u32>(ST_FLOW_FREE_TAIL)) return -1;
  const idx = load<u32>(FLOW_FREE_BASE + (<usize>(head & (<u32>FLOW_CAPACITY - 1)) << 2));
  store<u32>(ST_FLOW_FREE_HEAD, head + 1);
  store<u32>(ST_FLOWS_LIVE, load<u32>(ST_FLOWS_LIVE) + 1);
  const rec = flowRecord(idx);
  memory.fill(rec, 0, FLOW_RECORD_BYTES);
  memory.copy(rec, KEY_SCRATCH, KEY_BYTES);
  store<u32>(SECRET_CARRY_BASE + <usize>idx * SECRET_CARRY_BYTES, 0); // policy/placeholder-scan.ts: no history
  store<u32>(rec, hash, F_HASH);
  // A flow admitted by a domain rule keeps its pin alive (DESIGN §6: "or in use by a live flow"),
  // and remembers the rule's name (the TLS proxy holds the SNI to it).
  const pin = pinHold();
  store<u32>(rec, pin, F_PIN);
  store<u32>(rec, pinName(pin), F_ADMIT_NAME);
  store<u32>(PIN_MATCHED, 0);
  const mask: u32 = FLOW_INDEX_SLOTS - 1;
  let slot = hash & mask;
  while (load<u32>(FLOW_INDEX_BASE + (<usize>slot << 2)) != 0) slot = (slot + 1) & mask;
  store<u32>(FLOW_INDEX_BASE + (<usize>slot << 2), idx + 1);
  return <i32>idx;
}

/** Remove flow `idx` from the index and return it to the free stack. */
export function flowRemove(idx: u32): void {
  const rec = flowRecord(idx);
  const mask: u32 = FLOW_INDEX_SLOTS - 1;
  let slot = load<u32>(rec, F_HASH) & mask;
  while (load<u32>(FLOW_INDEX_BASE + (<usize>slot << 2)) != idx + 1) {
    slot = (slot + 1) & mask; // present by invariant: every live flow is indexed
  }
  // Backward-shift deletion: pull later members of the cluster into the hole when their home
  // slot is not cyclically within (hole, current].
  let hole = slot;
  let cur = (slot + 1) & mask;
  let v = load<u32>(FLOW_INDEX_BASE + (<usize>cur << 2));
  while (v != 0) {
    const home = load<u32>(flowRecord(v - 1), F_HASH) & mask;
    const inRange = hole <= cur ? home > hole && home <= cur : home > hole || home <= cur;
    if (!inRange) {
      store<u32>(FLOW_INDEX_BASE + (<usize>hole << 2), v);
      hole = cur;
    }
    cur = (cur + 1) & mask;
    v = load<u32>(FLOW_INDEX_BASE + (<usize>cur << 2));
  }
  store<u32>(FLOW_INDEX_BASE + (<usize>hole << 2), 0);
  store<u32>(rec, 0, F_STATE);
  pinRelease(load<u32>(rec, F_PIN));
  store<u32>(rec, 0, F_PIN);
  const tail = load<u32>(ST_FLOW_FREE_TAIL);
  store<u32>(FLOW_FREE_BASE + (<usize>(tail & (<u32>FLOW_CAPACITY - 1)) << 2), idx);
  store<u32>(ST_FLOW_FREE_TAIL, tail + 1);
  store<u32>(ST_FLOWS_LIVE, load<u32>(ST_FLOWS_LIVE) - 1);
}
