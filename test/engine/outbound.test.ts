// outbound.test.ts — where a flow the guest opens goes (engine-wasm/assembly/flow/outbound.ts),
// one test per service: the host operation the engine emits for the new flow (its dial address,
// port and family) and, for a redirect to an orchestrator service, the preamble native-vmm would
// write from OP_ORIG, read back as the service reads it. UDP DNS under interception makes no flow:
// its query is read from the DNS ring. Driven through the harness's rings, no root and no sockets.
import { test } from "node:test";
import assert from "node:assert/strict";
import ipaddr from "ipaddr.js";
import { EngineHarness, testConfig, counterDelta, type HostOp } from "../helpers/engine-harness.js";
import { eth, ipv4, ipv6, udp, tcpSyn, icmpEcho } from "../helpers/frames.js";
import { SYN, RST, ACK, segment, parse } from "../helpers/tcp-frames.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { NetworkPolicy, type DenyResponse } from "../../orchestrator/src/model/policy.js";
import { parseRule } from "../../orchestrator/src/policy/rule-parser.js";
import type { EngineConfig } from "../../orchestrator/src/engine/engine-config.js";

const GW4 = testConfig.gatewayIp4;
const GW6 = testConfig.gatewayIp6;
const GW_LL = testConfig.gatewayLl6;
const GUEST4 = testConfig.guestIp4;
const GUEST6 = testConfig.guestIp6;
const REMOTE4 = "198.51.100.7";
const REMOTE6 = "2001:db8::7";
const RESOLVER = "9.9.9.9";

// The orchestrator's services as a gateway configures them (distinct ports, so a dial to the
// wrong one shows).
const DNS_LISTENER = { ip: "127.0.0.2", port: 5300 };
const TLS_PROXY = { ip: "127.0.0.1", port: 4443 };
const DENY_PAGE = { ip: TLS_PROXY.ip, port: 4080 };
const SERVED: Partial<EngineConfig> = {
  maxTcpFlows: 64,
  maxUdpFlows: 64,
  dnsIntercept: true,
  dnsForward: DNS_LISTENER,
  redirectToken: new Uint8Array(16).fill(9),
  tls: { proxy: TLS_PROXY, ports: [443, 8443], blockQuic: true },
  denyPage: DENY_PAGE,
};
const ALLOW = NetworkPolicy.allowAll();
const DENY = new NetworkPolicy("deny", []);

function harness(policy: NetworkPolicy = ALLOW, config: Partial<EngineConfig> = {}, deny: DenyResponse = "drop"): EngineHarness {
  return new EngineHarness({ ...SERVED, ...config }, policy, deny);
}

/** 16 bytes of an address (IPv4 as ::ffff:a.b.c.d), as a dial address is written. */
function addr16(text: string): number[] {
  const a = ipaddr.parse(text);
  return (a.kind() === "ipv4" ? (a as ipaddr.IPv4).toIPv4MappedAddress() : a).toByteArray();
}

let sport = 40000;

/** A guest SYN to `dst`:`dport` (IPv4 or IPv6 by the address). */
function syn(dst: string, dport: number): Uint8Array {
  sport++;
  if (!dst.includes(":")) return segment(dst, { sport, dport, seq: 1000, flags: SYN });
  return eth(testConfig.gatewayMac, testConfig.guestMac, 0x86dd, ipv6(GUEST6, dst, 6, tcpSyn(GUEST6, dst, sport, dport, 1000)));
}

/** A guest UDP datagram to `dst`:`dport`. */
function datagram(dst: string, dport: number, data: number[] = [1, 2, 3]): Uint8Array {
  sport++;
  if (!dst.includes(":")) return eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(GUEST4, dst, 17, udp(GUEST4, dst, sport, dport, data)));
  return eth(testConfig.gatewayMac, testConfig.guestMac, 0x86dd, ipv6(GUEST6, dst, 17, udp(GUEST6, dst, sport, dport, data)));
}

/** Send `frame`: the frames the guest got, the host operations, what the counters did. */
function exchange(h: EngineHarness, frame: Uint8Array) {
  const before = h.counters();
  const frames = h.send(frame);
  return { frames, ops: h.takeOps(), delta: counterDelta(before, h.counters()) };
}

