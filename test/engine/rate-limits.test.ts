// rate-limits.test.ts — the engine's rate limits (engine-wasm/assembly/limits.ts) on synthetic
// frames: TCP is paced by the window offered (egress) and the peek credit granted (ingress), and
// what was held back goes on when the tokens come, from the limits' timer alone; SYNs over the
// connection rate are held and dialled in order; datagrams over a budget are dropped and counted;
// DNS queries over the rate are refused. No root, no sockets: the clock is the harness's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness, testConfig } from "../helpers/engine-harness.js";
import { eth, ipv4, udp } from "../helpers/frames.js";
import { GUEST, REMOTE, SYN, ACK, u16, segment, parse, Conn, opsOf } from "../helpers/tcp-frames.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";

const EGRESS = 0, INGRESS = 1, CONN = 2, DNS = 3;
const MSS = 1460; // what Conn's SYN offers
const WS = 7; // the window shift both sides use

function harness(): EngineHarness {
  return new EngineHarness({ maxTcpFlows: 64, maxUdpFlows: 64 });
}

function udpFrame(sport: number, payload: number): Uint8Array {
  return eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(GUEST, REMOTE, 17, udp(GUEST, REMOTE, sport, 9, new Array(payload).fill(7))));
}

test("egress: the window offered is what the tokens cover; held under a segment, it reopens from the timer alone", () => {
  const h = harness();
  h.setLimit(EGRESS, 1000, 10000); // 1000 B/s, a bucket of 10000 B
  const c = new Conn(h).open();
  c.write(new Uint8Array(9000));
  const [ack] = h.deliverEvent(c.flow, L.INK_TCP_SENT, 9000, 1 << 20).map(parse);
  assert.ok(ack, "a window this small is said at once");
  assert.equal(ack.ack, c.gseq);
  assert.ok(ack.window << WS <= 1000, `window ${ack.window << WS} within the 1000 tokens left`);
  assert.equal(h.counters().RATE_EGRESS_PACED, 1);
  // The guest sends nothing more; the tokens for a segment (in the window's units of 128) come
  // (1536 - 1000) ms later, when the limits' timer is due.
  const due = h.limitDue();
  assert.equal(due, h.now + Math.ceil(MSS / (1 << WS)) * (1 << WS) - 1000);
  h.now = due - 1;
  assert.deepEqual(h.limitWake().map(parse).filter((s) => s.window << WS >= MSS), [], "not before");
  h.now = due;
  const [update] = h.limitWake().map(parse);
  assert.ok(update && update.window << WS >= MSS, `a window update of a segment: ${JSON.stringify(update)}`);
  assert.equal(update.ack, c.gseq);
  assert.equal(h.limitDue(), 0, "nothing waits any more");
});

test("egress: the tokens of bytes the socket did not take are given back", () => {
  const h = harness();
  h.setLimit(EGRESS, 1000, 10000);
  const c = new Conn(h).open();
  const tokens = () => h.dv.getFloat64(L.LIM_EGRESS + L.LB_TOKENS, true);
  c.write(new Uint8Array(4000));
  assert.equal(tokens(), 6000, "taken as the bytes are written");
  h.deliverEvent(c.flow, L.INK_TCP_SENT | L.INK_PARTIAL, 1000, 0); // 3000 not written: the guest resends them
  assert.equal(tokens(), 9000);
});

test("ingress: credit goes no further than the tokens; the rest waits in the host socket and is granted from the timer", () => {
  const h = harness();
  h.setLimit(INGRESS, 1000, 3000);
  const c = new Conn(h);
  c.syn();
  const [synack] = h.deliverEvent(c.flow, L.INK_TCP_CONNECTED).map(parse);
  c.iss = synack!.seq;
  c.send({ flags: ACK, window: 65535 }); // 8 MiB of window: the tokens are what binds
  const [credit] = opsOf(h, L.OPK_TCP_CREDIT);
  assert.equal(credit?.arg, (c.iss + 1 + 3000) >>> 0, "credit for the 3000 tokens");
  const segs = c.hostData(c.iss + 1, Array(3000).fill(1));
  assert.equal(segs[0]?.data.length, 3000);
  c.rcvd = 3000;
  c.send({ flags: ACK, window: 65535 });
  assert.deepEqual(opsOf(h, L.OPK_TCP_CREDIT), [], "no tokens left: no credit");
  assert.equal(h.counters().RATE_INGRESS_PACED, 1);
  h.now = h.limitDue();
  assert.equal(h.now, 1000 + MSS, "due when a segment's tokens are there");
  h.limitWake();
  const [more] = opsOf(h, L.OPK_TCP_CREDIT);
  assert.equal(more?.arg, (c.iss + 1 + 3000 + MSS) >>> 0, "a segment more, from the timer alone");
  // A retransmission costs nothing: the bytes were charged when first sent.
  c.hostData(c.iss + 1 + 3000, Array(MSS).fill(2));
  assert.ok(h.dv.getFloat64(L.LIM_INGRESS + L.LB_TOKENS, true) <= 0);
});

