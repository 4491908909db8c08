// tcp.test.ts — the TCP termination state machine (engine-wasm/assembly/flow/tcp.ts) driven
// segment by segment, smoltcp style: guest segments go in through the RX ring, host socket events
// through the event and inbound rings, and each test checks the frames the guest receives and the
// host operations native-vmm would execute. No root, no sockets: the clock is the harness's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness, testConfig, counterDelta } from "../helpers/engine-harness.js";
import { eth, ipv4, udp, withL4Checksum, refChecksum } from "../helpers/frames.js";
import { GUEST, REMOTE, FIN, SYN, RST, PSH, ACK, u16, u32, segment, parse, Conn, opsOf, type Seg } from "../helpers/tcp-frames.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import type { EngineConfig } from "../../orchestrator/src/engine/engine-config.js";

const ops = opsOf;

function harness(config: Partial<EngineConfig> = {}): EngineHarness {
  return new EngineHarness({ maxTcpFlows: 64, ...config });
}

/** An open connection that sent the guest 3 host bytes, unacknowledged, and was rewound by the RTO. */
function rewoundAfterThreeBytes(): { h: EngineHarness; c: Conn; base: number } {
  const h = harness();
  const c = new Conn(h).open();
  const base = c.iss + 1;
  c.hostData(base, [1, 2, 3]);
  h.now += 250;
  h.tick();
  assert.equal(ops(h, L.OPK_TCP_REWIND).length, 1, "the RTO rewinds");
  return { h, c, base };
}

test("handshake: the SYN is dialled first, the SYN-ACK waits for the dial and carries MSS and window scale", () => {
  const h = harness();
  const c = new Conn(h);
  const { frames, ops: o } = c.syn();
  assert.equal(frames.length, 0, "the guest hears nothing while the dial is in progress");
  const connect = o.find((x) => x.kind === L.OPK_TCP_CONNECT)!;
  assert.equal(connect.port, 80);
  assert.deepEqual(Array.from(connect.addr.subarray(12)), [198, 51, 100, 7]);
  const [sa] = h.deliverEvent(c.flow, L.INK_TCP_CONNECTED).map(parse);
  assert.equal(sa!.flags, SYN | ACK);
  assert.equal(sa!.ack, c.guestIss + 1);
  assert.equal(sa!.mss, testConfig.mtu - 40);
  assert.equal(sa!.wscale, 7);
  c.iss = sa!.seq;
  assert.deepEqual(c.send({ flags: ACK }), [], "the final ACK needs no answer");
  assert.equal(h.flows().tcp, 1);
});

test("a refused dial answers RST; any other dial failure answers nothing; both free the flow", () => {
  const h = harness();
  const a = new Conn(h, 40001);
  a.syn();
  const [rst] = h.deliverEvent(a.flow, L.INK_OPEN_FAILED, 0, 111).map(parse);
  assert.equal(rst!.flags & RST, RST);
  assert.equal(rst!.ack, a.guestIss + 1);
  const b = new Conn(h, 40002);
  b.syn();
  assert.deepEqual(h.deliverEvent(b.flow, L.INK_OPEN_FAILED, 0, 113), []);
  assert.equal(h.flows().flows, 0);
});

test("guest data is written straight from the RX slot and ACKed only as far as the socket took it", () => {
  const h = harness();
  const c = new Conn(h).open();
  const [w] = c.write([1, 2, 3, 4, 5]);
  assert.deepEqual(Array.from(w!.data), [1, 2, 3, 4, 5]);
  assert.deepEqual(h.deliverEvent(c.flow, L.INK_TCP_SENT, 5, 1 << 20), [], "one segment: the ACK is delayed");
  h.now += 40;
  const [ack] = h.flushAcks().map(parse);
  assert.equal(ack!.ack, c.gseq);
  // A short write: three duplicate ACKs at what was taken make the guest resend the rest now.
  c.write([6, 7, 8, 9]);
  const dups = h.deliverEvent(c.flow, L.INK_TCP_SENT | L.INK_PARTIAL, 1, 0).map(parse);
  assert.equal(dups.length, 3);
  for (const d of dups) assert.equal(d.ack, c.gseq - 3);
  assert.equal(dups[0]!.window, 0, "no send space: the window is shut");
  // The rest, retransmitted by the guest from the ACK point, is written from the first new byte.
  c.gseq -= 3;
  const [again] = c.write([7, 8, 9]);
  assert.deepEqual(Array.from(again!.data), [7, 8, 9]);
});

test("host data is retransmitted (go-back-N) on timeout and on three duplicate ACKs", () => {
  const h = harness();
  const c = new Conn(h).open();
  const base = c.iss + 1;
  const [s1] = c.hostData(base, [10, 11, 12]);
  assert.equal(s1!.seq, base);
  assert.deepEqual(Array.from(s1!.data), [10, 11, 12]);
  // No ACK: after the RTO (200 ms) the tick rewinds the peek to snd_una.
  h.now += 150;
  h.tick();
  assert.deepEqual(ops(h, L.OPK_TCP_REWIND), [], "not before the RTO");
  h.now += 100;
  h.tick();
  const [rw] = ops(h, L.OPK_TCP_REWIND);
  assert.equal(rw?.arg, base, "peek again from snd_una");
  assert.equal(h.counters().TCP_RETRANSMITS, 1);
  // The rewound bytes come again from snd_una (native-vmm's next epoch); the guest ACKs them.
  c.epoch++;
  c.hostData(base, [10, 11, 12]);
  c.rcvd = 3;
  c.send({ flags: ACK });
  assert.deepEqual(ops(h, L.OPK_TCP_ACKED).map((o) => [o.arg, o.len]), [[(base + 3) >>> 0, 3]], "the socket discards up to the acknowledged sequence number");
  // Three duplicate ACKs for data in flight: fast retransmit at once.
  c.hostData(base + 3, [13, 14]);
  c.hostData(base + 5, [15]);
  const before = h.counters();
  for (let i = 0; i < 3; i++) c.send({ flags: ACK });
  assert.equal(ops(h, L.OPK_TCP_REWIND).length, 1);
  assert.equal(counterDelta(before, h.counters()).TCP_RETRANSMITS, 1);
});

