// frames.ts — building test frames byte by byte, with a deliberately plain reference checksum
// (RFC 1071, big-endian words) that the engine's SIMD checksum is tested against.
import ipaddr from "ipaddr.js";
import { wire } from "../../orchestrator/src/engine/layout.js";

export function refChecksum(bytes: Uint8Array, initial = 0): number {
  let sum = initial;
  for (let i = 0; i + 1 < bytes.length; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if (bytes.length & 1) sum += bytes[bytes.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 65536);
  return ~sum & 0xffff;
}

export function mac(text: string): number[] {
  return text.split(":").map((h) => parseInt(h, 16));
}
export function ip(text: string): number[] {
  return ipaddr.parse(text).toByteArray();
}
const u16 = (v: number) => [(v >> 8) & 255, v & 255];
const u32 = (v: number) => [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];

export function eth(dst: string, src: string, type: number, payload: number[] | Uint8Array): Uint8Array {
  return Uint8Array.from([...mac(dst), ...mac(src), ...u16(type), ...payload]);
}

export function ipv4(src: string, dst: string, proto: number, payload: number[] | Uint8Array, opts: { ttl?: number; flagsFrag?: number; options?: number[]; badChecksum?: boolean } = {}): number[] {
  const optBytes = opts.options ?? [];
  const hlen = 20 + optBytes.length;
  const h = [0x40 | (hlen / 4), 0, ...u16(hlen + payload.length), 0x12, 0x34, ...u16(opts.flagsFrag ?? 0x4000), opts.ttl ?? 64, proto, 0, 0, ...ip(src), ...ip(dst), ...optBytes];
  const c = refChecksum(Uint8Array.from(h)) ^ (opts.badChecksum ? 0x0101 : 0);
  h[10] = c >> 8;
  h[11] = c & 255;
  return [...h, ...payload];
}

export function ipv6(src: string, dst: string, nextHeader: number, payload: number[] | Uint8Array, hopLimit = 64): number[] {
  return [0x60, 0, 0, 0, ...u16(payload.length), nextHeader, hopLimit, ...ip(src), ...ip(dst), ...payload];
}

function pseudo(src: string, dst: string, proto: number, len: number): number {
  const s = ip(src), d = ip(dst);
  const bytes = s.length === 4 ? [...s, ...d, 0, proto, ...u16(len)] : [...s, ...d, ...u32(len), 0, 0, 0, proto];
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  return sum;
}

/** An L4 segment with its checksum at `csumOff` filled under the pseudo-header. */
export function withL4Checksum(seg: number[], csumOff: number, src: string, dst: string, proto: number): number[] {
  seg[csumOff] = 0;
  seg[csumOff + 1] = 0;
  let c = refChecksum(Uint8Array.from(seg), pseudo(src, dst, proto, seg.length));
  if (c === 0 && proto === wire.PROTO_UDP) c = 0xffff;
  seg[csumOff] = c >> 8;
  seg[csumOff + 1] = c & 255;
  return seg;
}

export function udp(src: string, dst: string, sport: number, dport: number, data: number[] | Uint8Array): number[] {
  return withL4Checksum([...u16(sport), ...u16(dport), ...u16(8 + data.length), 0, 0, ...data], 6, src, dst, 17);
}

export function icmpEcho(id: number, seq: number, data: number[], type = 8): number[] {
  const m = [type, 0, 0, 0, ...u16(id), ...u16(seq), ...data];
  const c = refChecksum(Uint8Array.from(m));
  m[2] = c >> 8;
  m[3] = c & 255;
  return m;
}

export function icmp6(src: string, dst: string, body: number[]): number[] {
  return withL4Checksum([...body], 2, src, dst, 58);
}

export function tcpSyn(src: string, dst: string, sport: number, dport: number, seq: number): number[] {
  return withL4Checksum([...u16(sport), ...u16(dport), ...u32(seq), 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0], 16, src, dst, 6);
}

export function arpRequest(senderMac: string, senderIp: string, targetIp: string): number[] {
  return [0, 1, 8, 0, 6, 4, 0, 1, ...mac(senderMac), ...ip(senderIp), 0, 0, 0, 0, 0, 0, ...ip(targetIp)];
}
