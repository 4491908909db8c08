// inbound.test.ts — published ports in the engine (flow/inbound.ts, tcp.ts's active open): a peer
// that native-vmm accepted arrives as INK_ACCEPT; the engine judges it and opens a flow toward the
// guest. Driven through the harness's rings, no root and no sockets.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness, testConfig, counterDelta } from "../helpers/engine-harness.js";
import { eth, ipv4, udp } from "../helpers/frames.js";
import { SYN, RST, PSH, ACK, u16, segment, parse } from "../helpers/tcp-frames.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { NetworkPolicy } from "../../orchestrator/src/model/policy.js";
import { parseRule } from "../../orchestrator/src/policy/rule-parser.js";
import { EngineTables } from "../../orchestrator/src/engine/tables.js";
import { installPolicy } from "../../orchestrator/src/engine/policy-table.js";
import type { EngineConfig } from "../../orchestrator/src/engine/engine-config.js";

const GATEWAY = testConfig.gatewayIp4;
const LISTENER = 3;
const GUEST_PORT = 8080;

function harness(config: Partial<EngineConfig> = {}, policy?: NetworkPolicy): EngineHarness {
  const h = new EngineHarness({ maxTcpFlows: 64, ...config }, policy);
  publish(h, LISTENER, 6, GUEST_PORT);
  return h;
}

/** The orchestrator's side of a published port: the engine's table entry. */
function publish(h: EngineHarness, id: number, proto: number, guestPort: number): void {
  const e = L.PUB_BASE + id * L.PUB_ENTRY_BYTES;
  h.dv.setUint16(e + L.PUB_GUEST_PORT, guestPort, true);
  h.mem[e + L.PUB_PROTO] = proto;
}

/** native-vmm's INK_ACCEPT: a peer (IPv4 dotted quad) on listener `id`, with a datagram for UDP. */
function accept(h: EngineHarness, id: number, proto: number, peer: string, peerPort: number, datagram: number[] = []): Uint8Array[] {
  const buf = new Uint8Array(L.ACC_BYTES + datagram.length);
  const dv = new DataView(buf.buffer);
  buf[L.ACC_FAMILY] = 4;
  buf[L.ACC_PROTO] = proto;
  dv.setUint16(L.ACC_PORT, peerPort, true);
  buf.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...peer.split(".").map(Number)], L.ACC_ADDR);
  buf.set(datagram, L.ACC_BYTES);
  return h.deliverData(id, L.INK_ACCEPT, buf, 0);
}

/** Accept a TCP peer and return the SYN the guest was sent, and the flow native-vmm adopts it as. */
function acceptTcp(h: EngineHarness, peerPort = 45000, peer = "127.0.0.1") {
  const frames = accept(h, LISTENER, 6, peer, peerPort).map(parse);
  const ops = h.takeOps();
  const adopt = ops.find((o) => o.kind === L.OPK_ACCEPT);
  return { syn: frames[0], frames, ops, flow: adopt?.flow ?? -1, adopt };
}

test("an accepted peer becomes a SYN to the guest from the gateway; the guest's SYN-ACK establishes it", () => {
  const h = harness();
  const { syn, frames, adopt, flow } = acceptTcp(h);
  assert.equal(frames.length, 1);
  assert.ok(adopt, "native-vmm is told to adopt the peer's socket");
  assert.equal(adopt.port, LISTENER);
  assert.equal(syn!.flags, SYN, "a SYN, no ACK");
  assert.equal(syn!.sport, 45000, "from the peer's own port");
  assert.equal(syn!.dport, GUEST_PORT);
  assert.equal(syn!.mss, testConfig.mtu - 40);
  assert.equal(syn!.wscale, 7);
  assert.equal(adopt.arg, (syn!.seq + 1) >>> 0, "native-vmm peeks from the first byte after our SYN");
  // The guest answers from its port to the gateway's.
  const synAck = segment(GATEWAY, { sport: GUEST_PORT, dport: 45000, seq: 7000, ack: (syn!.seq + 1) >>> 0, flags: SYN | ACK, options: [2, 4, ...u16(1400), 1, 3, 3, 5] });
  const [ack] = h.send(synAck).map(parse);
  assert.equal(ack!.flags, ACK);
  assert.equal(ack!.ack, 7001);
  const credit = h.takeOps().find((o) => o.kind === L.OPK_TCP_CREDIT);
  assert.ok(credit, "host data may now be peeked");
  assert.equal(credit.flow, flow);
  assert.equal(credit.len, 1400, "in segments of the guest's MSS");
  // Data both ways, as on an outbound connection.
  h.send(segment(GATEWAY, { sport: GUEST_PORT, dport: 45000, seq: 7001, ack: (syn!.seq + 1) >>> 0, flags: ACK | PSH, data: Uint8Array.from([1, 2, 3]) }));
  const send = h.takeOps().find((o) => o.kind === L.OPK_TCP_SEND);
  assert.deepEqual(Array.from(send!.data), [1, 2, 3]);
  const [seg] = h.deliverData(flow, L.INK_TCP_DATA, Uint8Array.from([9, 8]), (syn!.seq + 1) >>> 0).map(parse);
  assert.deepEqual(Array.from(seg!.data), [9, 8]);
  assert.equal(seg!.dport, GUEST_PORT);
  assert.deepEqual(h.flows(), { flows: 1, udp: 0, tcp: 1 });
});

