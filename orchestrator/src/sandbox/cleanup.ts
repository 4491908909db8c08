// cleanup.ts — `moat cleanup` (and cleanupLeftovers() for embedders): remove what moat processes
// that died left behind, for every address pool, and nothing that a live one owns.
//
// A lease whose owner is provably dead (ownership.ts) is taken over, as a new moat would take it,
// and what its record names is removed (namespace, /etc/netns entry, directories) before the lease
// goes. A namespace or /etc/netns entry of moat's form with no lease at all is removed under a
// lease taken for it, so a moat creating it at that moment cannot lose it. Names of dead owners
// go too. Namespaces of moat versions before ownership files (moat-N) are removed only when no
// lease of theirs names a live process and nothing runs in them.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { leaseDir, nameDir, leaseFiles, nameFiles, type LeaseRecord } from "./leases.js";
import { NETNS_NAME_RE, removeLeftovers, removeNetns } from "./leftovers.js";
import { acquireOwned, ownerAlive, readOwned, removeOwned, thisOwner } from "./ownership.js";
import { findInPath } from "./host-checks.js";

function namespaces(ip: string): string[] {
  try {
    return execFileSync(ip, ["netns", "list"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split("\n").map((l) => l.split(" ")[0]!).filter(Boolean);
  } catch {
    return [];
  }
}

function dirEntries(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Remove what dead moat processes left; returns a line per thing removed. */
export function cleanupLeftovers(): string[] {
  const ip = findInPath("ip") ?? "ip";
  const done: string[] = [];
  // Leases of dead owners: taken over, their leftovers removed, released.
  for (const f of leaseFiles()) {
    const rec = readOwned(f.path);
    if (!rec || ownerAlive(rec)) continue;
    const mine = { ...thisOwner(), pool: rec.pool, slot: rec.slot };
    const got = acquireOwned(f.path, mine);
    if (!got.acquired) continue;
    if (got.previous) done.push(...removeLeftovers(got.previous as LeaseRecord, ip));
    removeOwned(f.path, mine.token);
    done.push(`lease ${f.path} (process ${rec.pid}, gone)`);
  }
  // Namespaces and /etc/netns entries of moat's form that no lease covers.
  const nsNames = new Set([...namespaces(ip), ...dirEntries("/etc/netns")].filter((n) => NETNS_NAME_RE.test(n)));
  for (const name of nsNames) {
    const [, tag, slot] = NETNS_NAME_RE.exec(name)!;
    const path = join(leaseDir(), `${tag}-${slot}`);
    if (existsSync(path)) continue; // a live owner's (or one we could not take)
    const mine = { ...thisOwner(), slot: Number(slot) };
    const got = acquireOwned(path, mine);
    if (!got.acquired) continue;
    try {
      if (removeNetns(name, ip)) done.push(`namespace ${name} (no lease)`);
    } finally {
      removeOwned(path, mine.token);
    }
  }
  // Sandbox names of dead owners; temporary files of processes that died creating one.
  for (const path of nameFiles()) {
    const rec = readOwned(path);
    if (rec && !ownerAlive(rec)) {
      removeOwned(path, rec.token);
      done.push(`name ${rec.name as string} (process ${rec.pid}, gone)`);
    }
  }
  for (const dir of [leaseDir(), nameDir()]) {
    for (const f of dirEntries(dir).filter((n) => n.endsWith(".tmp") || n.endsWith(".takeover"))) {
      const rec = readOwned(join(dir, f));
      if (rec && !ownerAlive(rec)) removeOwned(join(dir, f), rec.token);
    }
  }
  done.push(...cleanupLegacy(ip));
  return done;
}

/** moat-N namespaces and pid-only lease files of earlier moat versions. */
function cleanupLegacy(ip: string): string[] {
  const done: string[] = [];
  const livePid = (pid: number) => {
    try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === "EPERM"; }
  };
  const legacyLeases = dirEntries(leaseDir()).flatMap((f) => {
    const m = /^([0-9a-z_]+_\d+)-(\d+)$/i.exec(f);
    if (!m || /^[0-9a-f]{8}$/.test(m[1]!)) return [];
    let pid = NaN;
    try { pid = Number(readFileSync(join(leaseDir(), f), "utf8")); } catch { /* gone */ }
    return [{ path: join(leaseDir(), f), slot: Number(m[2]), pid }];
  });
  for (const name of namespaces(ip).filter((n) => /^moat-\d+$/.test(n))) {
    const slot = Number(name.slice(5));
    if (legacyLeases.some((l) => l.slot === slot && (!(l.pid > 0) || livePid(l.pid)))) continue;
    let pids = "";
    try { pids = execFileSync(ip, ["netns", "pids", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim(); } catch { /* gone */ }
    if (pids) continue;
    if (removeNetns(name, ip)) done.push(`namespace ${name} (an earlier moat's, unused)`);
  }
  for (const l of legacyLeases) {
    if (l.pid > 0 && !livePid(l.pid)) {
      try { unlinkSync(l.path); done.push(`lease ${l.path} (process ${l.pid}, gone)`); } catch { /* gone */ }
    }
  }
  return done;
}