test("data peeked before a rewind is ignored even where its sequence number matches the rewound snd_nxt", () => {
  // Unacknowledged: the RTO rewinds to snd_una. Meanwhile native-vmm had peeked on, and an
  // old-epoch event still queued (behind a full TX ring, say) starts exactly at snd_una.
  const { h, c, base } = rewoundAfterThreeBytes();
  const before = h.counters();
  assert.deepEqual(c.hostData(base, [1, 2, 3], 0), [], "an old-epoch event is not sent");
  assert.equal(counterDelta(before, h.counters()).TCP_STALE_DATA, 1);
  // The rewound peek (epoch 1) is what the guest gets; nothing was skipped or duplicated.
  const [again] = c.hostData(base, [1, 2, 3], 1);
  assert.equal(again!.seq, base);
  assert.deepEqual(c.hostData(base + 3, [4], 1).map((s) => s.seq), [(base + 3) >>> 0]);
});

test("a lost window update does not stall the flow: the persist timer probes a shut window", () => {
  const h = harness();
  const c = new Conn(h).open(1); // a 128-byte window (scale 7)
  const base = c.iss + 1;
  const fill = Array.from({ length: 128 }, (_, i) => i);
  c.hostData(base, fill);
  // The guest takes the bytes but its buffer is full: window 0. Nothing is in flight now.
  c.rcvd = 128;
  c.send({ flags: ACK, window: 0 });
  h.takeOps();
  // Its window-opening ACK is lost. The persist timer must probe.
  let probe: Seg | undefined;
  for (let i = 0; i < 5 && !probe; i++) {
    h.now += 100;
    h.tick();
    probe = h.run().map(parse)[0];
  }
  assert.ok(probe, "a zero-window probe within 500 ms");
  assert.equal(probe.seq, (base + 128 - 1) >>> 0, "the probe carries snd_una - 1: the guest must answer");
  assert.equal(probe.data.length, 0);
  assert.equal(h.counters().TCP_PROBES, 1);
  // The guest's answer carries its open window: credit is granted again and data flows.
  c.send({ flags: ACK, window: 1 });
  const [credit] = ops(h, L.OPK_TCP_CREDIT);
  assert.ok(credit, "peek credit granted from the probe's answer");
  assert.deepEqual(c.hostData(base + 128, [5]).map((s) => s.data.length), [1]);
});

test("persist probes back off while the guest answers with a shut window, and never give up on a live guest", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.send({ flags: ACK, window: 0 });
  const times: number[] = [];
  const start = h.now;
  for (let t = 0; t < 60000; t += 100) {
    h.now = start + t;
    h.tick();
    if (h.run().length) {
      times.push(t);
      c.send({ flags: ACK, window: 0 }); // answered: still shut
    }
  }
  assert.ok(times.length >= 10, `kept probing a live guest (${times.length} probes)`);
  const gaps = times.slice(1).map((t, i) => t - times[i]!);
  assert.ok(gaps[gaps.length - 1]! <= 5100 && gaps[gaps.length - 1]! >= 4900, `backs off to 5 s: ${gaps.join(",")}`);
  assert.equal(h.flows().tcp, 1, "a guest that answers keeps its connection");
});

test("FIN each way: the guest's FIN is passed on after its data; the host's EOF becomes our FIN; then linger and reap", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.write([1, 2]);
  // The FIN right behind the data: the shutdown is queued after the write (native-vmm skips it
  // if that write came up short, and the guest retransmits its FIN).
  const fin0 = c.send({ flags: FIN | ACK });
  assert.deepEqual(fin0, [], "not acknowledged before the host socket is shut down");
  const h1 = h.takeOps().map((o) => o.kind);
  assert.deepEqual(h1, [L.OPK_TCP_SHUTDOWN]);
  h.deliverEvent(c.flow, L.INK_TCP_SENT, 2, 1 << 20);
  const [finAck] = h.deliverEvent(c.flow, L.INK_TCP_SHUT_DONE).map(parse);
  assert.equal(finAck!.ack, c.gseq + 1, "the FIN is acknowledged once the host socket was shut down");
  c.gseq++;
  // Host side: EOF after everything it sent.
  const [fin] = h.deliverData(c.flow, L.INK_TCP_EOF, new Uint8Array(0), c.iss + 1).map(parse);
  assert.equal(fin!.flags & FIN, FIN);
  c.rcvd = 1;
  c.send({ flags: ACK });
  assert.equal(ops(h, L.OPK_CLOSE).length, 1, "both FINs acknowledged: the socket is closed");
  assert.equal(h.flows().tcp, 0, "a lingering flow no longer counts as live");
  assert.equal(h.flows().flows, 1);
  h.now += 2100;
  h.tick();
  assert.equal(h.flows().flows, 0, "reaped after the linger");
});

