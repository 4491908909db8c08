// engine-harness.ts — the real engine module on its own memory, driven frame by frame from a
// test: frames go through the RX ring exactly as a link would put them there; replies are read
// back from the TX ring and host operations from the ops list.
import { createEngineMemory, instantiateEngine, type EngineExports } from "../../orchestrator/src/engine/engine-module.js";
import { writeEngineConfig, readCounters, readFlowStats, type EngineConfig } from "../../orchestrator/src/engine/engine-config.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { installPolicy, NameTable } from "../../orchestrator/src/engine/policy-table.js";
import { NetworkPolicy, type DenyResponse } from "../../orchestrator/src/model/policy.js";
import { parseRedirectPreamble, type RedirectOrigin } from "../../orchestrator/src/engine/redirect.js";
import { redirectPreamble } from "./preamble.js";

export const testConfig: EngineConfig = {
  gatewayMac: "02:6d:00:00:00:01",
  guestMac: "02:67:00:00:00:02",
  gatewayIp4: "172.30.0.1",
  guestIp4: "172.30.0.2",
  prefixLen4: 30,
  gatewayIp6: "fd6d:6f61:7400::1",
  gatewayLl6: "fe80::1",
  guestIp6: "fd6d:6f61:7400::2",
  prefix6: "fd6d:6f61:7400::",
  mtu: L.MTU_DEFAULT,
  leaseSecs: 3600,
  udpIdleMs: 1000,
  maxUdpFlows: 8,
  maxTcpFlows: 8,
  maxConnections: 0,
  dnsIntercept: false,
  dnsForward: { ip: "192.0.2.53", port: 5353 },
};

/**
 * A host operation as native-vmm would see it: `data` is the LEN bytes at DATA when DATA is an
 * address; `arg` and `len` are the raw fields (DATA is a sequence number for TCP credit,
 * acknowledgement and rewind). `origin`: for a dial redirected to an orchestrator service
 * (OP_ORIG set), the redirect preamble native-vmm would write, as the service reads it; else null.
 */
export interface HostOp { kind: number; flow: number; data: Uint8Array; arg: number; len: number; family: number; port: number; addr: Uint8Array; origin: RedirectOrigin | null }

export class EngineHarness {
  readonly memory = createEngineMemory();
  readonly mem = new Uint8Array(this.memory.buffer);
  readonly dv = new DataView(this.memory.buffer);
  readonly engine: EngineExports;
  now = 1000;

  readonly names = new NameTable();

  /** An engine with `config` over testConfig, and allow-all unless a policy is given. */
  constructor(config: Partial<EngineConfig> = {}, policy: NetworkPolicy = NetworkPolicy.allowAll(), denyResponse: DenyResponse = "drop") {
    this.engine = instantiateEngine(this.memory);
    writeEngineConfig(this.mem, { ...testConfig, ...config });
    installPolicy(this.mem, policy, denyResponse, this.names, true);
    this.engine.engineInit();
  }

  /** Replace the policy, as a running sandbox would. */
  setPolicy(policy: NetworkPolicy, denyResponse: DenyResponse = "drop"): void {
    installPolicy(this.mem, policy, denyResponse, this.names);
  }

  private u32(off: number): number { return this.dv.getUint32(off, true); }
  private setU32(off: number, v: number): void { this.dv.setUint32(off, v >>> 0, true); }

  /** Put frames on the RX ring, run the engine once, and return the frames it sent the guest. */
  send(...frames: Uint8Array[]): Uint8Array[] {
    return this.sendFlagged(0, ...frames);
  }

  /** As send(), each frame's descriptor saying RX_F_* `flags` (a TAP link's RX_F_CSUM_LEFT). */
  sendFlagged(flags: number, ...frames: Uint8Array[]): Uint8Array[] {
    let tail = this.u32(L.RX_CTRL + L.RING_CTRL_TAIL);
    for (const f of frames) {
      const slot = tail & (L.RX_SLOTS - 1);
      this.mem.set(f, L.RX_BUF_BASE + slot * L.SLOT_BYTES);
      this.setU32(L.RX_DESC_BASE + slot * L.DESC_BYTES + L.DESC_LEN, f.length);
      this.setU32(L.RX_DESC_BASE + slot * L.DESC_BYTES + L.DESC_FLAGS, flags);
      tail++;
    }
    this.setU32(L.RX_CTRL + L.RING_CTRL_TAIL, tail);
    return this.run();
  }

