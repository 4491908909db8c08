// host-addresses.ts — the host's own addresses, which belong to Group Host (DESIGN §6): anything
// listening on 0.0.0.0 or [::] on the host answers on all of them, so the uplink's public IPv4
// or global IPv6 is the host as much as the gateway address is.
//
// One watcher per process reads the addresses of the namespace moat dials from (every interface
// but loopback, whose addresses are Group Loopback already) and re-reads them every
// POLL_MS (less often if reading is slow); subscribers (each sandbox's engine memory, its DNS rebinding check) hear of every
// change. An engine gets the table before it serves its first frame (EngineHost.setHostAddresses,
// engine/tables.ts).
import { networkInterfaces } from "node:os";
import { readFileSync } from "node:fs";
import ipaddr from "ipaddr.js";

const POLL_MS = 500;

/**
 * The host's own addresses as "IP" or "IP/PREFIX" (a prefix the kernel treats as local as a
 * whole, e.g. AnyIP), sorted. Sources, since any one of them misses some: the interfaces' own
 * addresses (including those on lo), the local routing table of IPv4 (/proc/net/fib_trie, which
 * also holds addresses on interfaces that are down), and every IPv6 address (/proc/net/if_inet6).
 * Loopback ranges (127/8, ::1) are left out: they are Group Loopback already.
 */
export function readHostAddresses(): string[] {
  const out = new Set<string>();
  const add = (ip: string, prefix?: number): void => {
    let a: ipaddr.IPv4 | ipaddr.IPv6;
    try {
      a = ipaddr.parse(ip.replace(/%.*$/, ""));
    } catch {
      return;
    }
    if (a.range() === "loopback") return;
    const full = a.kind() === "ipv4" ? 32 : 128;
    out.add(prefix === undefined || prefix >= full ? a.toString() : `${a.toString()}/${prefix}`);
  };
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) add(a.address);
  try {
    // "|-- 203.0.113.1" then, under it, "/32 host LOCAL": a local address (a shorter prefix: AnyIP).
    let last: string | undefined;
    for (const line of readFileSync("/proc/net/fib_trie", "utf8").split("\n")) {
      const leaf = /\|-- (\d+\.\d+\.\d+\.\d+)/.exec(line);
      if (leaf) { last = leaf[1]; continue; }
      const local = /\/(\d+) host LOCAL/.exec(line);
      if (local && last && Number(local[1]) >= 8) add(last, Number(local[1]));
    }
  } catch {
    // no /proc/net/fib_trie: the interfaces' addresses must do
  }
  try {
    for (const line of readFileSync("/proc/net/if_inet6", "utf8").split("\n")) {
      const hex = line.split(/\s+/)[0];
      if (hex && hex.length === 32) add(hex.match(/.{4}/g)!.join(":"));
    }
  } catch {
    // no IPv6
  }
  return [...out].sort();
}

type Listener = (addresses: readonly string[]) => void;
const listeners = new Set<Listener>();
let current: string[] = [];
let timer: NodeJS.Timeout | undefined;

/**
 * Re-read the addresses, and schedule the next read: every POLL_MS, or less often when reading
 * is slow (a host with a huge routing table has a huge /proc/net/fib_trie), so that watching
 * never takes more than about 2% of a core.
 */
function poll(): void {
  const t0 = performance.now();
  const next = readHostAddresses();
  const took = performance.now() - t0;
  if (next.join() !== current.join()) {
    current = next;
    for (const l of listeners) l(current);
  }
  if (listeners.size > 0) schedule(Math.max(POLL_MS, took * 50));
}

function schedule(ms: number): void {
  timer = setTimeout(poll, ms);
  timer.unref();
}

/** Hear the host's addresses now and on every change; returns the unsubscribe function. */
export function watchHostAddresses(listener: Listener): () => void {
  if (listeners.size === 0) {
    current = readHostAddresses();
    schedule(POLL_MS);
  }
  listeners.add(listener);
  listener(current);
  return () => {
    listeners.delete(listener);
    if (listeners.size === 0 && timer) {
      clearTimeout(timer);
      timer = undefined;
    }
  };
}