test("a half-closed flow whose guest socket is gone is reaped: keepalive probe, guest RST", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.send({ flags: FIN | ACK });
  h.deliverEvent(c.flow, L.INK_TCP_SHUT_DONE);
  c.gseq++;
  h.takeOps();
  // The server never closes. After 10 s of silence from the guest, a probe.
  h.now += 9900;
  h.tick();
  assert.deepEqual(h.run(), []);
  h.now += 200;
  h.tick();
  const [probe] = h.run().map(parse);
  assert.ok(probe, "probed after 10 s");
  assert.equal(probe.ack, c.gseq);
  // The guest's socket is gone (its FIN_WAIT_2 timed out): its kernel answers RST at SEG.ACK.
  c.send({ flags: RST, seq: probe.ack, ack: 0 });
  assert.equal(ops(h, L.OPK_TCP_ABORT).length, 1, "the host side is reset too");
  assert.equal(h.flows().flows, 0);
});

test("a guest that stops answering is reset on both sides after three keepalive probes", () => {
  const h = harness();
  new Conn(h).open();
  const seen: Seg[] = [];
  for (let t = 0; t < 60000; t += 100) {
    h.now += 100;
    h.tick();
    seen.push(...h.run().map(parse));
  }
  const probes = seen.filter((s) => !(s.flags & RST));
  const rst = seen.filter((s) => s.flags & RST);
  assert.equal(probes.length, 3);
  assert.equal(rst.length, 1);
  assert.equal(h.flows().flows, 0, "the flow is gone");
  assert.equal(ops(h, L.OPK_TCP_ABORT).length, 1);
  assert.equal(h.counters().TCP_GUEST_TIMEOUTS, 1);
});

test("an active guest is never probed", () => {
  const h = harness();
  const c = new Conn(h).open();
  for (let t = 0; t < 120000; t += 100) {
    h.now += 100;
    h.tick();
    assert.deepEqual(h.run(), [], `no probe at ${t} ms`);
    if (t % 5000 === 0) c.send({ flags: ACK });
  }
  assert.equal(h.flows().tcp, 1);
});

test("RST from the guest is accepted only at the expected sequence number (RFC 5961 §3.2)", () => {
  const h = harness();
  const c = new Conn(h).open();
  const before = h.counters();
  c.send({ flags: RST, seq: c.gseq + 5000 });
  c.send({ flags: RST, seq: c.gseq - 1 });
  assert.equal(h.flows().tcp, 1, "an off-sequence RST is ignored");
  assert.equal(counterDelta(before, h.counters()).DROP_TCP_OUT_OF_WINDOW, 2);
  c.send({ flags: RST, seq: c.gseq });
  assert.equal(ops(h, L.OPK_TCP_ABORT).length, 1);
  assert.equal(h.flows().flows, 0);
});

test("a host reset resets the guest", () => {
  const h = harness();
  const c = new Conn(h).open();
  const [rst] = h.deliverData(c.flow, L.INK_TCP_RESET, new Uint8Array(0), 104).map(parse);
  assert.equal(rst!.flags & RST, RST);
  assert.equal(h.flows().flows, 0);
});

test("the connection limit counts every kind of flow: TCP and UDP to the world, and TCP to the gateway's DNS", () => {
  const h = harness({ maxConnections: 3 });
  new Conn(h, 41000).open();
  // A UDP flow.
  const udp = withL4Checksum([...u16(5000), ...u16(9999), 0, 9, 0, 0, 42], 6, GUEST, REMOTE, 17);
  h.send(eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(GUEST, REMOTE, 17, udp)));
  assert.ok(h.takeOps().some((o) => o.kind === L.OPK_UDP_OPEN));
  // DNS over TCP to the gateway: a gateway service, not judged by policy, but a connection all the same.
  const dns = new Conn(h, 41001, testConfig.gatewayIp4, 53);
  dns.syn();
  assert.ok(dns.flow >= 0, "the third connection is dialled (to the DNS listener)");
  const before = h.counters();
  const over = new Conn(h, 41002, testConfig.gatewayIp4, 53);
  const { frames, ops: o } = over.syn();
  assert.ok(!o.some((x) => x.kind === L.OPK_TCP_CONNECT), "the fourth is not dialled");
  assert.equal(parse(frames[0]!).flags & RST, RST, "it is refused at once");
  assert.equal(counterDelta(before, h.counters()).DROP_FLOW_LIMIT, 1);
  const over2 = new Conn(h, 41003);
  assert.equal(parse(over2.syn().frames[0]!).flags & RST, RST);
  assert.equal(h.flows().tcp, 2);
});