test("nothing listening in the guest: its RST resets the peer at once", () => {
  const h = harness();
  const { syn, flow } = acceptTcp(h);
  const before = h.counters();
  h.send(segment(GATEWAY, { sport: GUEST_PORT, dport: 45000, seq: 0, ack: (syn!.seq + 1) >>> 0, flags: RST | ACK }));
  const abort = h.takeOps().find((o) => o.kind === L.OPK_TCP_ABORT);
  assert.equal(abort?.flow, flow);
  assert.equal(counterDelta(before, h.counters()).TCP_INBOUND_CLOSED_PORT, 1);
  assert.deepEqual(h.flows(), { flows: 0, udp: 0, tcp: 0 });
});

test("a RST or SYN-ACK that does not acknowledge our SYN is ignored", () => {
  const h = harness();
  const { syn } = acceptTcp(h);
  h.send(segment(GATEWAY, { sport: GUEST_PORT, dport: 45000, seq: 0, ack: (syn!.seq + 99) >>> 0, flags: RST | ACK }));
  h.send(segment(GATEWAY, { sport: GUEST_PORT, dport: 45000, seq: 5, ack: (syn!.seq + 7) >>> 0, flags: SYN | ACK }));
  assert.equal(h.takeOps().length, 0);
  assert.deepEqual(h.flows(), { flows: 1, udp: 0, tcp: 1 });
});

test("an unanswered SYN is sent again on the RTO; after ten, the peer is reset", () => {
  const h = harness();
  const { syn, flow } = acceptTcp(h);
  let resent = 0;
  let aborted = false;
  for (let i = 0; i < 20 && !aborted; i++) {
    h.now += 10000;
    h.tick();
    const frames = h.run().map(parse);
    resent += frames.filter((f) => f.flags === SYN && f.seq === syn!.seq).length;
    aborted = h.takeOps().some((o) => o.kind === L.OPK_TCP_ABORT && o.flow === flow);
  }
  assert.ok(resent >= 9, `the SYN was sent again ${resent} times`);
  assert.ok(aborted, "the peer is reset");
  assert.equal(h.flows().flows, 0);
});

test("an ingress deny rule refuses the peer (OPK_REFUSE) and records an inbound audit event", () => {
  const h = harness({}, new NetworkPolicy("allow", [parseRule("deny:ingress@127.0.0.0/8:tcp:8080")]));
  const before = h.counters();
  const { frames, ops } = acceptTcp(h, 45000, "127.0.0.9");
  assert.equal(frames.length, 0, "the guest hears nothing");
  assert.deepEqual(ops.map((o) => [o.kind, o.port]), [[L.OPK_REFUSE, LISTENER]]);
  const d = counterDelta(before, h.counters());
  assert.equal(d.DROP_POLICY, 1);
  assert.equal(d.INBOUND_REFUSED, 1);
  const [e] = new EngineTables(h.mem).drainDenials(() => "rule", 0);
  assert.equal(e?.direction, "inbound");
  assert.equal(e?.source, "127.0.0.9:45000");
  assert.equal(e?.destination, testConfig.guestIp4);
  assert.equal(e?.port, GUEST_PORT);
  // A peer the rule does not cover is admitted.
  assert.ok(acceptTcp(h, 45001, "192.0.2.1").adopt);
});

