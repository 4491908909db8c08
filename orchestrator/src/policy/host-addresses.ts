// host-addresses.ts — the host's own addresses, which belong to Group Host (DESIGN §6): anything
// listening on 0.0.0.0 or [::] on the host answers on all of them, so the uplink's public IPv4
// or global IPv6 is the host as much as the gateway address is.
//
// One watcher per process reads the addresses of the namespace moat dials from (every interface
// but loopback, whose addresses are Group Loopback already) and re-reads them every
// POLL_MS; subscribers (each sandbox's engine memory, its DNS rebinding check) hear of every
// change. An engine gets the table before it serves its first frame. The table in the engine has
// two slots (layout.ts, HOST_ADDR_*): the one not in force is written, then made active.
import { networkInterfaces } from "node:os";
import { layout as L } from "../engine/layout.js";
import { addr16 } from "../engine/engine-config.js";
import { carriedIPv4 } from "./groups.js";

const POLL_MS = 500;

/** The host's non-loopback addresses, sorted, as text (IPv6 without a zone). */
export function readHostAddresses(): string[] {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (!a.internal) out.add(a.address.replace(/%.*$/, ""));
  }
  return [...out].sort();
}

type Listener = (addresses: readonly string[]) => void;
const listeners = new Set<Listener>();
let current: string[] = [];
let timer: NodeJS.Timeout | undefined;

function poll(): void {
  const next = readHostAddresses();
  if (next.join() === current.join()) return;
  current = next;
  for (const l of listeners) l(current);
}

/** Hear the host's addresses now and on every change; returns the unsubscribe function. */
export function watchHostAddresses(listener: Listener): () => void {
  if (listeners.size === 0) {
    current = readHostAddresses();
    timer = setInterval(poll, POLL_MS);
    timer.unref();
  }
  listeners.add(listener);
  listener(current);
  return () => {
    listeners.delete(listener);
    if (listeners.size === 0 && timer) {
      clearInterval(timer);
      timer = undefined;
    }
  };
}

let warnedFull = false;

/**
 * Install `addresses` in an engine's memory: fill the inactive slot, then flip to it. Each is
 * stored in the engine's canonical form (an IPv6 address carrying IPv4 as that IPv4 address).
 */
export function writeHostAddresses(mem: Uint8Array, addresses: readonly string[]): void {
  const active = new Int32Array(mem.buffer, mem.byteOffset + L.HOST_ADDR_ACTIVE, 1);
  const next = (Atomics.load(active, 0) & 1) ^ 1;
  const slot = L.HOST_ADDR_BASE + next * L.HOST_ADDR_SLOT_BYTES;
  if (addresses.length > L.HOST_ADDR_MAX && !warnedFull) {
    warnedFull = true;
    process.emitWarning(`the host has ${addresses.length} addresses; only the first ${L.HOST_ADDR_MAX} are known as Group Host to sandboxes`, "MoatWarning");
  }
  const list = addresses.slice(0, L.HOST_ADDR_MAX);
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  list.forEach((a, i) => {
    const b = addr16(a);
    const v4 = carriedIPv4(Array.from(b));
    mem.set(v4 ? addr16(v4.join(".")) : b, slot + 16 + i * 16);
  });
  dv.setUint32(slot, list.length, true);
  Atomics.store(active, 0, next);
}