test("data and FIN together, written short: the skipped FIN is taken again with the retransmitted data", () => {
  const h = harness();
  const c = new Conn(h).open();
  // The last bytes and the FIN in one segment: a write and a shutdown are queued.
  c.send({ flags: ACK | PSH | FIN, data: Uint8Array.from([1, 2, 3, 4]) });
  assert.deepEqual(h.takeOps().map((o) => o.kind), [L.OPK_TCP_SEND, L.OPK_TCP_SHUTDOWN]);
  // The socket took 1 byte; native-vmm skips the shutdown behind a short write.
  h.deliverEvent(c.flow, L.INK_TCP_SENT | L.INK_PARTIAL, 1, 0);
  // The guest retransmits from the acknowledged point, FIN included: both are taken.
  c.send({ flags: ACK | PSH | FIN, seq: c.gseq + 1, data: Uint8Array.from([2, 3, 4]) });
  const again = h.takeOps();
  assert.deepEqual(again.map((o) => o.kind), [L.OPK_TCP_SEND, L.OPK_TCP_SHUTDOWN], "the rest and the FIN go out");
  assert.deepEqual(Array.from(again[0]!.data), [2, 3, 4]);
});

test("a window update sent after a rewind carries the highest sequence number sent, so the guest takes it", () => {
  const { h, c, base } = rewoundAfterThreeBytes(); // RTO: go-back-N, snd_nxt back to snd_una
  const [update] = h.deliverEvent(c.flow, L.INK_TCP_WRITABLE, 0, 1 << 20).map(parse);
  assert.equal(update!.seq, (base + 3) >>> 0, "not the rewound snd_nxt, which the guest would take for an old segment");
  assert.ok(update!.window > 0);
});

// ---- reassembly and SACK (flow/tcp-reassembly.ts) -------------------------------------------------

/** The SACK blocks of a segment the engine sent, relative to `base`. */
function sackBlocks(s: Seg, base: number): [number, number][] {
  const o = s.options;
  for (let i = 0; i < o.length;) {
    if (o[i] === 0) break;
    if (o[i] === 1) { i++; continue; }
    if (o[i] === 5) {
      const out: [number, number][] = [];
      for (let j = i + 2; j < i + o[i + 1]!; j += 8) {
        const v = (k: number) => ((o[k]! << 24) | (o[k + 1]! << 16) | (o[k + 2]! << 8) | o[k + 3]!) >>> 0;
        out.push([(v(j) - base) >>> 0, (v(j + 4) - base) >>> 0]);
      }
      return out;
    }
    i += o[i + 1]!;
  }
  return [];
}

/** The kinds of a segment's TCP options, in order. */
function optionKinds(s: Seg): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.options.length;) {
    const k = s.options[i]!;
    if (k === 0) break;
    out.push(k);
    i += k === 1 ? 1 : s.options[i + 1]!;
  }
  return out;
}

const bytes = (from: number, n: number) => Uint8Array.from({ length: n }, (_, i) => (from + i) & 255);

/** An open connection whose guest offered SACK-permitted. */
function sackConn(h = harness(), sport = 40000): Conn {
  const c = new Conn(h, sport);
  c.sackPermitted = true;
  return c.open();
}

test("SACK-permitted is answered only when the guest offers it", () => {
  const h = harness();
  const plain = new Conn(h, 40001);
  plain.syn();
  const [a] = h.deliverEvent(plain.flow, L.INK_TCP_CONNECTED).map(parse);
  assert.deepEqual(optionKinds(a!).filter((k) => k !== 1), [2, 3], "MSS and window scale, no SACK-permitted");
  const sack = new Conn(h, 40002);
  sack.sackPermitted = true;
  sack.syn();
  const [b] = h.deliverEvent(sack.flow, L.INK_TCP_CONNECTED).map(parse);
  assert.deepEqual(optionKinds(b!).filter((k) => k !== 1), [2, 3, 4], "MSS, window scale and SACK-permitted");
  assert.equal(b!.options.length % 4, 0);
  assert.equal(b!.mss, testConfig.mtu - 40);
  assert.equal(b!.wscale, 7);
});

test("segments ahead of a gap are held and SACKed, then written in order once the gap fills", () => {
  const h = harness();
  const c = sackConn(h);
  const base = c.gseq;
  // Segment A (0..100) is lost; B (100..200) and C (200..300) arrive.
  const [dupB] = c.send({ flags: ACK | PSH, seq: base + 100, data: bytes(100, 100) });
  assert.equal(ops(h, L.OPK_TCP_SEND).length, 0, "nothing beyond the gap is written");
  assert.equal(dupB!.ack, base, "a duplicate ACK at the gap");
  assert.deepEqual(sackBlocks(dupB!, base), [[100, 200]]);
  const [dupC] = c.send({ flags: ACK | PSH, seq: base + 200, data: bytes(200, 100) });
  assert.deepEqual(sackBlocks(dupC!, base), [[100, 300]], "adjacent segments are one block");
  h.takeOps();
  assert.deepEqual({ state: h.tcp(c.flow).state, held: h.tcp(c.flow).held, wr: h.tcp(c.flow).rcvWr - base }, { state: "established", held: 2, wr: 0 });
  // A disjoint one further on: its block goes first (the most recent arrival, RFC 2018 §4).
  const [dupE] = c.send({ flags: ACK | PSH, seq: base + 400, data: bytes(400, 50) });
  assert.deepEqual(sackBlocks(dupE!, base), [[400, 450], [100, 300]]);
  h.takeOps();
  // A arrives: A, B and C are written, in order, each from where its bytes are; E stays held.
  c.send({ flags: ACK | PSH, seq: base, data: bytes(0, 100) });
  const w = ops(h, L.OPK_TCP_SEND);
  assert.deepEqual(w.map((o) => o.len), [100, 100, 100]);
  assert.deepEqual(Array.from(Buffer.concat(w.map((o) => o.data))), Array.from(bytes(0, 300)));
  const t = h.tcp(c.flow);
  assert.deepEqual({ wr: t.rcvWr - base, held: t.held }, { wr: 300, held: 1 });
  // The socket took them: the ACK covers 300 and still reports E.
  h.deliverEvent(c.flow, L.INK_TCP_SENT, 100, 1 << 20);
  const acks = h.deliverEvent(c.flow, L.INK_TCP_SENT, 200, 1 << 20).map(parse); // two segments: at once
  const last = acks[acks.length - 1]!;
  assert.equal(last.ack, (base + 300) >>> 0);
  assert.deepEqual(sackBlocks(last, base), [[400, 450]]);
  assert.equal(h.counters().TCP_OOO_QUEUED, 3);
  assert.equal(h.counters().TCP_OOO_FILLED, 2);
  assert.equal(h.counters().DROP_TCP_OUT_OF_ORDER, undefined);
});

