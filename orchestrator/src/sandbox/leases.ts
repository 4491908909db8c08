// leases.ts — which address slot (gateway/addressing.ts) a sandbox holds, and its name.
//
// Slots are leased between concurrent moat processes with ownership files named by the pool and
// the slot under /run/moat/leases (a rootless moat's under the user's runtime directory:
// rootless.ts); stale ones, whose owner is provably dead, are taken over (ownership.ts), and what
// they left is removed (leftovers.ts). A name given by the caller is reserved host-wide the same
// way, under /run/moat/names.
import { mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, MoatError } from "../errors.js";
import { NETNS_NAME_RE, removeLeftovers } from "./leftovers.js";
import { register } from "./guard.js";
import { acquireOwned, removeOwned, rewriteOwned, thisOwner, type OwnedRecord } from "./ownership.js";
import { runtimeDir } from "./rootless.js";
import { DEFAULT_POOL4, parsePool4, poolTag } from "../gateway/addressing.js";

/** Where slot leases live: /run/moat/leases, or a rootless moat's runtime directory's. */
export function leaseDir(): string {
  return join(runtimeDir(), "leases");
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