/** The one dial of a new flow (`kind`) among `ops`, checked against where it should go. */
function assertDial(ops: HostOp[], kind: number, want: { addr: string; port: number; family: 4 | 6; origin: HostOp["origin"] }): void {
  const dials = ops.filter((o) => o.kind === kind);
  assert.equal(dials.length, 1, `one op of kind ${kind} in ${JSON.stringify(ops.map((o) => o.kind))}`);
  const d = dials[0]!;
  assert.deepEqual({ addr: ipaddr.fromByteArray(Array.from(d.addr)).toString(), port: d.port, family: d.family, origin: d.origin },
    { addr: ipaddr.fromByteArray(addr16(want.addr)).toString(), port: want.port, family: want.family, origin: want.origin });
}

const noDial = (ops: HostOp[]) => assert.deepEqual(ops.filter((o) => o.kind === L.OPK_TCP_CONNECT || o.kind === L.OPK_UDP_OPEN || o.kind === L.OPK_ICMP_OPEN), []);

/** The queries the engine put on the DNS ring since the last look (all taken). */
function dnsQueries(h: EngineHarness) {
  const out = [];
  const tail = h.dv.getUint32(L.DNS_CTRL + L.RING_CTRL_TAIL, true);
  for (let i = h.dv.getUint32(L.DNS_CTRL + L.RING_CTRL_HEAD, true); i !== tail; i = (i + 1) >>> 0) {
    const q = L.DNS_BASE + (i & (L.DNS_SLOTS - 1)) * L.DNS_SLOT_BYTES;
    const u32 = (f: number) => h.dv.getUint32(q + f, true);
    out.push({
      family: u32(L.DQ_FAMILY), toGateway: u32(L.DQ_TO_GATEWAY), destPort: u32(L.DQ_DEST_PORT),
      dest: ipaddr.fromByteArray(Array.from(h.mem.subarray(q + L.DQ_DEST_ADDR, q + L.DQ_DEST_ADDR + 16))).toString(),
      payload: Array.from(h.mem.subarray(q + L.DQ_PAYLOAD, q + L.DQ_PAYLOAD + u32(L.DQ_LEN))),
    });
  }
  h.dv.setUint32(L.DNS_CTRL + L.RING_CTRL_HEAD, tail, true);
  return out;
}

const mapped = (v4: string) => ipaddr.fromByteArray(addr16(v4)).toString();

test("DNS over UDP to the gateway goes to the interceptor (the DNS ring): no flow, and policy is not asked", () => {
  for (const policy of [ALLOW, DENY]) {
    const h = harness(policy);
    const v4 = exchange(h, datagram(GW4, 53, [0x12, 0x34, 1, 0]));
    const v6 = exchange(h, datagram(GW6, 53, [0x56, 0x78, 1, 0]));
    noDial([...v4.ops, ...v6.ops]);
    assert.deepEqual(dnsQueries(h), [
      { family: 4, toGateway: 1, destPort: 53, dest: mapped(GW4), payload: [0x12, 0x34, 1, 0] },
      { family: 6, toGateway: 1, destPort: 53, dest: GW6, payload: [0x56, 0x78, 1, 0] },
    ]);
    assert.deepEqual([v4.delta.DNS_QUERIES, v4.delta.FLOWS_ALLOWED, v4.delta.DROP_POLICY], [1, undefined, undefined]);
  }
});

test("DNS over UDP to another resolver goes to the interceptor once policy admits that resolver", () => {
  const h = harness();
  const { ops, delta } = exchange(h, datagram(RESOLVER, 53));
  noDial(ops);
  assert.deepEqual(dnsQueries(h), [{ family: 4, toGateway: 0, destPort: 53, dest: mapped(RESOLVER), payload: [1, 2, 3] }]);
  assert.equal(delta.FLOWS_ALLOWED, 1);
  const denied = harness(DENY);
  assert.equal(exchange(denied, datagram(RESOLVER, 53)).delta.DROP_POLICY, 1);
  assert.deepEqual(dnsQueries(denied), []);
});

test("DNS over UDP to the gateway without interception is a flow to the forwarder, no preamble", () => {
  const { ops } = exchange(harness(ALLOW, { dnsIntercept: false }), datagram(GW4, 53));
  assertDial(ops, L.OPK_UDP_OPEN, { addr: DNS_LISTENER.ip, port: DNS_LISTENER.port, family: 4, origin: null });
});