test("a held segment's FIN is passed on after its data; a duplicate of a held segment is held once", () => {
  const h = harness();
  const c = sackConn(h);
  const base = c.gseq;
  c.send({ flags: ACK | PSH | FIN, seq: base + 10, data: bytes(10, 10) });
  c.send({ flags: ACK | PSH | FIN, seq: base + 10, data: bytes(10, 10) }); // the guest retransmits it
  h.takeOps();
  assert.equal(h.tcp(c.flow).held, 1);
  c.send({ flags: ACK | PSH, seq: base, data: bytes(0, 10) });
  const o = h.takeOps();
  assert.deepEqual(o.map((x) => x.kind), [L.OPK_TCP_SEND, L.OPK_TCP_SEND, L.OPK_TCP_SHUTDOWN]);
  assert.deepEqual(Array.from(o[1]!.data), Array.from(bytes(10, 10)));
});

test("a flow holds a bounded number of segments; the rest are dropped and duplicate-ACKed as before", () => {
  const h = harness();
  const c = sackConn(h);
  const base = c.gseq;
  for (let i = 1; i <= L.OOO_PER_FLOW_MAX + 3; i++) c.send({ flags: ACK | PSH, seq: base + i * 10, data: bytes(i * 10, 10) });
  h.takeOps();
  assert.equal(h.tcp(c.flow).held, L.OOO_PER_FLOW_MAX);
  assert.equal(h.counters().DROP_TCP_OUT_OF_ORDER, 3);
  // Removing the flow frees its slots: a second flow can hold as many.
  h.send(segment(REMOTE, { sport: 40000, dport: 80, seq: base, flags: RST }));
  assert.equal(h.flows().tcp, 0);
  const d = sackConn(h, 40001);
  for (let i = 1; i <= L.OOO_PER_FLOW_MAX; i++) d.send({ flags: ACK | PSH, seq: d.gseq + i * 10, data: bytes(i, 10) });
  h.takeOps();
  assert.equal(h.tcp(d.flow).held, L.OOO_PER_FLOW_MAX);
});

test("a slot written out in a batch is not reused in that batch (its bytes are read after it)", () => {
  const h = harness();
  const a = sackConn(h, 40001);
  const b = sackConn(h, 40002);
  a.send({ flags: ACK | PSH, seq: a.gseq + 5, data: bytes(50, 5) }); // held in some slot
  h.takeOps();
  // One batch: a's gap fills (its held bytes are written from their slot) and b holds a segment.
  h.send(
    segment(REMOTE, { sport: 40001, dport: 80, seq: a.gseq, ack: (a.iss + 1) >>> 0, flags: ACK | PSH, data: bytes(0, 5) }),
    segment(REMOTE, { sport: 40002, dport: 80, seq: b.gseq + 5, ack: (b.iss + 1) >>> 0, flags: ACK | PSH, data: Uint8Array.from([9, 9, 9, 9, 9]) }),
  );
  const w = h.takeOps().filter((o) => o.kind === L.OPK_TCP_SEND);
  assert.deepEqual(w.map((o) => Array.from(o.data)), [Array.from(bytes(0, 5)), Array.from(bytes(50, 5))]);
  assert.equal(h.tcp(b.flow).held, 1);
});

test("without SACK-permitted, held segments still fill the gap (the ACKs carry no blocks)", () => {
  const h = harness();
  const c = new Conn(h).open();
  const base = c.gseq;
  const [dup] = c.send({ flags: ACK | PSH, seq: base + 3, data: bytes(3, 3) });
  assert.equal(dup!.options.length, 0);
  c.send({ flags: ACK | PSH, seq: base, data: bytes(0, 3) });
  assert.deepEqual(Array.from(Buffer.concat(ops(h, L.OPK_TCP_SEND).map((o) => o.data))), Array.from(bytes(0, 6)));
});

/** SACK option bytes for blocks [left, right) relative to `base`. */
const sackOption = (base: number, ...blocks: [number, number][]) =>
  [1, 1, 5, 2 + 8 * blocks.length, ...blocks.flatMap(([l, r]) => [...u32((base + l) >>> 0), ...u32((base + r) >>> 0)])];