test("conn: SYNs over the rate are held and dialled in arrival order as the rate allows; a new UDP flow meanwhile is dropped", () => {
  const h = harness();
  h.setLimit(CONN, 10, 1); // 10 new flows a second, a bucket of 1
  const conns = [40001, 40002, 40003].map((p) => new Conn(h, p));
  const dialled = (): number[] => opsOf(h, L.OPK_TCP_CONNECT).map((o) => o.flow);
  const a = conns[0]!.syn();
  assert.equal(a.ops.filter((o) => o.kind === L.OPK_TCP_CONNECT).length, 1, "the first is dialled at once");
  for (const c of conns.slice(1)) assert.equal(c.syn().ops.filter((o) => o.kind === L.OPK_TCP_CONNECT).length, 0, "the others are held");
  const held = [conns[1]!, conns[2]!].map((c) => {
    // The held flow exists (DIALING): find its index through the retransmitted SYN, which is ignored.
    assert.deepEqual(h.send(segment(REMOTE, { sport: c.sport, dport: 80, seq: c.guestIss, flags: SYN, options: [2, 4, ...u16(MSS)] })), []);
    return c;
  });
  assert.equal(h.counters().RATE_CONN_DELAYED, 2);
  h.send(udpFrame(5000, 10));
  assert.equal(opsOf(h, L.OPK_UDP_OPEN).length, 0, "a UDP flow does not pass held SYNs");
  assert.equal(h.counters().DROP_RATE_CONN, 1);
  h.now = h.limitDue();
  assert.equal(h.now, 1100);
  h.limitWake();
  const first = dialled();
  assert.equal(first.length, 1, "one token, one dial");
  h.now += 100;
  h.limitWake();
  const second = dialled();
  assert.equal(second.length, 1);
  assert.ok(first[0]! < second[0]!, "in arrival order");
  assert.equal(h.limitDue(), 0);
  assert.equal(held.length, 2);
  assert.equal(h.counters().TCP_FLOWS_OPENED, 3);
});

test("removing a limit releases what it held at once", () => {
  const h = harness();
  h.setLimit(CONN, 1, 1);
  new Conn(h, 40001).syn();
  assert.equal(new Conn(h, 40002).syn().ops.filter((o) => o.kind === L.OPK_TCP_CONNECT).length, 0);
  h.setLimit(CONN, 0, 0);
  assert.equal(opsOf(h, L.OPK_TCP_CONNECT).length, 1, "dialled by the change itself");
});

test("datagrams over the egress or ingress budget are dropped and counted", () => {
  const h = harness();
  h.setLimit(EGRESS, 1000, 250);
  h.setLimit(INGRESS, 1000, 250);
  h.send(udpFrame(5000, 200));
  const [open] = opsOf(h, L.OPK_UDP_OPEN);
  assert.ok(open);
  h.send(udpFrame(5000, 100)); // 50 tokens left
  assert.equal(opsOf(h, L.OPK_UDP_SEND).length, 0);
  assert.equal(h.counters().DROP_RATE_EGRESS, 1);
  assert.equal(h.deliverUdp(open.flow, new Uint8Array(200)).length, 1);
  assert.equal(h.deliverUdp(open.flow, new Uint8Array(100)).length, 0);
  assert.equal(h.counters().DROP_RATE_INGRESS, 1);
  h.now += 100; // 100 tokens more each way
  h.send(udpFrame(5000, 100));
  assert.equal(opsOf(h, L.OPK_UDP_SEND).length, 1);
  assert.equal(h.deliverUdp(open.flow, new Uint8Array(100)).length, 1);
});

test("DNS: queries over the rate are refused and counted", () => {
  const h = harness();
  assert.equal(h.engine.engineDnsAdmit(h.now), 1, "no limit: every query");
  h.setLimit(DNS, 1, 2);
  assert.deepEqual([1, 2, 3].map(() => h.engine.engineDnsAdmit(h.now)), [1, 1, 0]);
  assert.equal(h.counters().DNS_RATE_REFUSED, 1);
  h.now += 1000;
  assert.equal(h.engine.engineDnsAdmit(h.now), 1, "a second later, one more");
});
