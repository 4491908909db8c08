// pinset.ts — which addresses this sandbox's DNS answers bound to which rule names (DESIGN §6).
//
// Theory of operation
// The DNS interceptor (orchestrator/src/dns/) tells the engine, for every A/AAAA record it
// delivers to the guest, the ids of the Domain/DomainSuffix rule names the queried name matches;
// the worker stores each (address, name id) here with the record's TTL (floor 1 s). A domain
// rule matches a new flow only when its destination is pinned under the rule's name id and the
// pin is unexpired, or still carries a live flow admitted through it: a hard-coded IP, or an IP
// the name never resolved to, matches nothing.
//
// An open-addressing table of PIN_SLOTS entries with linear probing over the (address, name)
// hash. Entries are never emptied: an expired, unused entry is overwritten in place by the next
// insert that probes it, so probe chains stay intact. Inserts look at most PIN_PROBE entries; a
// pin that finds no room is lost (PINS_LOST) and its domain rules fail closed.
import {
  PIN_BASE, PIN_SLOTS, PIN_BYTES, PN_ADDR, PN_NAME, PN_LIVE, PN_EXPIRY, ST_NOW_MS, PIN_MATCHED,
} from "../layout";
import { PINS_ADDED, PINS_LOST } from "../counters";
import { eq16 } from "../wire/bytes";
import { count } from "../emit";

const PIN_PROBE: u32 = 64;

@inline function pinHash(addr: usize, nameId: u32): u32 {
  let h: u64 = (load<u64>(addr) ^ (<u64>nameId * 0x9e3779b97f4a7c15)) * 0xff51afd7ed558ccd;
  h = (h ^ load<u64>(addr, 8) ^ (h >> 29)) * 0xc4ceb9fe1a85ec53;
  return <u32>(h ^ (h >> 32));
}
@inline function pinAt(i: u32): usize {
  return PIN_BASE + <usize>(i & (<u32>PIN_SLOTS - 1)) * PIN_BYTES;
}
@inline function pinValid(p: usize, now: f64): bool {
  return now < load<f64>(p, PN_EXPIRY) || load<u32>(p, PN_LIVE) > 0;
}

/** Pin `addr` (16 bytes, canonical) under `nameId` for `ttlMs` from now (extends, never shortens). */
export function pinAdd(addr: usize, nameId: u32, ttlMs: f64): void {
  const now = load<f64>(ST_NOW_MS);
  const expiry = now + ttlMs;
  const h = pinHash(addr, nameId);
  let reuse: usize = 0;
  for (let i: u32 = 0; i < PIN_PROBE; i++) {
    const p = pinAt(h + i);
    const name = load<u32>(p, PN_NAME);
    if (name == nameId && eq16(p + PN_ADDR, addr)) {
      if (load<f64>(p, PN_EXPIRY) < expiry) store<f64>(p, expiry, PN_EXPIRY);
      count(PINS_ADDED);
      return;
    }
    if (name == 0) { if (!reuse) reuse = p; break; }
    if (!reuse && !pinValid(p, now)) reuse = p;
  }
  if (!reuse) { count(PINS_LOST); return; }
  v128.store(reuse + PN_ADDR, v128.load(addr));
  store<u32>(reuse, nameId, PN_NAME);
  store<u32>(reuse, 0, PN_LIVE);
  store<f64>(reuse, expiry, PN_EXPIRY);
  count(PINS_ADDED);
}

/**
 * True when `addr` is pinned under `nameId` and the pin still holds. Leaves the pin's index + 1
 * at PIN_MATCHED, so the flow it admits can hold the pin (pinHold).
 */
export function pinMatches(addr: usize, nameId: u32): bool {
  const now = load<f64>(ST_NOW_MS);
  const h = pinHash(addr, nameId);
  for (let i: u32 = 0; i < PIN_PROBE; i++) {
    const p = pinAt(h + i);
    const name = load<u32>(p, PN_NAME);
    if (name == 0) return false;
    if (name == nameId && eq16(p + PN_ADDR, addr)) {
      if (!pinValid(p, now)) return false;
      store<u32>(PIN_MATCHED, ((h + i) & (<u32>PIN_SLOTS - 1)) + 1);
      return true;
    }
  }
  return false;
}

/** A flow was admitted through the pin at PIN_MATCHED: keep the pin while the flow lives. Returns the handle to store in the flow. */
export function pinHold(): u32 {
  const m = load<u32>(PIN_MATCHED);
  if (m) {
    const p = pinAt(m - 1);
    store<u32>(p, load<u32>(p, PN_LIVE) + 1, PN_LIVE);
  }
  return m;
}

/** The flow holding pin handle `m` (from pinHold) has gone. */
export function pinRelease(m: u32): void {
  if (!m) return;
  const p = pinAt(m - 1);
  const live = load<u32>(p, PN_LIVE);
  if (live) store<u32>(p, live - 1, PN_LIVE);
}

/** The rule name id of pin handle `m` (from pinHold); 0 for none. */
export function pinName(m: u32): u32 {
  return m ? load<u32>(pinAt(m - 1), PN_NAME) : 0;
}