test("fast retransmit with SACK resends only the hole, then resumes where the guest's ACK points", () => {
  const h = harness();
  const c = sackConn(h);
  const base = c.iss + 1;
  c.hostData(base, Array.from(bytes(0, 10)));
  c.hostData(base + 10, Array.from(bytes(10, 10)));
  c.hostData(base + 20, Array.from(bytes(20, 10)));
  h.takeOps();
  // The first segment was lost: two duplicate ACKs SACK the other two.
  const before = h.counters();
  c.send({ flags: ACK, options: sackOption(base, [10, 20]) });
  assert.deepEqual(ops(h, L.OPK_TCP_REWIND), [], "one duplicate is not enough");
  c.send({ flags: ACK, options: sackOption(base, [10, 30]) });
  const [rw] = ops(h, L.OPK_TCP_REWIND);
  assert.equal(rw?.arg, base, "the hole is peeked again");
  assert.equal(counterDelta(before, h.counters()).TCP_RETRANSMITS, 1);
  // native-vmm peeks from the hole on; only the hole goes to the guest.
  c.epoch++;
  const [again] = c.hostData(base, Array.from(bytes(0, 10)));
  assert.equal(again!.seq, base);
  assert.deepEqual(c.hostData(base + 10, Array.from(bytes(10, 10))), [], "what the guest holds is not sent again");
  // The guest now has everything: sending resumes at its ACK (native-vmm peeked past it meanwhile).
  c.rcvd = 30;
  c.send({ flags: ACK });
  const [resume] = ops(h, L.OPK_TCP_REWIND);
  assert.equal(resume?.arg, (base + 30) >>> 0);
  assert.equal(h.tcp(c.flow).sndNxt, (base + 30) >>> 0);
  c.epoch++;
  const [next] = c.hostData(base + 30, [1, 2, 3]);
  assert.equal(next!.seq, (base + 30) >>> 0, "new data flows again");
});

test("a guest echoing data gets its lost segment resent on SACKs riding on its own data", () => {
  const h = harness();
  const c = sackConn(h);
  const base = c.iss + 1;
  c.hostData(base, Array.from(bytes(0, 10)));
  c.hostData(base + 10, Array.from(bytes(10, 10)));
  h.takeOps();
  // Its data segments (window changing) carry the SACK for everything sent after the hole.
  c.write([1, 2, 3]);
  c.send({ flags: ACK | PSH, data: Uint8Array.from([4]), window: 1000, options: sackOption(base, [10, 20]) });
  assert.equal(ops(h, L.OPK_TCP_REWIND)[0]?.arg, base, "the tail loss is resent without waiting for the RTO");
});

// ---- delayed ACK (RFC 9293 §3.8.6.3) ----------------------------------------------------------------

test("delayed ACK: one written segment is acknowledged within 40 ms, by the timer the engine asks for", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.write([1, 2, 3]);
  assert.deepEqual(h.deliverEvent(c.flow, L.INK_TCP_SENT, 3, 1 << 20), []);
  assert.equal(h.tcp(c.flow).ackDueMs, h.now + 40, "the flow owes an ACK, due in 40 ms");
  assert.equal(h.ackDue(), h.now + 40, "and the worker is told when");
  h.now += 39;
  assert.deepEqual(h.flushAcks(), [], "not before it is due");
  h.now += 1;
  const [ack] = h.flushAcks().map(parse);
  assert.equal(ack!.flags, ACK);
  assert.equal(ack!.ack, c.gseq);
  assert.equal(h.counters().TCP_DELAYED_ACKS, 1);
  assert.equal(h.ackDue(), 0);
  assert.equal(h.tcp(c.flow).ackDueMs, 0);
});

test("delayed ACK: the echo carries the acknowledgement, and no ACK of its own is sent", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.write([1, 2, 3]);
  h.deliverEvent(c.flow, L.INK_TCP_SENT, 3, 1 << 20);
  const [echo] = c.hostData(c.iss + 1, [1, 2, 3]);
  assert.deepEqual(Array.from(echo!.data), [1, 2, 3]);
  assert.equal(echo!.ack, c.gseq, "the echo acknowledges the request");
  assert.equal(h.tcp(c.flow).ackDueMs, 0);
  h.now += 100;
  assert.deepEqual(h.flushAcks(), [], "nothing left to acknowledge");
  assert.equal(h.counters().TCP_DELAYED_ACKS, undefined);
});

test("delayed ACK: never with two segments unacknowledged, for a FIN, or when our window is closing", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.write([1]);
  assert.deepEqual(h.deliverEvent(c.flow, L.INK_TCP_SENT, 1, 1 << 20), []);
  c.write([2]);
  const [two] = h.deliverEvent(c.flow, L.INK_TCP_SENT, 1, 1 << 20).map(parse);
  assert.equal(two!.ack, c.gseq, "the second segment is acknowledged at once");
  // The window left is under two segments: the guest must hear it now.
  c.write([3]);
  const [tight] = h.deliverEvent(c.flow, L.INK_TCP_SENT, 1, 1000).map(parse);
  assert.equal(tight!.ack, c.gseq);
  // The guest's FIN: passed on, and its ACK goes as soon as the socket is shut.
  c.send({ flags: ACK | FIN });
  c.gseq++;
  assert.deepEqual(h.takeOps().map((o) => o.kind), [L.OPK_TCP_SHUTDOWN]);
  const [finAck] = h.deliverEvent(c.flow, L.INK_TCP_SHUT_DONE).map(parse);
  assert.equal(finAck!.ack, c.gseq);
});