test("DNS over TCP to the gateway is dialled to the DNS-over-TCP listener, the preamble naming gateway:53, whatever the policy", () => {
  for (const policy of [ALLOW, DENY]) {
    const h = harness(policy);
    const v4 = exchange(h, syn(GW4, 53));
    assertDial(v4.ops, L.OPK_TCP_CONNECT, { ...DNS_LISTENER, addr: DNS_LISTENER.ip, family: 4, origin: { ip: GW4, port: 53, admitNameId: 0 } });
    assert.equal(v4.delta.FLOWS_ALLOWED, undefined, "the gateway's own service: not judged");
    const v6 = exchange(h, syn(GW6, 53));
    assertDial(v6.ops, L.OPK_TCP_CONNECT, { addr: DNS_LISTENER.ip, port: DNS_LISTENER.port, family: 4, origin: { ip: GW6, port: 53, admitNameId: 0 } });
  }
});

test("DNS over TCP to another resolver is redirected to the same listener under interception, as policy says; dialled as is without", () => {
  const { ops, delta } = exchange(harness(), syn(RESOLVER, 53));
  assertDial(ops, L.OPK_TCP_CONNECT, { addr: DNS_LISTENER.ip, port: DNS_LISTENER.port, family: 4, origin: { ip: RESOLVER, port: 53, admitNameId: 0 } });
  assert.equal(delta.FLOWS_ALLOWED, 1);
  const denied = exchange(harness(DENY), syn(RESOLVER, 53));
  noDial(denied.ops);
  assert.equal(denied.delta.DROP_POLICY, 1);
  const plain = exchange(harness(ALLOW, { dnsIntercept: false }), syn(RESOLVER, 53));
  assertDial(plain.ops, L.OPK_TCP_CONNECT, { addr: RESOLVER, port: 53, family: 4, origin: null });
});

test("TLS to an intercepted port is dialled to the TLS proxy, the preamble naming the destination and the admitting domain rule", () => {
  const h = harness(new NetworkPolicy("allow", [parseRule("allow@example.com")]));
  const { ops, delta } = exchange(h, syn(REMOTE4, 443));
  assertDial(ops, L.OPK_TCP_CONNECT, { addr: TLS_PROXY.ip, port: TLS_PROXY.port, family: 4, origin: { ip: REMOTE4, port: 443, admitNameId: 0 } });
  assert.equal(delta.TLS_REDIRECTED, 1);
  const v6 = exchange(h, syn(REMOTE6, 8443));
  assertDial(v6.ops, L.OPK_TCP_CONNECT, { addr: TLS_PROXY.ip, port: TLS_PROXY.port, family: 4, origin: { ip: REMOTE6, port: 8443, admitNameId: 0 } });
  // Admitted by the domain rule (the address pinned by this sandbox's DNS): the rule's name id.
  const nameId = h.names.idOf("example.com", false);
  h.mem.set(addr16("203.0.113.9"), L.PIN_SCRATCH);
  h.engine.dnsPin(nameId, 60_000, h.now);
  const pinned = exchange(h, syn("203.0.113.9", 443));
  assertDial(pinned.ops, L.OPK_TCP_CONNECT, { addr: TLS_PROXY.ip, port: TLS_PROXY.port, family: 4, origin: { ip: "203.0.113.9", port: 443, admitNameId: nameId } });
  // Not an intercepted port: the remote itself.
  assertDial(exchange(h, syn(REMOTE4, 80)).ops, L.OPK_TCP_CONNECT, { addr: REMOTE4, port: 80, family: 4, origin: null });
});

test("QUIC to an intercepted TLS port is dropped and counted", () => {
  const { frames, ops, delta } = exchange(harness(), datagram(REMOTE4, 443));
  assert.deepEqual([frames, ops, delta.DROP_QUIC], [[], [], 1]);
});

test("DoT: TCP/853 goes to the TLS proxy — to the gateway whatever the policy, to another resolver as policy says", () => {
  for (const policy of [ALLOW, DENY]) {
    const { ops } = exchange(harness(policy), syn(GW4, 853));
    assertDial(ops, L.OPK_TCP_CONNECT, { addr: TLS_PROXY.ip, port: TLS_PROXY.port, family: 4, origin: { ip: GW4, port: 853, admitNameId: 0 } });
  }
  const { ops } = exchange(harness(), syn(RESOLVER, 853));
  assertDial(ops, L.OPK_TCP_CONNECT, { addr: TLS_PROXY.ip, port: TLS_PROXY.port, family: 4, origin: { ip: RESOLVER, port: 853, admitNameId: 0 } });
  const denied = exchange(harness(DENY), syn(RESOLVER, 853));
  noDial(denied.ops);
  assert.equal(denied.delta.DROP_POLICY, 1);
  // Without the TLS proxy DoT would bypass the interceptor: reset, so stubs fall back to port 53.
  const refused = exchange(harness(ALLOW, { tls: undefined }), syn(GW4, 853));
  noDial(refused.ops);
  assert.equal(refused.delta.DNS_ALT_REFUSED, 1);
  assert.equal(parse(refused.frames[0]!).flags, RST | ACK);
});

