// ownership.ts — files that say which process owns a resource, and when that owner is provably
// dead (so the resource may be taken over or removed by another moat, or by `moat cleanup`).
//
// An owner is a process: its pid, its start time (field 22 of /proc/PID/stat, in clock ticks since
// boot: a pid reused by another process has another start time) and its PID namespace (a pid means
// nothing in another one). An owner is dead only when this can be proven: its /proc entry is gone,
// holds another start time, or is a zombie, and it lives in our PID namespace. Anything else —
// another PID namespace, a file that cannot be read or parsed — counts as alive: never removed.
//
// An ownership file is created whole (written to a private temporary file, then hard-linked to its
// name: link() fails if the name exists), so a reader never sees it half written. A stale one
// (dead owner) is taken over under a `.takeover` lock that is itself an ownership file, and only
// if it still holds what was read as stale, so two processes cannot both take it, nor either take
// a file a third one took meanwhile.
import { randomBytes } from "node:crypto";
import { linkSync, readFileSync, readlinkSync, renameSync, unlinkSync, writeFileSync } from "node:fs";

export interface Owner {
  pid: number;
  /** The process's start time (clock ticks since boot), from /proc/PID/stat. */
  start: number;
  /** The PID namespace, as /proc/PID/ns/pid reads ("pid:[4026531836]"). */
  pidns: string;
  /** Random: tells this owner's file from any other, whatever the pid. */
  token: string;
}

/** What an ownership file holds: the owner, and whatever the resource needs (pool, slot, names, paths). */
export type OwnedRecord = Owner & { [key: string]: unknown };

/** The start time of process `pid`, and whether it is a zombie; undefined when there is no such process. */
export function processStat(pid: number): { start: number; zombie: boolean } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // "PID (COMM) STATE ..." — COMM may hold spaces and parentheses: fields follow the last ")".
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { start: Number(fields[19]), zombie: fields[0] === "Z" || fields[0] === "X" };
}

function pidNamespace(pid: number | "self"): string {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return "";
  }
}

let self: Owner | undefined;

/** This process as an owner (its token is drawn once per process). */
export function thisOwner(): Owner {
  if (!self || self.pid !== process.pid) {
    self = { pid: process.pid, start: processStat(process.pid)?.start ?? 0, pidns: pidNamespace("self"), token: randomBytes(12).toString("hex") };
  }
  return self;
}

/** False only when the owner is provably dead (see the file's comment). */
export function ownerAlive(o: Partial<Owner> | undefined): boolean {
  if (!o || !Number.isInteger(o.pid) || (o.pid as number) <= 0 || !Number.isInteger(o.start)) return true; // unreadable: keep
  if (o.pidns && o.pidns !== thisOwner().pidns) return true; // another PID namespace: its pid means nothing here
  const st = processStat(o.pid as number);
  return st !== undefined && !st.zombie && st.start === o.start;
}

/** The record in an ownership file; undefined when absent; null when unreadable or not one. */
export function readOwned(path: string): OwnedRecord | undefined | null {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT" ? undefined : null;
  }
  try {
    const r = JSON.parse(text) as OwnedRecord;
    return r && typeof r === "object" && typeof r.token === "string" ? r : null;
  } catch {
    return null;
  }
}

function tempFor(path: string, record: OwnedRecord): string {
  const tmp = `${path}.${record.token}.tmp`;
  writeFileSync(tmp, JSON.stringify(record) + "\n", { mode: 0o644 });
  return tmp;
}

function unlinkQuiet(path: string): void {
  try { unlinkSync(path); } catch { /* gone */ }
}

export type Acquired = { acquired: true; previous: OwnedRecord | undefined } | { acquired: false; holder: OwnedRecord | null };

/**
 * Take the ownership file at `path` for `record` (whose owner fields are this process's): created
 * if absent, taken over if its owner is provably dead (`previous` is then the dead owner's record,
 * whose leftovers the caller removes). Otherwise `holder` is who has it (null: unreadable).
 */
export function acquireOwned(path: string, record: OwnedRecord): Acquired {
  const seen = readOwned(path);
  if (seen === null || (seen !== undefined && ownerAlive(seen))) return { acquired: false, holder: seen }; // in use: no temporary file
  const tmp = tempFor(path, record);
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        linkSync(tmp, path);
        return { acquired: true, previous: undefined };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      const held = readOwned(path);
      if (held === undefined) continue; // released meanwhile: try again
      if (held === null || ownerAlive(held)) return { acquired: false, holder: held };
      // Stale: take it over under the lock, if it still holds what we read.
      const lock = `${path}.takeover`;
      try {
        linkSync(tmp, lock);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        const locker = readOwned(lock);
        if (locker !== undefined && locker !== null && !ownerAlive(locker)) removeOwned(lock, locker.token);
        return { acquired: false, holder: held }; // someone else is taking it over
      }
      try {
        const now = readOwned(path);
        if (now === undefined) continue; // gone meanwhile: create it afresh
        if (now === null || now.token !== held.token) return { acquired: false, holder: now };
        renameSync(tmp, path); // atomically ours
        return { acquired: true, previous: held };
      } finally {
        unlinkQuiet(lock);
      }
    }
    return { acquired: false, holder: readOwned(path) ?? null };
  } finally {
    unlinkQuiet(tmp);
  }
}

/** Remove the ownership file at `path` if it is still `token`'s. */
export function removeOwned(path: string, token: string): void {
  const r = readOwned(path);
  if (r && r.token === token) unlinkQuiet(path);
}

/** Replace the record of a file this process owns (new fields for the same owner). */
export function rewriteOwned(path: string, record: OwnedRecord): void {
  const r = readOwned(path);
  if (!r || r.token !== record.token) return; // not ours (any more)
  renameSync(tempFor(path, record), path);
}
