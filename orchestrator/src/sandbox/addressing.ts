// addressing.ts — a sandbox's addresses and MACs (DESIGN §4).
//
// The IPv4 pool (default 172.30.0.0/16) is carved into /30s: slot N's gateway is the first usable
// address, the guest the second. IPv6: slot N gets the /64 <ula48>:N::/64, gateway ::1, guest ::2,
// and the gateway's link-local address is fe80::1. Slots are leased between concurrent moat
// processes with ownership files named by the pool and the slot under /run/moat/leases (a
// rootless moat's under the user's runtime directory: rootless.ts); stale ones, whose owner is
// provably dead, are taken over (ownership.ts). MACs are derived from the sandbox name, so they
// are stable.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import ipaddr from "ipaddr.js";
import { ConfigError, MoatError } from "../errors.js";
import { NETNS_NAME_RE, removeLeftovers } from "./leftovers.js";
import { register } from "./guard.js";
import { acquireOwned, removeOwned, rewriteOwned, thisOwner, type OwnedRecord } from "./ownership.js";
import { runtimeDir } from "./rootless.js";

export interface SandboxAddresses {
  slot: number;
  gatewayIp4: string;
  guestIp4: string;
  prefixLen4: 30;
  gatewayIp6: string;
  guestIp6: string;
  prefix6: string;
  gatewayLl6: string;
  gatewayMac: string;
  guestMac: string;
}

export const DEFAULT_POOL4 = "172.30.0.0/16";
export const DEFAULT_ULA48 = "fd6d:6f61:7400::"; // "moat" in the ULA's global ID

/** Where slot leases live: /run/moat/leases, or a rootless moat's runtime directory's. */
export function leaseDir(): string {
  return join(runtimeDir(), "leases");
}