  /** A datagram arriving on flow `flow`'s host socket. */
  deliverUdp(flow: number, data: Uint8Array): Uint8Array[] {
    return this.deliverData(flow, L.INK_UDP_DATA, data, 0);
  }

  /**
   * An entry of the inbound ring (host data: UDP datagrams, TCP bytes with their sequence number,
   * EOF), its bytes placed `at` bytes into the slot (a published UDP port's datagrams follow a header).
   */
  deliverData(flow: number, kind: number, data: Uint8Array, flags: number, at = 0): Uint8Array[] {
    // (TCP bytes go where native-vmm peeks them: after room for the frame's headers)
    if ((kind & L.INK_KIND_MASK) === L.INK_TCP_DATA) at = L.IN_TCP_DATA_AT;
    const tail = this.u32(L.IN_CTRL + L.RING_CTRL_TAIL);
    const slot = tail & (L.IN_SLOTS - 1);
    this.mem.set(data, L.IN_BUF_BASE + slot * L.SLOT_BYTES + at);
    this.writeDesc(L.IN_DESC_BASE + slot * L.DESC_BYTES, flow, kind, data.length, flags);
    this.setU32(L.IN_CTRL + L.RING_CTRL_TAIL, tail + 1);
    return this.run();
  }

  /** An entry of the event ring (no data): connected, sent, reset, ... as native-vmm reports them. */
  deliverEvent(flow: number, kind: number, len = 0, flags = 0): Uint8Array[] {
    const tail = this.u32(L.EV_CTRL + L.RING_CTRL_TAIL);
    this.writeDesc(L.EV_DESC_BASE + (tail & (L.EV_SLOTS - 1)) * L.DESC_BYTES, flow, kind, len, flags);
    this.setU32(L.EV_CTRL + L.RING_CTRL_TAIL, tail + 1);
    return this.run();
  }

  private writeDesc(d: number, flow: number, kind: number, len: number, flags: number): void {
    this.setU32(d + L.DESC_LEN, len);
    this.setU32(d + L.DESC_FLAGS, flags);
    this.setU32(d + L.DESC_TOKEN, flow);
    this.setU32(d + L.DESC_AUX, kind);
  }

  run(): Uint8Array[] {
    this.engine.engineRun(this.now);
    return this.takeTx();
  }

  /** Host operations queued since the last call (and clears them, as native-vmm's flush would). */
  takeOps(): HostOp[] {
    const ops = this.readOps();
    this.engine.engineDiscardOps();
    this.engine.engineReleaseRx();
    return ops;
  }

  private readOps(): HostOp[] {
    const n = this.u32(L.ST_OPS_COUNT);
    const out: HostOp[] = [];
    for (let i = 0; i < n; i++) {
      const op = L.OPS_BASE + i * L.OP_BYTES;
      const data = this.u32(op + L.OP_DATA);
      const addr = this.u32(op + L.OP_ADDR);
      out.push({
        kind: this.u32(op + L.OP_KIND),
        flow: this.u32(op + L.OP_FLOW),
        data: this.mem.slice(data, data + this.u32(op + L.OP_LEN)),
        arg: data,
        len: this.u32(op + L.OP_LEN),
        family: this.u32(op + L.OP_FAMILY),
        port: this.u32(op + L.OP_PORT),
        addr: addr ? this.mem.slice(addr, addr + 16) : new Uint8Array(16),
        origin: this.origin(this.u32(op + L.OP_ORIG)),
      });
    }
    return out;
  }

  /** The preamble for OP_ORIG `orig` (the flow's key and record), built as native-vmm builds it (host-sockets.cc) and parsed as a service parses it. */
  private origin(orig: number): RedirectOrigin | null {
    if (!orig) return null;
    const family = this.mem[orig + 1] === 4 ? 4 : 6;
    const addr = Array.from(this.mem.subarray(orig + 24 + (family === 4 ? 12 : 0), orig + 40));
    const port = this.dv.getUint16(orig + 6, true);
    const token = Buffer.from(this.mem.slice(L.CFG_REDIRECT_TOKEN, L.CFG_REDIRECT_TOKEN + 16));
    const origin = parseRedirectPreamble(redirectPreamble(token, family, addr, port, this.u32(orig + L.ORIG_ADMIT_NAME)), token);
    if (!origin) throw new Error(`OP_ORIG ${orig} does not make a preamble`);
    return origin;
  }

