// flow-table.test.ts — the flow table as seen through UDP flows (engine-wasm/assembly/flow/table.ts,
// flow/datagram.ts): the per-sandbox limit, the slab's capacity, idle expiry from engineTick, and
// lookups that stay correct through heavy insert/remove churn (open addressing with
// backward-shift deletion: a wrong shift would make a live flow unreachable, or resolve a
// datagram to another flow's index).
//
// A flow's identity is its slab index, visible as the `flow` of its host operations: every
// datagram of a flow must produce OPK_UDP_SEND with the index its OPK_UDP_OPEN announced.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness, testConfig, type HostOp, counterDelta } from "../helpers/engine-harness.js";
import { refChecksum, mac, ip } from "../helpers/frames.js";
import { layout } from "../../orchestrator/src/engine/layout.js";
import { prng } from "../helpers/prng.js";

const GW_MAC = mac(testConfig.gatewayMac);
const GUEST_MAC = mac(testConfig.guestMac);
const GUEST4 = ip(testConfig.guestIp4);

/** A UDP flow key as the guest sees it: its source port and the remote address and port. */
interface Key { guestPort: number; remote: number[]; remotePort: number }

/** Guest -> remote UDP datagram for `k` carrying the 4-byte tag `tag` (valid IP and UDP checksums). */
function datagram(k: Key, tag: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + 4);
  f.set(GW_MAC, 0);
  f.set(GUEST_MAC, 6);
  f[12] = 0x08;
  const p = f.subarray(14);
  p.set([0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, ...GUEST4, ...k.remote]);
  const hc = refChecksum(p.subarray(0, 20));
  p[10] = hc >> 8;
  p[11] = hc & 255;
  const u = p.subarray(20);
  u.set([k.guestPort >> 8, k.guestPort & 255, k.remotePort >> 8, k.remotePort & 255, 0, 12, 0, 0,
    (tag >>> 24) & 255, (tag >>> 16) & 255, (tag >>> 8) & 255, tag & 255]);
  const pseudo = [...GUEST4, ...k.remote, 0, 17, 0, 12];
  let sum = 0;
  for (let i = 0; i < pseudo.length; i += 2) sum += (pseudo[i]! << 8) | pseudo[i + 1]!;
  let c = refChecksum(u, sum);
  if (c === 0) c = 0xffff;
  u[6] = c >> 8;
  u[7] = c & 255;
  return f;
}

const tagOf = (op: HostOp) => ((op.data[0]! << 24) | (op.data[1]! << 16) | (op.data[2]! << 8) | op.data[3]!) >>> 0;
const kinds = (ops: HostOp[]) => ops.map((o) => o.kind);
const key = (n: number): Key => ({ guestPort: 40000 + n, remote: ip("198.51.100.7"), remotePort: 9999 });

/** Send one datagram per key (in RX-ring sized batches); return the host operations in order. */
function sendAll(h: EngineHarness, keys: Key[], tags: number[]): HostOp[] {
  const ops: HostOp[] = [];
  for (let i = 0; i < keys.length; i += 200) {
    const frames = keys.slice(i, i + 200).map((k, j) => datagram(k, tags[i + j]!));
    const out = h.send(...frames);
    assert.deepEqual(out, [], "datagrams to the world produce no frames for the guest");
    ops.push(...h.takeOps());
  }
  return ops;
}

/** Run engineTick until a full pass removes nothing; return the flows whose sockets it closed. */
function expireAll(h: EngineHarness): number[] {
  const closed: number[] = [];
  h.takeOps();
  for (;;) {
    const removed = h.tick();
    const ops = h.takeOps();
    for (const op of ops) assert.equal(op.kind, layout.OPK_CLOSE, "expiry only closes sockets");
    assert.equal(ops.length, removed, "one OPK_CLOSE per removed flow");
    closed.push(...ops.map((o) => o.flow));
    if (removed === 0) return closed;
  }
}


/** Open one new flow for `k`; returns its index. */
function openFlow(h: EngineHarness, k: Key, tag = 0): number {
  const ops = sendAll(h, [k], [tag]);
  assert.deepEqual(kinds(ops), [layout.OPK_UDP_OPEN, layout.OPK_UDP_SEND], "a new 5-tuple opens a flow");
  assert.equal(ops[1]!.flow, ops[0]!.flow);
  return ops[0]!.flow;
}