test("the default ingress action applies when no inbound rule matches; outbound rules never do", () => {
  const h = new EngineHarness({ maxTcpFlows: 64 });
  installPolicy(h.mem, new NetworkPolicy("allow", [parseRule("allow@127.0.0.1")]), "drop", h.names, false, "deny");
  publish(h, LISTENER, 6, GUEST_PORT);
  const { ops } = acceptTcp(h);
  assert.deepEqual(ops.map((o) => o.kind), [L.OPK_REFUSE], "an egress rule for the peer's address does not admit it");
});

test("a withdrawn port (entry cleared) refuses a peer that raced the withdrawal", () => {
  const h = harness();
  h.mem[L.PUB_BASE + LISTENER * L.PUB_ENTRY_BYTES + L.PUB_PROTO] = 0;
  const { ops } = acceptTcp(h);
  assert.deepEqual(ops.map((o) => o.kind), [L.OPK_REFUSE]);
});

test("two peers with the same source port get distinct ports as the guest sees them", () => {
  const h = harness();
  const a = acceptTcp(h, 45000, "127.0.0.1");
  const b = acceptTcp(h, 45000, "127.0.0.2");
  assert.equal(a.syn!.sport, 45000);
  assert.notEqual(b.syn!.sport, 45000);
  assert.notEqual(a.flow, b.flow);
});

test("an inbound flow whose remote port is 53 stays a flow: the guest's segments are not taken for DNS", () => {
  const h = harness({ dnsIntercept: true });
  const { syn } = acceptTcp(h, 53);
  assert.equal(syn!.sport, 53);
  const [ack] = h.send(segment(GATEWAY, { sport: GUEST_PORT, dport: 53, seq: 1, ack: (syn!.seq + 1) >>> 0, flags: SYN | ACK })).map(parse);
  assert.equal(ack?.flags, ACK, "the flow answered");
  assert.ok(h.takeOps().every((o) => o.kind !== L.OPK_TCP_CONNECT), "nothing was dialled to the DNS forwarder");
});

test("over --max-connections an inbound peer is refused and counted", () => {
  const h = harness({ maxConnections: 1 });
  assert.ok(acceptTcp(h, 45000).adopt);
  const before = h.counters();
  const { ops } = acceptTcp(h, 45001);
  assert.deepEqual(ops.map((o) => o.kind), [L.OPK_REFUSE]);
  assert.equal(counterDelta(before, h.counters()).DROP_FLOW_LIMIT, 1);
});

test("UDP: a new peer's datagram reaches the guest, its replies go to that peer's flow, later datagrams come as flow data", () => {
  const h = harness();
  publish(h, 5, 17, 5353);
  const [frame] = accept(h, 5, 17, "127.0.0.1", 40000, [104, 105]);
  const adopt = h.takeOps().find((o) => o.kind === L.OPK_ACCEPT);
  assert.ok(adopt && frame);
  assert.equal(adopt.port, 5);
  const ip = frame.subarray(14);
  assert.equal(ip[9], 17);
  const u = ip.subarray(20);
  assert.equal((u[0]! << 8) | u[1]!, 40000, "from the peer's port");
  assert.equal((u[2]! << 8) | u[3]!, 5353);
  assert.deepEqual(Array.from(u.subarray(8)), [104, 105]);
  // The guest's reply, to the gateway's port 40000.
  h.send(eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(testConfig.guestIp4, GATEWAY, 17, udp(testConfig.guestIp4, GATEWAY, 5353, 40000, [1, 2]))));
  const send = h.takeOps().find((o) => o.kind === L.OPK_UDP_SEND);
  assert.equal(send?.flow, adopt.flow);
  assert.deepEqual(Array.from(send!.data), [1, 2]);
  // A later datagram from the same peer: INK_UDP_DATA with the datagram after the ACC header.
  const [again] = h.deliverData(adopt.flow, L.INK_UDP_DATA, Uint8Array.from([7, 7, 7]), L.ACC_BYTES, L.ACC_BYTES);
  assert.ok(again);
  assert.deepEqual(Array.from(again.subarray(14 + 20 + 8)), [7, 7, 7]);
});