  /**
   * Whether the engine may leave TCP/UDP checksums to the link (ST_TX_CSUM_LEFT_OK), as native-vmm
   * says when a TAP with a virtio-net header attaches.
   */
  leaveChecksums(on: boolean): void {
    this.setU32(L.ST_TX_CSUM_LEFT_OK, on ? 1 : 0);
  }

  /** The TX descriptors of the frames the last run() returned, in the same order (TX_F_*, and where a left checksum is to be summed). */
  txDescs: { flags: number; csumStart: number; csumOff: number }[] = [];

  private takeTx(): Uint8Array[] {
    const tail = this.u32(L.TX_CTRL + L.RING_CTRL_TAIL);
    let head = this.u32(L.TX_CTRL + L.RING_CTRL_HEAD);
    const out: Uint8Array[] = [];
    this.txDescs = [];
    while (head !== tail) {
      const slot = head & (L.TX_SLOTS - 1);
      const d = L.TX_DESC_BASE + slot * L.DESC_BYTES;
      const len = this.u32(d + L.DESC_LEN);
      const flags = this.u32(d + L.DESC_FLAGS);
      // (a frame built in the inbound slot whose bytes it carries: DESC_AUX says where)
      const off = flags & L.TX_F_EXTERNAL ? this.u32(d + L.DESC_AUX) : L.TX_BUF_BASE + slot * L.SLOT_BYTES;
      out.push(this.mem.slice(off, off + len));
      const csum = this.u32(d + L.DESC_TOKEN);
      this.txDescs.push({ flags, csumStart: csum & 0xffff, csumOff: csum >>> 16 });
      head++;
    }
    // Every frame taken: the inbound slots consumed go back, as native-vmm gives them back.
    this.setU32(L.IN_CTRL + L.RING_CTRL_HEAD, this.u32(L.IN_CTRL + L.RING_CTRL_PENDING_HEAD));
    this.setU32(L.TX_CTRL + L.RING_CTRL_HEAD, head);
    return out;
  }

  tick(budget = L.FLOW_CAPACITY): number {
    return this.engine.engineTick(this.now, budget);
  }

  /** A TCP flow's state, read from the engine (flow/tcp.ts, tcpInspect). */
  tcp(flow: number): { state: "none" | "dialing" | "syn-rcvd" | "established" | "linger" | "syn-sent"; rcvNxt: number; rcvWr: number; sndUna: number; sndNxt: number; held: number; flags: number; ackDueMs: number } {
    const at = (w: number) => this.engine.tcpInspect(flow, w);
    const states = ["none", "none", "dialing", "syn-rcvd", "established", "linger", "syn-sent"] as const;
    return { state: states[at(0)] ?? "none", rcvNxt: at(1), rcvWr: at(2), sndUna: at(3), sndNxt: at(4), held: at(5), flags: at(6), ackDueMs: at(7) };
  }

  /** The delayed-ACK timer firing at the harness's clock: the frames sent. */
  flushAcks(): Uint8Array[] {
    this.engine.engineFlushAcks(this.now);
    return this.takeTx();
  }

  /** When the next delayed ACK is due (0: none), as the worker reads it. */
  ackDue(): number { return this.dv.getFloat64(L.ST_ACK_DUE, true); }

  /** Rate limit `which` (0 egress, 1 ingress, 2 conn, 3 dns): `perSecond` tokens, a bucket of `burst` (0: none); the frames it released. */
  setLimit(which: number, perSecond: number, burst: number): Uint8Array[] {
    this.engine.engineSetLimit(which, perSecond / 1000, burst, this.now);
    return this.takeTx();
  }

  /** The rate limits' timer firing at the harness's clock: the frames sent. */
  limitWake(): Uint8Array[] {
    this.engine.engineLimitWake(this.now);
    return this.takeTx();
  }

  /** When something a rate limit held back may go on (0: nothing waits), as the worker reads it. */
  limitDue(): number { return this.dv.getFloat64(L.ST_LIMIT_DUE, true); }

  counters(): Record<string, number> {
    return readCounters(this.mem, true);
  }

  flows(): { flows: number; udp: number; tcp: number } {
    return readFlowStats(this.mem);
  }
}

/** What changed between two counter snapshots (non-zero differences only). */
export function counterDelta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const d = (after[k] ?? 0) - (before[k] ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}