test("the deny page: a denied flow to port 80 or a TLS port is dialled to the deny page, the preamble carrying DENIED_BIT | rule + 1", () => {
  const h = harness(new NetworkPolicy("allow", [parseRule(`deny@${REMOTE4}`)]), {}, "http");
  const http = exchange(h, syn(REMOTE4, 80));
  assertDial(http.ops, L.OPK_TCP_CONNECT, { addr: DENY_PAGE.ip, port: DENY_PAGE.port, family: 4, origin: { ip: REMOTE4, port: 80, admitNameId: (L.DENIED_BIT | 1) >>> 0 } });
  assert.equal(http.delta.DROP_POLICY, 1);
  const https = exchange(h, syn(REMOTE4, 443));
  assertDial(https.ops, L.OPK_TCP_CONNECT, { addr: DENY_PAGE.ip, port: DENY_PAGE.port, family: 4, origin: { ip: REMOTE4, port: 443, admitNameId: (L.DENIED_BIT | 1) >>> 0 } });
  // Denied by the default action: rule 0.
  const byDefault = exchange(harness(DENY, {}, "http"), syn(REMOTE4, 80));
  assertDial(byDefault.ops, L.OPK_TCP_CONNECT, { addr: DENY_PAGE.ip, port: DENY_PAGE.port, family: 4, origin: { ip: REMOTE4, port: 80, admitNameId: L.DENIED_BIT >>> 0 } });
  // Another port has no page: reset.
  const other = exchange(h, syn(REMOTE4, 22));
  noDial(other.ops);
  assert.equal(parse(other.frames[0]!).flags, RST | ACK);
});

test("gateway loopback: another port of the gateway is dialled to the host's loopback on that port, no preamble", () => {
  const h = harness();
  assertDial(exchange(h, syn(GW4, 8080)).ops, L.OPK_TCP_CONNECT, { addr: "127.0.0.1", port: 8080, family: 4, origin: null });
  assertDial(exchange(h, syn(GW6, 8080)).ops, L.OPK_TCP_CONNECT, { addr: "::1", port: 8080, family: 6, origin: null });
  assertDial(exchange(h, syn(GW_LL, 22)).ops, L.OPK_TCP_CONNECT, { addr: "::1", port: 22, family: 6, origin: null });
  assertDial(exchange(h, datagram(GW4, 8080)).ops, L.OPK_UDP_OPEN, { addr: "127.0.0.1", port: 8080, family: 4, origin: null });
});

test("remote: anything else is dialled to the address and port the guest addressed, no preamble", () => {
  const h = harness();
  assertDial(exchange(h, syn(REMOTE4, 22)).ops, L.OPK_TCP_CONNECT, { addr: REMOTE4, port: 22, family: 4, origin: null });
  assertDial(exchange(h, syn(REMOTE6, 22)).ops, L.OPK_TCP_CONNECT, { addr: REMOTE6, port: 22, family: 6, origin: null });
  assertDial(exchange(h, datagram(REMOTE4, 9999)).ops, L.OPK_UDP_OPEN, { addr: REMOTE4, port: 9999, family: 4, origin: null });
  const echo = eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(GUEST4, REMOTE4, 1, icmpEcho(7, 1, [1, 2])));
  assertDial(exchange(h, echo).ops, L.OPK_ICMP_OPEN, { addr: REMOTE4, port: 0, family: 4, origin: null });
});

test("DNS over the other UDP transports is refused with ICMP port unreachable under interception", () => {
  for (const port of [853, 5353, 5355, 137]) {
    const { frames, ops, delta } = exchange(harness(), datagram(REMOTE4, port));
    noDial(ops);
    assert.equal(delta.DNS_ALT_REFUSED, 1, `port ${port}`);
    const icmp = frames[0]!.subarray(14 + 20);
    assert.deepEqual([frames.length, icmp[0], icmp[1]], [1, 3, 3], `port ${port}: type 3 code 3`);
  }
});