/** The datagram for `k` is sent on flow `flow` without opening another. */
function assertReuses(h: EngineHarness, k: Key, flow: number): void {
  const ops = sendAll(h, [k], [0x5a5a5a5a]);
  assert.deepEqual(kinds(ops), [layout.OPK_UDP_SEND], "no new flow for a known 5-tuple");
  assert.equal(ops[0]!.flow, flow);
}

// ---- limits ---------------------------------------------------------------------------------------

test("UDP flows are opened up to maxUdpFlows (8); the next new flow is dropped as DROP_FLOW_LIMIT", () => {
  const h = new EngineHarness();
  assert.equal(testConfig.maxUdpFlows, 8);
  const flows: number[] = [];
  for (let i = 0; i < 8; i++) {
    flows.push(openFlow(h, key(i)));
    assert.equal(h.flows().udp, i + 1);
  }
  assert.equal(new Set(flows).size, 8, "eight distinct flow indexes");
  const before = h.counters();
  const frame = datagram(key(8), 0);
  assert.deepEqual(h.send(frame), []);
  assert.deepEqual(h.takeOps(), [], "no host operation for the refused flow");
  assert.deepEqual(counterDelta(before, h.counters()), { RX_FRAMES: 1, RX_BYTES: frame.length, DROP_FLOW_LIMIT: 1 });
  assert.deepEqual(h.flows(), { flows: 8, udp: 8, tcp: 0 });
  // The flows already open are unaffected.
  for (let i = 0; i < 8; i++) assertReuses(h, key(i), flows[i]!);
});

test("a flow slot freed by expiry lets a new flow in after the limit was reached", () => {
  const h = new EngineHarness();
  for (let i = 0; i < 8; i++) openFlow(h, key(i));
  assert.deepEqual(sendAll(h, [key(8)], [0]), [], "refused at the limit");
  h.now += testConfig.udpIdleMs;
  assert.equal(expireAll(h).length, 8);
  assert.equal(h.flows().udp, 0);
  openFlow(h, key(8));
  assert.equal(h.flows().udp, 1);
});

test("with a limit above the table's capacity, the flow after 16384 is dropped as DROP_FLOW_TABLE_FULL", () => {
  const h = new EngineHarness({ maxUdpFlows: 20000 });
  const keys: Key[] = [];
  for (let i = 0; i < layout.FLOW_CAPACITY; i++) keys.push({ guestPort: 1024 + (i % 60000), remote: [198, 18, (i >> 8) & 255, i & 255], remotePort: 53 + (i >> 16) });
  const ops = sendAll(h, keys, keys.map((_, i) => i));
  assert.equal(ops.length, 2 * layout.FLOW_CAPACITY);
  const flows = new Set(ops.filter((o) => o.kind === layout.OPK_UDP_OPEN).map((o) => o.flow));
  assert.equal(flows.size, layout.FLOW_CAPACITY, "every slab index used once");
  assert.ok([...flows].every((f) => f >= 0 && f < layout.FLOW_CAPACITY));
  const before = h.counters();
  assert.deepEqual(sendAll(h, [{ guestPort: 7, remote: [198, 19, 0, 1], remotePort: 7 }], [0]), []);
  assert.deepEqual(counterDelta(before, h.counters()), { RX_FRAMES: 1, RX_BYTES: 46, DROP_FLOW_TABLE_FULL: 1 });
  assert.equal(h.flows().udp, layout.FLOW_CAPACITY);
});

// ---- idle expiry ------------------------------------------------------------------------------------

test("an idle flow expires after udpIdleMs: tick queues OPK_CLOSE and frees it, while an active flow is kept", () => {
  const h = new EngineHarness();
  const idle = openFlow(h, key(1));
  const active = openFlow(h, key(2));
  assert.deepEqual(h.flows(), { flows: 2, udp: 2, tcp: 0 });
  h.now += 600;
  assertReuses(h, key(2), active);
  h.now += 400; // `idle` last active udpIdleMs (1000 ms) ago, `active` 400 ms ago
  const before = h.counters();
  assert.deepEqual(expireAll(h), [idle]);
  assert.deepEqual(counterDelta(before, h.counters()), { UDP_FLOWS_EXPIRED: 1 });
  assert.deepEqual(h.flows(), { flows: 1, udp: 1, tcp: 0 });
  assertReuses(h, key(2), active);
  h.now += testConfig.udpIdleMs;
  assert.deepEqual(expireAll(h), [active]);
  assert.deepEqual(h.flows(), { flows: 0, udp: 0, tcp: 0 }, "back to no flows");
});