export function parsePool4(pool: string): { base: number; slots: number } {
  let parsed: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    parsed = ipaddr.parseCIDR(pool);
  } catch {
    throw new ConfigError(`address pool "${pool}" is not a CIDR`, "give an IPv4 network such as 172.30.0.0/16");
  }
  const [addr, len] = parsed;
  if (addr.kind() !== "ipv4" || len > 30) {
    throw new ConfigError(`address pool "${pool}" must be an IPv4 network of /30 or larger`, "for example 172.30.0.0/16");
  }
  const b = (addr as ipaddr.IPv4).toByteArray();
  const base = (((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0) & (len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0);
  return { base: base >>> 0, slots: 2 ** (30 - len) };
}

function v4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

function macFrom(name: string, role: number): string {
  const h = createHash("sha256").update(name).digest();
  // locally administered, unicast; byte 1 tells gateway (0x6d) from guest (0x67)
  return [0x02, role, h[0]!, h[1]!, h[2]!, h[3]!].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

export function addressesFor(slot: number, name: string, pool4 = DEFAULT_POOL4, ula48 = DEFAULT_ULA48): SandboxAddresses {
  const { base } = parsePool4(pool4);
  const net = (base + slot * 4) >>> 0;
  const ula = ipaddr.IPv6.parse(ula48).toByteArray();
  ula[6] = (slot >> 8) & 255;
  ula[7] = slot & 255;
  const prefix = ipaddr.fromByteArray(ula.slice(0, 8).concat(new Array(8).fill(0))).toString();
  const host = (n: number) => ipaddr.fromByteArray(ula.slice(0, 8).concat([0, 0, 0, 0, 0, 0, 0, n])).toString();
  return {
    slot,
    gatewayIp4: v4(net + 1),
    guestIp4: v4(net + 2),
    prefixLen4: 30,
    gatewayIp6: host(1),
    guestIp6: host(2),
    prefix6: prefix,
    gatewayLl6: "fe80::1",
    gatewayMac: macFrom(name, 0x6d),
    guestMac: macFrom(name, 0x67),
  };
}

/** A short tag naming the pool: its network and length, hashed (8 hex digits). */
export function poolTag(pool4 = DEFAULT_POOL4): string {
  const { base, slots } = parsePool4(pool4);
  return createHash("sha256").update(`${v4(base)}/${32 - Math.log2(slots * 4)}`).digest("hex").slice(0, 8);
}

/** The network namespace of slot `slot` of a pool: moat-<pool tag>-<slot>. */
export function netnsName(pool4: string, slot: number): string {
  return `moat-${poolTag(pool4)}-${slot}`;
}

export { NETNS_NAME_RE };

/** What a slot's lease file records (besides its owner): enough for another process to remove what a dead owner left. */
export interface LeaseRecord extends OwnedRecord {
  pool: string;
  slot: number;
  /** The sandbox's name. */
  name?: string;
  /** The network namespace created for the slot (namespace sandboxes). */
  netns?: string;
  /** Directories the owner created (a VM's run directory). */
  dirs?: string[];
}

export interface SlotLease {
  readonly slot: number;
  readonly pool: string;
  readonly path: string;
  /** What tells this lease's file from any other (its owner's token). */
  readonly token: string;
  /** The record of a dead owner whose lease was taken over (its leftovers were removed). */
  readonly previous: LeaseRecord | undefined;
  /** Add to what the lease records (a namespace, directories), before creating them. */
  record(fields: Partial<Pick<LeaseRecord, "name" | "netns" | "dirs">>): void;
  /** Give the slot up (idempotent). */
  release(): void;
}

export function leasePath(pool4: string, slot: number): string {
  return join(leaseDir(), `${poolTag(pool4)}-${slot}`);
}

/**
 * Lease a free slot of the pool for this process: the first slot whose lease file is absent, or
 * whose owner is provably dead (ownership.ts). The lease file, /run/moat/leases/<pool tag>-<slot>,
 * names the owner (pid, start time, PID namespace), the pool and what the owner creates for it.
 */
export function leaseSlot(pool4 = DEFAULT_POOL4, fields: { name?: string } = {}): SlotLease {
  const { slots } = parsePool4(pool4);
  mkdirSync(leaseDir(), { recursive: true });
  for (let slot = 0; slot < slots; slot++) {
    const path = leasePath(pool4, slot);
    let record: LeaseRecord = { ...thisOwner(), pool: pool4, slot, ...fields };
    const got = acquireOwned(path, record);
    if (!got.acquired) continue;
    // What a dead owner of the slot left (its namespace, its directories) is ours to remove now.
    if (got.previous) removeLeftovers(got.previous as LeaseRecord);
    const unregister = register({ kind: "owned", path, token: record.token }); // removed if this process ends holding it
    let released = false;
    return {
      slot,
      pool: pool4,
      path,
      token: record.token,
      previous: got.previous as LeaseRecord | undefined,
      record(more) {
        record = { ...record, ...more };
        rewriteOwned(path, record);
      },
      release() {
        if (released) return;
        released = true;
        removeOwned(path, record.token);
        unregister();
      },
    };
  }
  throw new MoatError("ERR_ADDRESS_POOL", `no free sandbox slot in address pool ${pool4} (${slots} slots)`,
    "stop other sandboxes or choose a larger pool with --ipv4-pool");
}

/**
 * A slot of the pool, and the caller's sandbox name (if given) reserved host-wide with it; the
 * name is given back if no slot is free. Its `release` gives up both.
 */
export function leaseNamed(pool4: string, name: string | undefined): SlotLease & { releaseAll(): void } {
  const releaseName = name !== undefined ? claimName(name) : () => {};
  let lease: SlotLease;
  try {
    lease = leaseSlot(pool4, { name });
  } catch (e) {
    releaseName();
    throw e;
  }
  return Object.assign(lease, { releaseAll: () => { lease.release(); releaseName(); } });
}

/** Every lease file of this format: its path, pool tag and slot. */
export function leaseFiles(): { path: string; tag: string; slot: number }[] {
  let names: string[] = [];
  try {
    names = readdirSync(leaseDir());
  } catch {
    return [];
  }
  return names.flatMap((f) => {
    const m = /^([0-9a-f]{8})-(\d+)$/.exec(f);
    return m ? [{ path: join(leaseDir(), f), tag: m[1]!, slot: Number(m[2]) }] : [];
  });
}


/** Where sandbox names are reserved: /run/moat/names, or a rootless moat's runtime directory's. */
export function nameDir(): string {
  return join(runtimeDir(), "names");
}
/** A sandbox name (the option `name`, `moat run --name`): as docker's container names. */
export const SANDBOX_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * Reserve a sandbox name given by the caller among every live moat on this host (an ownership
 * file /run/moat/names/NAME; a dead owner's is taken over). Returns its release.
 */
export function claimName(name: string): () => void {
  if (!SANDBOX_NAME_RE.test(name)) {
    throw new ConfigError(`sandbox name "${name}" is not valid`, "use letters, digits, _ . and - (up to 128 characters), starting with a letter or digit");
  }
  if (NETNS_NAME_RE.test(name)) throw new ConfigError(`sandbox name "${name}" is reserved (moat's own names look like that)`, "choose another name");
  mkdirSync(nameDir(), { recursive: true });
  const path = join(nameDir(), name);
  const record: OwnedRecord = { ...thisOwner(), name };
  const got = acquireOwned(path, record);
  if (!got.acquired) {
    throw new MoatError("ERR_NAME_IN_USE", `the sandbox name "${name}" is in use${got.holder ? ` by process ${got.holder.pid}` : ""}`,
      "choose another name, or stop that sandbox first");
  }
  const unregister = register({ kind: "owned", path, token: record.token });
  return () => {
    removeOwned(path, record.token);
    unregister();
  };
}

/** Every name file: its path. */
export function nameFiles(): string[] {
  try {
    return readdirSync(nameDir()).filter((f) => SANDBOX_NAME_RE.test(f)).map((f) => join(nameDir(), f));
  } catch {
    return [];
  }
}
