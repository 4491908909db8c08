// tcp-frames.ts — TCP segments as guest frames, and the engine's frames read back as segments
// (for the engine tests that drive flow/tcp.ts segment by segment), and one guest connection
// driven through the harness (Conn).
import assert from "node:assert/strict";
import { testConfig, type EngineHarness, type HostOp } from "./engine-harness.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
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


/** The host operations of `kind` queued since the last look (all of them are taken). */
export const opsOf = (h: EngineHarness, kind: number): HostOp[] => h.takeOps().filter((o) => o.kind === kind);

/**
 * One guest connection through the harness. Sequence numbers: `gseq` is the guest's next byte,
 * `iss` the engine's initial sequence number (learned from the SYN-ACK), `una` what the guest
 * has acknowledged of ours.
 */
export class Conn {
  flow = -1;
  iss = 0;
  gseq: number;
  rcvd = 0; // host bytes delivered to the guest in order (relative to iss + 1)
  epoch = 0; // rewinds native-vmm has executed: tags the host data it peeks
  sackPermitted = false; // offer SACK-permitted in the SYN
  constructor(readonly h: EngineHarness, readonly sport = 40000, readonly dst = REMOTE, readonly dport = 80, readonly guestIss = 1000) {
    this.gseq = guestIss + 1;
  }

  /** Guest SYN (MSS 1460, window scale 7): returns the host operations it caused. */
  syn(): { frames: Uint8Array[]; ops: HostOp[] } {
    const frames = this.h.send(segment(this.dst, { sport: this.sport, dport: this.dport, seq: this.guestIss, flags: SYN, options: [2, 4, ...u16(1460), 1, 3, 3, 7, ...(this.sackPermitted ? [1, 1, 4, 2] : [])] }));
    const o = this.h.takeOps();
    const c = o.find((x) => x.kind === L.OPK_TCP_CONNECT);
    if (c) this.flow = c.flow;
    return { frames, ops: o };
  }

  /** SYN, dial succeeds, SYN-ACK, final ACK (offering `window` << 7): an established connection. */
  open(window = 65535): this {
    const { ops: o } = this.syn();
    assert.ok(o.some((x) => x.kind === L.OPK_TCP_CONNECT), "the SYN is dialled");
    const [synack] = this.h.deliverEvent(this.flow, L.INK_TCP_CONNECTED).map(parse);
    assert.ok(synack);
    this.iss = synack.seq;
    this.send({ flags: ACK, window });
    this.h.takeOps();
    return this;
  }

  /** A segment from the guest on this connection (seq/ack default to where the guest is). */
  send(s: Partial<Seg> = {}): Seg[] {
    const frame = segment(this.dst, { sport: this.sport, dport: this.dport, seq: this.gseq, ack: (this.iss + 1 + this.rcvd) >>> 0, ...s });
    return this.h.send(frame).map(parse);
  }

  /** The guest sends bytes; returns what the engine asks the host to write. */
  write(bytes: number[] | Uint8Array): HostOp[] {
    this.send({ flags: ACK | PSH, data: Uint8Array.from(bytes) });
    this.gseq += bytes.length;
    return opsOf(this.h, L.OPK_TCP_SEND);
  }

  /** Host bytes peeked from the socket at host sequence `seq` (absolute), in peek epoch `epoch`. */
  hostData(seq: number, bytes: number[], epoch = this.epoch): Seg[] {
    return this.h.deliverData(this.flow, L.INK_TCP_DATA | (epoch << L.INK_EPOCH_SHIFT), Uint8Array.from(bytes), seq >>> 0).map(parse);
  }
}
