// tcp-frames.ts — TCP segments as guest frames, and the engine's frames read back as segments
// (for the engine tests that drive flow/tcp.ts segment by segment).
import assert from "node:assert/strict";
import { testConfig } from "./engine-harness.js";
import { eth, ipv4, withL4Checksum } from "./frames.js";
import { wire } from "../../orchestrator/src/engine/layout.js";

export const GUEST = testConfig.guestIp4;
export const REMOTE = "198.51.100.7";
export const { TCP_FIN: FIN, TCP_SYN: SYN, TCP_RST: RST, TCP_PSH: PSH, TCP_ACK: ACK } = wire;
export const u16 = (v: number) => [(v >> 8) & 255, v & 255];
export const u32 = (v: number) => [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];

export interface Seg { sport: number; dport: number; seq: number; ack: number; flags: number; window: number; options: number[]; data: Uint8Array }

/** A guest -> `dst` TCP segment as a frame (valid checksums). */
export function segment(dst: string, s: Partial<Seg> & { dport: number }): Uint8Array {
  const options = s.options ?? [];
  const doff = 20 + options.length;
  const data = s.data ?? new Uint8Array(0);
  const tcp = withL4Checksum([...u16(s.sport ?? 40000), ...u16(s.dport), ...u32(s.seq ?? 0), ...u32(s.ack ?? 0),
    (doff / 4) << 4, s.flags ?? ACK, ...u16(s.window ?? 65535), 0, 0, 0, 0, ...options, ...data], 16, GUEST, dst, 6);
  return eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(GUEST, dst, 6, tcp));
}

/** A frame the engine sent the guest, read back as a TCP segment. */
export function parse(frame: Uint8Array): Seg & { mss?: number; wscale?: number } {
  assert.equal((frame[12]! << 8) | frame[13]!, 0x0800, "an IPv4 frame");
  const ip = frame.subarray(14);
  assert.equal(ip[9], 6, "a TCP segment");
  const t = ip.subarray((ip[0]! & 15) * 4, (ip[2]! << 8) | ip[3]!);
  const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
  const doff = (t[12]! >> 4) * 4;
  const out: Seg & { mss?: number; wscale?: number } = {
    sport: dv.getUint16(0), dport: dv.getUint16(2), seq: dv.getUint32(4), ack: dv.getUint32(8), flags: t[13]!,
    window: dv.getUint16(14), options: Array.from(t.subarray(20, doff)), data: t.slice(doff),
  };
  for (let o = 20; o < doff;) {
    const kind = t[o]!;
    if (kind === 0) break;
    if (kind === 1) { o++; continue; }
    if (kind === 2) out.mss = dv.getUint16(o + 2);
    if (kind === 3) out.wscale = t[o + 2];
    o += t[o + 1]!;
  }
  return out;
}