test("a flow is not expired before udpIdleMs has passed", () => {
  const h = new EngineHarness();
  openFlow(h, key(1));
  h.now += testConfig.udpIdleMs - 1;
  assert.deepEqual(expireAll(h), []);
  assert.equal(h.flows().udp, 1);
});

test("datagrams from the host keep a flow alive", () => {
  const h = new EngineHarness();
  const flow = openFlow(h, key(1));
  h.now += 900;
  assert.equal(h.deliverUdp(flow, Uint8Array.from([1, 2, 3])).length, 1);
  h.now += 900; // 1800 ms after the guest's datagram, 900 ms after the host's
  assert.deepEqual(expireAll(h), []);
  assert.equal(h.flows().udp, 1);
});

test("a datagram from the host for an expired or unknown flow is dropped as DROP_UDP_NO_FLOW", () => {
  const h = new EngineHarness();
  const flow = openFlow(h, key(1));
  h.now += testConfig.udpIdleMs;
  assert.deepEqual(expireAll(h), [flow]);
  for (const token of [flow, flow + 1, layout.FLOW_CAPACITY, 0xffffffff]) {
    const before = h.counters();
    assert.deepEqual(h.deliverUdp(token, Uint8Array.from([9])), [], `token ${token}`);
    assert.deepEqual(counterDelta(before, h.counters()), { DROP_UDP_NO_FLOW: 1 }, `token ${token}`);
  }
  assert.deepEqual(h.takeOps(), []);
});

test("after expiry the same 5-tuple opens a new flow, not on the index just freed", () => {
  const h = new EngineHarness();
  const first = openFlow(h, key(1));
  h.now += testConfig.udpIdleMs;
  assert.deepEqual(expireAll(h), [first]);
  const second = openFlow(h, key(1));
  assert.notEqual(second, first, "a freed index waits behind every other free one (FIFO)");
  assertReuses(h, key(1), second);
});

// ---- churn ----------------------------------------------------------------------------------------