test("delayed ACK: a flow that goes away leaves nothing owed", () => {
  const h = harness();
  const c = new Conn(h).open();
  c.write([1]);
  h.deliverEvent(c.flow, L.INK_TCP_SENT, 1, 1 << 20);
  h.deliverEvent(c.flow, L.INK_TCP_RESET, 0, 104);
  assert.equal(h.flows().tcp, 0);
  h.now += 40;
  assert.deepEqual(h.flushAcks(), []);
  assert.equal(h.ackDue(), 0);
});

test("SACK blocks never grow a data segment past the guest's MSS (its frame past the MTU and the TX slot)", () => {
  const h = harness();
  const c = sackConn(h); // the guest's MSS: 1460
  c.send({ flags: ACK | PSH, seq: c.gseq + 10, data: bytes(10, 10) }); // held: blocks are owed
  h.takeOps();
  const base = c.iss + 1;
  const [full] = c.hostData(base, Array.from(bytes(0, 1460)));
  assert.equal(full!.data.length, 1460);
  assert.deepEqual(sackBlocks(full!, c.gseq), [], "a full segment has no room for them");
  const [part] = c.hostData(base + 1460, Array.from(bytes(0, 1000)));
  assert.deepEqual(sackBlocks(part!, c.gseq), [[10, 20]], "a shorter one carries them");
  assert.ok(part!.options.length + part!.data.length <= 1460);
});

test("randomized: guest streams through loss, reordering, duplication and short writes reach their sockets intact", async () => {
  const { prng } = await import("../helpers/prng.js");
  const FLOWS = 8;
  const N = 8000;
  const stream = (f: number) => Uint8Array.from({ length: N }, (_, i) => (i * 7 + (i >> 8) + f * 31) & 255);
  for (let seed = 1; seed <= 12; seed++) {
    const rnd = prng(seed);
    const h = harness();
    const conns = Array.from({ length: FLOWS }, (_, f) => sackConn(h, 41000 + f));
    const streams = conns.map((_, f) => stream(f));
    const base = conns.map((c) => c.gseq);
    const written: number[][] = conns.map(() => []);
    const acked = conns.map(() => 0);
    const byFlow = new Map(conns.map((c, f) => [c.flow, f]));
    for (let round = 0; round < 600 && written.some((w) => w.length < N); round++) {
      // Each guest sends a burst from what is unacknowledged (segments of 50..300 bytes, some lost,
      // some twice, sometimes from further on); the bursts are interleaved and shuffled a little.
      const frames: Uint8Array[] = [];
      conns.forEach((c, f) => {
        let at = acked[f]! + Math.floor(rnd() * 3) * 200;
        for (let k = 0; k < 8 && at < N; k++) {
          const len = Math.min(N - at, 50 + Math.floor(rnd() * 250));
          const fr = segment(REMOTE, { sport: c.sport, dport: 80, seq: (base[f]! + at) >>> 0, ack: (c.iss + 1) >>> 0, flags: ACK | PSH, data: streams[f]!.subarray(at, at + len) });
          if (rnd() > 0.2) frames.push(fr);
          if (rnd() < 0.1) frames.push(fr);
          at += len;
        }
      });
      for (let i = frames.length - 1; i > 0; i--) if (rnd() < 0.3) [frames[i], frames[i - 1]] = [frames[i - 1]!, frames[i]!];
      h.send(...frames);
      // native-vmm executes the batch: a short write skips that flow's later writes in the batch.
      const blocked = new Set<number>();
      const events: [number, number, boolean][] = [];
      for (const o of h.takeOps().filter((x) => x.kind === L.OPK_TCP_SEND)) {
        if (blocked.has(o.flow)) continue;
        const partial = rnd() < 0.1;
        const n = partial ? Math.floor(rnd() * o.len) : o.len;
        written[byFlow.get(o.flow)!]!.push(...o.data.subarray(0, n));
        events.push([o.flow, n, partial]);
        if (partial) blocked.add(o.flow);
      }
      for (const [flow, n, partial] of events) h.deliverEvent(flow, L.INK_TCP_SENT | (partial ? L.INK_PARTIAL : 0), n, partial ? 0 : 1 << 20);
      h.takeOps();
      conns.forEach((c, f) => {
        acked[f] = (h.tcp(c.flow).rcvNxt - base[f]!) >>> 0;
        assert.equal(acked[f], written[f]!.length, `seed ${seed} flow ${f}: rcv_nxt is what was written`);
        assert.deepEqual(written[f], Array.from(streams[f]!.subarray(0, written[f]!.length)), `seed ${seed} flow ${f}: the socket got the stream, in order`);
      });
      h.now += 50;
      h.flushAcks();
    }
    conns.forEach((_, f) => assert.equal(written[f]!.length, N, `seed ${seed} flow ${f}: the whole stream arrived`));
    assert.ok((h.counters().TCP_OOO_QUEUED ?? 0) > 0 && (h.counters().DROP_TCP_OUT_OF_ORDER ?? 0) > 0, "the pool was used, and filled");
  }
});

