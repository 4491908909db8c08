// audit.ts — denial events out of the engine's audit ring, as records and as JSON lines.
//
// The engine (policy/admit.ts) produces one 64-byte record per denied flow; the orchestrator is
// the ring's consumer, woken by a message from the engine worker after a batch that produced
// any. Reading happens straight from the shared memory.
import { appendFileSync } from "node:fs";
import ipaddr from "ipaddr.js";
import { layout as L } from "../engine/layout.js";
import { ConfigError } from "../errors.js";

export interface DenyEvent {
  time: string; // ISO 8601
  sandbox: string;
  direction: "outbound" | "inbound";
  protocol: "tcp" | "udp" | "icmpv4" | "icmpv6" | string;
  source: string; // ip:port
  destination: string; // ip
  port: number;
  rule: string; // "rules[3] deny:egress@group:private" or "default"
  action: "deny";
}

const PROTO_NAME: Record<number, string> = { 6: "tcp", 17: "udp", 1: "icmpv4", 58: "icmpv6" };

function addrText(bytes: Uint8Array): string {
  const a = ipaddr.fromByteArray(Array.from(bytes)) as ipaddr.IPv6;
  return a.isIPv4MappedAddress() ? a.toIPv4Address().toString() : a.toString();
}

/**
 * Drain the audit ring. `ruleText(i)` names rule i of the policy in force; `clock` maps the
 * engine's time (performance.now() of the worker) to wall-clock ms.
 */
export function drainAudit(mem: Uint8Array, sandbox: string, ruleText: (i: number) => string, timeOrigin: number): DenyEvent[] {
  const ctrl = new Int32Array(mem.buffer, mem.byteOffset + L.AUDIT_CTRL, L.RING_CTRL_BYTES / 4);
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  let head = Atomics.load(ctrl, L.RING_CTRL_HEAD / 4) >>> 0;
  const tail = Atomics.load(ctrl, L.RING_CTRL_TAIL / 4) >>> 0;
  const out: DenyEvent[] = [];
  while (head !== tail) {
    const r = L.AUDIT_BASE + (head & (L.AUDIT_SLOTS - 1)) * L.AUDIT_RECORD_BYTES;
    const rule = dv.getInt32(r + L.AU_RULE, true);
    const src = addrText(mem.subarray(r + L.AU_SRC, r + L.AU_SRC + 16));
    out.push({
      time: new Date(timeOrigin + dv.getFloat64(r + L.AU_TIME_MS, true)).toISOString(),
      sandbox,
      direction: mem[r + L.AU_DIRECTION] ? "inbound" : "outbound",
      protocol: PROTO_NAME[mem[r + L.AU_PROTO]!] ?? String(mem[r + L.AU_PROTO]),
      source: `${src.includes(":") ? `[${src}]` : src}:${dv.getUint16(r + L.AU_SPORT, true)}`,
      destination: addrText(mem.subarray(r + L.AU_DST, r + L.AU_DST + 16)),
      port: dv.getUint16(r + L.AU_DPORT, true),
      rule: rule < 0 ? "default" : `rules[${rule}] ${ruleText(rule)}`,
      action: "deny",
    });
    head = (head + 1) >>> 0;
  }
  Atomics.store(ctrl, L.RING_CTRL_HEAD / 4, head | 0);
  return out;
}

/** Appends events to a file as JSON lines. */
export class AuditLog {
  constructor(readonly path: string) {
    try {
      appendFileSync(path, ""); // fail now, at start, if the file cannot be written
    } catch (e) {
      throw new ConfigError(`cannot write the audit log ${path}: ${(e as Error).message}`, "give a writable file path (its directory must exist)");
    }
  }
  write(events: DenyEvent[]): void {
    this.writeRecords(events);
  }
  /** Any audit record (DNS events have their own shape: kind, name, detail). */
  writeRecords(records: object[]): void {
    if (records.length) appendFileSync(this.path, records.map((e) => JSON.stringify(e)).join("\n") + "\n");
  }
}
