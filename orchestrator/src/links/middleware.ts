// middleware.ts — decorators on a link (native-vmm/src/link-middleware.h): a pcap capture of the
// frames at the link, and a fault injector for tests. Both are put on in the engine's worker right
// after the link is attached, in native code, so no frame crosses into JavaScript.
//
// Order: the capture sits on the link itself, the fault injector outside it (link -> pcap ->
// faults -> data path): the capture shows the wire as the guest sees it — every frame the guest
// sent, including those the injector then drops, and only the frames that reached the guest.
import { accessSync, constants, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { NativeDatapath } from "../native.js";
import { ConfigError, MoatError } from "../errors.js";

/** `--pcap`: the frames at the guest's link, in a pcap file (nanosecond timestamps, Ethernet). */
export interface PcapOptions {
  path: string;
  /** Stop capturing (with a note on stderr) before the file would exceed this (default 256 MiB; 0: no bound). */
  maxBytes?: number;
}

/**
 * Faults injected at the link, for tests (MOAT_FAULTS, or the `faults` option): each a
 * probability per frame, per direction, drawn from a generator seeded with `seed`.
 */
export interface FaultOptions {
  drop?: number;
  /** Delivered twice. */
  dup?: number;
  /** Held until the next frame has passed (or 10 ms). */
  reorder?: number;
  /** Held for delayMs. */
  delay?: number;
  /** One byte past the Ethernet header changed: the receiver's checksum must catch it. */
  corrupt?: number;
  delayMs?: number;
  /** From this long after the link started, every frame is dropped: the guest vanishes. */
  blackoutMs?: number;
  seed?: number;
  /** Which frames: "both" (default), "to-engine" (from the guest), "to-guest". */
  direction?: "both" | "to-engine" | "to-guest";
}

export const DEFAULT_PCAP_MAX_BYTES = 256 * 2 ** 20;

/** What the worker puts around its link (structured-clonable). */
export interface LinkMiddleware {
  pcap?: { path: string; maxBytes: number };
  faults?: FaultOptions;
}

export function validatePcap(o: string | PcapOptions): { path: string; maxBytes: number } {
  const p = typeof o === "string" ? { path: o } : o;
  if (typeof p.path !== "string" || p.path === "") throw new ConfigError("pcap: no file given", "e.g. --pcap /tmp/run.pcap");
  const maxBytes = p.maxBytes ?? DEFAULT_PCAP_MAX_BYTES;
  if (!Number.isSafeInteger(maxBytes) || (maxBytes !== 0 && maxBytes < 24)) {
    throw new ConfigError(`pcap size bound ${p.maxBytes} is not usable`, "use 0 (no bound) or at least 24 bytes (the file header), e.g. --pcap-max-bytes 1048576");
  }
  // Checked here, before anything runs (the worker opens it, and its errors lose their hint).
  const path = resolve(p.path);
  try {
    accessSync(dirname(path), constants.W_OK | constants.X_OK);
  } catch (e) {
    throw new ConfigError(`pcap: cannot create ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "its directory does not exist" : "its directory is not writable"}`, "check that the directory exists and is writable");
  }
  let isDir = false;
  try { isDir = statSync(path).isDirectory(); } catch { /* not there yet: created */ }
  if (isDir) throw new ConfigError(`pcap: ${path} is a directory`, "give a file name, e.g. --pcap /tmp/run.pcap");
  return { path, maxBytes };
}

const RATES = ["drop", "dup", "reorder", "delay", "corrupt"] as const;

/** MOAT_FAULTS: "drop=0.01,reorder=0.01,dup=0.005,corrupt=0,delay=0.01,delay-ms=20,blackout-ms=0,seed=7,direction=both". */
export function parseFaults(text: string, where = "MOAT_FAULTS"): FaultOptions {
  const o: Record<string, unknown> = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? "" : part.slice(eq + 1);
    const name = key === "delay-ms" ? "delayMs" : key === "blackout-ms" ? "blackoutMs" : key;
    if (name === "direction") o.direction = value;
    else if ([...RATES, "delayMs", "blackoutMs", "seed"].includes(name) && value !== "" && Number.isFinite(Number(value))) o[name] = Number(value);
    else throw new ConfigError(`${where}: "${part}" is not a fault setting`, `use KEY=VALUE pairs separated by commas: ${RATES.join(", ")} (0..1), delay-ms, blackout-ms, seed, direction (both|to-engine|to-guest); e.g. drop=0.01,reorder=0.01,seed=7`);
  }
  return validateFaults(o as FaultOptions, where);
}

export function validateFaults(o: FaultOptions, where = "faults"): FaultOptions {
  for (const k of RATES) {
    const v = o[k];
    if (v !== undefined && !(typeof v === "number" && v >= 0 && v <= 1)) throw new ConfigError(`${where}: ${k} ${String(v)} is not a probability`, "use a number from 0 to 1, e.g. 0.01 for 1%");
  }
  if (o.delayMs !== undefined && !(Number.isInteger(o.delayMs) && o.delayMs >= 0 && o.delayMs <= 60000)) throw new ConfigError(`${where}: delay-ms ${o.delayMs} is out of range`, "use 0 to 60000");
  if (o.blackoutMs !== undefined && !(Number.isInteger(o.blackoutMs) && o.blackoutMs >= 0 && o.blackoutMs <= 2 ** 31)) throw new ConfigError(`${where}: blackout-ms ${o.blackoutMs} is out of range`, "use a whole number of milliseconds, e.g. blackout-ms=3000");
  if (o.seed !== undefined && !(Number.isSafeInteger(o.seed) && o.seed >= 0)) throw new ConfigError(`${where}: seed ${o.seed} is not a non-negative integer`, "e.g. seed=7");
  if (o.direction !== undefined && !["both", "to-engine", "to-guest"].includes(o.direction)) throw new ConfigError(`${where}: direction "${o.direction}" is unknown`, "use both, to-engine or to-guest");
  return { ...o };
}

/** In the worker, after the link was attached. */
export function applyMiddleware(datapath: NativeDatapath, m: LinkMiddleware | undefined): void {
  if (m?.pcap) {
    try {
      datapath.capturePcap(m.pcap.path, m.pcap.maxBytes);
    } catch (cause) {
      throw new MoatError("ERR_BAD_CONFIG", `pcap: ${(cause as Error).message}`, "check that the directory exists and is writable", { cause });
    }
  }
  if (m?.faults) {
    const f = m.faults;
    const dir = f.direction ?? "both";
    datapath.injectFaults({ ...f, toEngine: dir !== "to-guest", toGuest: dir !== "to-engine" });
  }
}