test("toward a link that takes them left (a TAP's virtio-net header), TCP and UDP checksums hold the pseudo-header's sum, flagged, which completed is right; other links get them whole", () => {
  // What a NIC (or the guest's kernel, for a TAP) does with a left checksum: sum the bytes from
  // csumStart on, the field included, and store the complement in the field.
  const completed = (frame: Uint8Array, start: number, off: number) => {
    const l4 = frame.slice(start);
    const c = refChecksum(l4);
    l4[off] = c >> 8;
    l4[off + 1] = c & 255;
    return l4;
  };
  const data = Array.from({ length: 1001 }, (_, i) => (i * 7 + 3) & 255); // odd: the last byte pads
  for (const left of [true, false]) {
    const h = harness();
    h.leaveChecksums(left);
    const c = new Conn(h).open();
    const [seg] = h.deliverData(c.flow, L.INK_TCP_DATA | (c.epoch << L.INK_EPOCH_SHIFT), Uint8Array.from(data), (c.iss + 1) >>> 0);
    const segDesc = h.txDescs[0]!;
    assert.deepEqual(parse(seg!).data, Uint8Array.from(data));
    h.send(eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(GUEST, REMOTE, 17, udp(GUEST, REMOTE, 40001, 9999, [1]))));
    const udpFlow = h.takeOps().find((o) => o.kind === L.OPK_UDP_OPEN)!.flow;
    const [dgram] = h.deliverUdp(udpFlow, Uint8Array.from(data));
    const dgramDesc = h.txDescs[0]!;
    for (const [frame, desc, off, proto] of [[seg!, segDesc, 16, 6], [dgram!, dgramDesc, 6, 17]] as const) {
      const l4 = frame.slice(34); // Ethernet + a 20-byte IPv4 header
      const right = Uint8Array.from(withL4Checksum(Array.from(l4), off, REMOTE, GUEST, proto));
      if (left) {
        assert.deepEqual({ ...desc, flags: desc.flags & L.TX_F_CSUM_LEFT }, { flags: L.TX_F_CSUM_LEFT, csumStart: 34, csumOff: off }, `proto ${proto}: flagged, with where to sum and store`);
        assert.notDeepEqual(l4, right, `proto ${proto}: the bytes are not summed here`);
        assert.deepEqual(completed(frame, desc.csumStart, desc.csumOff), right, `proto ${proto}: completed, the checksum is right`);
      } else {
        assert.equal(desc.flags & L.TX_F_CSUM_LEFT, 0, `proto ${proto}: no flag`);
        assert.deepEqual(l4, right, `proto ${proto}: the checksum is whole`);
      }
    }
  }
});

test("host bytes reach the guest in a frame built around them in their inbound slot, which goes back only once the frame is taken", () => {
  const h = harness();
  const c = new Conn(h).open();
  const dv = new DataView(h.memory.buffer);
  const u32At = (off: number) => dv.getUint32(off, true);
  const inHead = () => u32At(L.IN_CTRL + L.RING_CTRL_HEAD);
  const before = inHead();
  const data = Uint8Array.from({ length: 3000 }, (_, i) => (i * 13) & 255);
  // The engine alone (no harness run, which takes the frames as a link would).
  const slot = u32At(L.IN_CTRL + L.RING_CTRL_TAIL) & (L.IN_SLOTS - 1);
  const tail = u32At(L.IN_CTRL + L.RING_CTRL_TAIL);
  h.mem.set(data, L.IN_BUF_BASE + slot * L.SLOT_BYTES + L.IN_TCP_DATA_AT);
  const d = L.IN_DESC_BASE + slot * L.DESC_BYTES;
  dv.setUint32(d + L.DESC_LEN, data.length, true);
  dv.setUint32(d + L.DESC_FLAGS, (c.iss + 1) >>> 0, true);
  dv.setUint32(d + L.DESC_TOKEN, c.flow, true);
  dv.setUint32(d + L.DESC_AUX, L.INK_TCP_DATA, true);
  dv.setUint32(L.IN_CTRL + L.RING_CTRL_TAIL, tail + 1, true);
  const txPos = u32At(L.ST_TX_NEXT);
  h.engine.engineRun(h.now);
  assert.equal(u32At(L.IN_CTRL + L.RING_CTRL_PENDING_HEAD), tail + 1, "consumed (staged)");
  assert.equal(inHead(), before, "but not given back: the frame is not taken yet");
  const lent = L.IN_LENT_BASE + slot * 8;
  assert.deepEqual([u32At(lent), u32At(lent + 4)], [1, txPos], "lent to the frame at that TX position");
  const txd = L.TX_DESC_BASE + (txPos & (L.TX_SLOTS - 1)) * L.DESC_BYTES;
  assert.equal(u32At(txd + L.DESC_FLAGS) & L.TX_F_EXTERNAL, L.TX_F_EXTERNAL);
  const at = u32At(txd + L.DESC_AUX), len = u32At(txd + L.DESC_LEN);
  assert.equal(at + len, L.IN_BUF_BASE + slot * L.SLOT_BYTES + L.IN_TCP_DATA_AT + data.length, "the frame ends where the bytes do: they were not moved");
  const seg = parse(h.mem.slice(at, at + len));
  assert.deepEqual(seg.data, data);
  assert.equal(seg.seq, (c.iss + 1) >>> 0);
  assert.equal(h.run().length, 1, "the link takes the frame");
  // A stale event (not at snd_nxt) builds nothing and lends nothing.
  assert.deepEqual(c.hostData(c.iss + 1, [1, 2, 3]), [], "bytes already sent: dropped as stale");
  const stale = L.IN_LENT_BASE + ((tail + 1) & (L.IN_SLOTS - 1)) * 8;
  assert.equal(u32At(stale), 0);
});