test("insert/remove churn of thousands of flows keeps every survivor on its original flow index", () => {
  const h = new EngineHarness({ maxUdpFlows: layout.FLOW_CAPACITY });
  const rand = prng(0xf10e);
  const int = (n: number) => Math.floor(rand() * n);
  const TARGET = 16000; // index load ~0.49: long probe clusters, where backward shifts happen

  const keys: Key[] = []; // key id -> key (ids are the tags carried in the payload)
  const seen = new Set<string>();
  function newKey(): number {
    for (;;) {
      const k: Key = { guestPort: 1 + int(65535), remote: [198, 18 + int(2), int(256), 1 + int(254)], remotePort: 1 + int(65535) };
      const s = `${k.guestPort}/${k.remote.join(".")}/${k.remotePort}`;
      if (seen.has(s)) continue;
      seen.add(s);
      keys.push(k);
      return keys.length - 1;
    }
  }
  const live = new Map<number, number>(); // key id -> flow index
  const liveFlows = new Set<number>();

  /** Datagrams for keys without a flow: each must open a fresh, unused index. */
  function open(ids: number[]): void {
    const ops = sendAll(h, ids.map((id) => keys[id]!), ids);
    assert.equal(ops.length, 2 * ids.length);
    for (let i = 0; i < ids.length; i++) {
      const [o, s] = [ops[2 * i]!, ops[2 * i + 1]!];
      assert.equal(o.kind, layout.OPK_UDP_OPEN, `key ${ids[i]} opens a flow`);
      assert.equal(s.kind, layout.OPK_UDP_SEND);
      assert.equal(s.flow, o.flow);
      assert.equal(tagOf(s), ids[i]);
      assert.ok(!liveFlows.has(o.flow), `flow index ${o.flow} handed out twice`);
      live.set(ids[i]!, o.flow);
      liveFlows.add(o.flow);
    }
  }
  /** Datagrams for live keys: each must be sent on the key's own flow, with nothing opened. */
  function verify(ids: number[]): void {
    const ops = sendAll(h, ids.map((id) => keys[id]!), ids);
    assert.equal(ops.length, ids.length, "one operation per datagram: no flow was opened");
    for (let i = 0; i < ids.length; i++) {
      const op = ops[i]!;
      assert.equal(op.kind, layout.OPK_UDP_SEND, `key ${ids[i]} resolves to an existing flow`);
      assert.equal(tagOf(op), ids[i]);
      assert.equal(op.flow, live.get(ids[i]!), `key ${ids[i]} still resolves to its original flow index`);
    }
  }
  function shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) { const j = int(i + 1); [a[i], a[j]] = [a[j]!, a[i]!]; }
    return a;
  }

  open(Array.from({ length: TARGET }, () => newKey()));
  assert.equal(h.flows().udp, TARGET);
  verify(shuffle([...live.keys()]));

  const expired: number[] = [];
  for (const fraction of [0.1, 0.5, 0.9, 0.33, 0.66]) {
    // Every live flow was last active at `now`. Refresh the survivors a little later, then tick
    // at a time when only the doomed subset has been idle for udpIdleMs.
    const ids = shuffle([...live.keys()]);
    const cut = Math.round(ids.length * fraction);
    const doomed = ids.slice(0, cut);
    const survivors = ids.slice(cut);
    h.now += 600;
    verify(survivors);
    h.now += testConfig.udpIdleMs - 600 + 1;
    const closed = expireAll(h);
    assert.deepEqual([...closed].sort((a, b) => a - b), doomed.map((id) => live.get(id)!).sort((a, b) => a - b), "exactly the idle flows were closed");
    for (const id of doomed) { liveFlows.delete(live.get(id)!); live.delete(id); expired.push(id); }
    assert.equal(h.flows().udp, survivors.length);
    assert.equal(h.flows().flows, survivors.length);

    // The heart of it: after thousands of backward shifts every survivor is still found.
    verify(shuffle([...survivors]));

    // Refill with fresh keys and with keys whose flows expired earlier (those must miss and open
    // new flows, never resolve to a stale slot).
    const refill: number[] = [];
    while (live.size + refill.length < TARGET) {
      refill.push(expired.length && rand() < 0.5 ? expired.splice(int(expired.length), 1)[0]! : newKey());
    }
    open(refill);
    assert.equal(h.flows().udp, TARGET);
    verify(shuffle([...live.keys()]));
  }
  assert.equal(h.counters().DROP_FLOW_LIMIT, undefined);
});

test("removing flows in insertion order and in reverse keeps the others reachable", () => {
  // Deterministic clusters: many flows, removed from the front and from the back of the
  // insertion order in turns, re-verifying everyone left after each removal wave.
  const h = new EngineHarness({ maxUdpFlows: layout.FLOW_CAPACITY });
  const keys = Array.from({ length: 12000 }, (_, i): Key => ({ guestPort: 2000 + (i % 3000), remote: [198, 18, 7, 1 + Math.floor(i / 3000)], remotePort: 443 }));
  const tags = keys.map((_, i) => i);
  const flows = sendAll(h, keys, tags).filter((o) => o.kind === layout.OPK_UDP_OPEN).map((o) => o.flow);
  assert.equal(flows.length, keys.length);
  let lo = 0;
  let hi = keys.length;
  let wave = 0;
  while (hi - lo > 1000) {
    // Keep [lo, hi) alive except one slice at the front or the back, which goes idle.
    const take = 1500;
    const [dLo, dHi] = wave % 2 === 0 ? [lo, lo + take] : [hi - take, hi];
    const survivors = wave % 2 === 0 ? [dHi, hi] : [lo, dLo];
    h.now += 600;
    const ops = sendAll(h, keys.slice(survivors[0], survivors[1]), tags.slice(survivors[0], survivors[1]));
    assert.deepEqual(ops.map((o) => o.flow), flows.slice(survivors[0], survivors[1]));
    h.now += testConfig.udpIdleMs - 600 + 1;
    const closed = expireAll(h).sort((a, b) => a - b);
    assert.deepEqual(closed, flows.slice(dLo, dHi).sort((a, b) => a - b));
    [lo, hi] = survivors as [number, number];
    const again = sendAll(h, keys.slice(lo, hi), tags.slice(lo, hi));
    assert.ok(again.every((o) => o.kind === layout.OPK_UDP_SEND), "no survivor lost its flow");
    assert.deepEqual(again.map((o) => o.flow), flows.slice(lo, hi));
    assert.equal(h.flows().udp, hi - lo);
    wave++;
  }
});
