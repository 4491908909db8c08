// leftovers.ts — removing what a dead owner left (its lease taken over by a new moat, or found by
// `moat cleanup`): the processes still in its namespace, the namespace, its /etc/netns entry, the
// directories it recorded. Only names moat gives are touched.
import { execFileSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { basename } from "node:path";

/** Matches the namespaces (and /etc/netns entries) moat creates: moat-<pool tag>-<slot>; groups: pool tag, slot. */
export const NETNS_NAME_RE = /^moat-([0-9a-f]{8})-(\d+)$/;

/** Kill what runs in namespace `name`, delete it and its /etc/netns directory. Returns whether anything was there. */
export function removeNetns(name: string, ip = "ip"): boolean {
  const present = existsSync(`/run/netns/${name}`) || existsSync(`/etc/netns/${name}`);
  if (existsSync(`/run/netns/${name}`)) {
    try {
      const pids = execFileSync(ip, ["netns", "pids", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split("\n").map(Number).filter((p) => p > 0);
      for (const pid of pids) {
        try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
      }
    } catch {
      // gone meanwhile
    }
    try {
      execFileSync(ip, ["netns", "del", name], { stdio: "ignore" });
    } catch {
      // gone meanwhile
    }
  }
  rmSync(`/etc/netns/${name}`, { recursive: true, force: true });
  return present;
}

/**
 * Remove what the (dead) owner of `rec` (a lease record, leases.ts LeaseRecord) recorded: its
 * namespace, its directories. Returns a line for each thing removed.
 */
export function removeLeftovers(rec: { netns?: string; dirs?: string[] }, ip = "ip"): string[] {
  const done: string[] = [];
  if (typeof rec.netns === "string" && NETNS_NAME_RE.test(rec.netns) && removeNetns(rec.netns, ip)) done.push(`namespace ${rec.netns}`);
  for (const dir of Array.isArray(rec.dirs) ? rec.dirs : []) {
    if (typeof dir !== "string" || !dir.startsWith("/") || !basename(dir).startsWith("moat-") || !existsSync(dir)) continue;
    rmSync(dir, { recursive: true, force: true });
    done.push(`directory ${dir}`);
  }
  return done;
}
