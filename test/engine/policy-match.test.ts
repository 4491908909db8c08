// policy-match.test.ts — the engine's policy evaluation (engine-wasm/assembly/policy/match.ts)
// against the semantics of record (DESIGN §6): address groups, first match wins, protocol, port,
// direction and CIDR filters, domain rules without pins, default action, live replacement.
//
// Addresses are written as 16 bytes (IPv4 as ::ffff:a.b.c.d) into the engine's scratch area at
// layout.BENCH_BASE and handed to the exported policyClassify / policyEvaluate. Policies are
// compiled into the engine by the real compiler (orchestrator/src/engine/policy-table.ts) through
// the harness. Each test is one table; a failing test lists every row that disagrees, not only the
// first.
//
import { test } from "node:test";
import assert from "node:assert/strict";
import ipaddr from "ipaddr.js";
import { EngineHarness, testConfig } from "../helpers/engine-harness.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { NetworkPolicy, Rule, Destination, PortRange, GROUPS, type Group, type Protocol } from "../../orchestrator/src/model/policy.js";
import { classifyAddress } from "../../orchestrator/src/model/groups.js";
import { SPECIAL_PURPOSE } from "../../orchestrator/src/model/special-purpose.js";
import { EngineTables } from "../../orchestrator/src/engine/tables.js";
import { PROTOCOL_NUMBER } from "../../orchestrator/src/engine/policy-table.js";

interface PolicyExports {
  policyEvaluate(proto: number, addr: number, port: number, direction: number): number;
  policyClassify(addr: number): number;
}

const h = new EngineHarness();
const engine = h.engine as unknown as PolicyExports;

const OUT = L.DIR_OUTBOUND;
const IN = L.DIR_INBOUND;

/**
 * The 16 bytes of an address. IPv4 becomes ::ffff:a.b.c.d. An IPv6 text with a trailing dotted
 * quad is converted by hand: ipaddr.js parses "::10.0.0.1" (IPv4-compatible) as ::ffff:10.0.0.1.
 */
function bytesOf(text: string): number[] {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text).toIPv4MappedAddress().toByteArray();
  const m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (m) {
    const [a, b, c, d] = ipaddr.IPv4.parse(m[2]!).octets as [number, number, number, number];
    text = `${m[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  return ipaddr.IPv6.parse(text).toByteArray();
}

function put(addr: string): number {
  h.mem.set(bytesOf(addr), L.BENCH_BASE);
  return L.BENCH_BASE;
}

function groupOf(addr: string): Group {
  const g = engine.policyClassify(put(addr));
  return GROUPS[g] ?? (`<group ${g}>` as Group);
}

type Verdict = `${"allow" | "deny"} by ${"default" | `rule ${number}`}`;

interface Flow { proto?: Protocol | number; port?: number; direction?: number }

/** The raw result of policyEvaluate. */
function raw(addr: string, f: Flow = {}): number {
  const proto = typeof f.proto === "number" ? f.proto : PROTOCOL_NUMBER[f.proto ?? "tcp"];
  return engine.policyEvaluate(proto, put(addr), f.port ?? 443, f.direction ?? OUT);
}

/** "allow by rule 0" (rules counted from 0, as in policy.rules) or "deny by default". */
function verdict(addr: string, f: Flow = {}): Verdict {
  const r = raw(addr, f);
  const action = r & 1 ? "deny" : "allow";
  return r >>> 1 === 0 ? `${action} by default` : `${action} by rule ${(r >>> 1) - 1}`;
}

/** Compare every row, then fail once listing every disagreement. */
function expectAll<T>(rows: ReadonlyArray<readonly [string, T]>, actual: (input: string) => T, what = ""): void {
  const wrong: string[] = [];
  for (const [input, want] of rows) {
    const got = actual(input);
    if (got !== want) wrong.push(`${what}${input}: got ${String(got)}, want ${String(want)}`);
  }
  assert.deepEqual(wrong, []);
}

interface EvalRow { addr: string; flow?: Flow; want: Verdict }

function expectVerdicts(policy: NetworkPolicy, rows: ReadonlyArray<EvalRow>): void {
  h.setPolicy(policy);
  const wrong: string[] = [];
  for (const { addr, flow, want } of rows) {
    const got = verdict(addr, flow);
    if (got !== want) wrong.push(`${addr} ${JSON.stringify(flow ?? {})}: got ${got}, want ${want}`);
  }
  assert.deepEqual(wrong, []);
}

const allowOut = (d: Destination, extra: Partial<Rule> = {}): Rule => ({ ...Rule.allowOutbound(d), ...extra });
const denyOut = (d: Destination, extra: Partial<Rule> = {}): Rule => ({ ...Rule.denyOutbound(d), ...extra });

// ---- classify -----------------------------------------------------------------------------------

test("the harness's gateway and the address encoding are the ones these tables assume", () => {
  assert.equal(testConfig.gatewayIp4, "172.30.0.1");
  assert.equal(testConfig.gatewayIp6, "fd6d:6f61:7400::1");
  assert.equal(testConfig.gatewayLl6, "fe80::1");
  // The table's own address encoding: compatible and NAT64 spellings keep their bytes.
  assert.deepEqual(bytesOf("::10.0.0.1"), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
  assert.deepEqual(bytesOf("::ffff:10.0.0.1"), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
  assert.deepEqual(bytesOf("10.0.0.1"), bytesOf("::ffff:10.0.0.1"));
  assert.deepEqual(bytesOf("64:ff9b::10.0.0.1"), [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
  assert.deepEqual([...GROUPS], ["host", "metadata", "loopback", "private", "link-local", "multicast", "public"]);
  assert.deepEqual([L.GROUP_HOST, L.GROUP_METADATA, L.GROUP_LOOPBACK, L.GROUP_PRIVATE, L.GROUP_LINK_LOCAL, L.GROUP_MULTICAST, L.GROUP_PUBLIC], [0, 1, 2, 3, 4, 5, 6]);
});

test("classify: IPv4 private ranges (10/8, 172.16/12, 192.168/16, 100.64/10) end exactly at their boundaries", () => {
  expectAll<Group>([
    ["9.255.255.255", "public"],
    ["10.0.0.0", "private"],
    ["10.255.255.255", "private"],
    ["11.0.0.0", "public"],
    ["172.15.255.255", "public"],
    ["172.16.0.0", "private"],
    ["172.31.255.255", "private"],
    ["172.32.0.0", "public"],
    ["192.167.255.255", "public"],
    ["192.168.0.0", "private"],
    ["192.168.255.255", "private"],
    ["192.169.0.0", "public"],
    ["100.63.255.255", "public"],
    ["100.64.0.0", "private"],
    ["100.127.255.255", "private"],
    ["100.128.0.0", "public"],
  ], groupOf);
});

test("classify: IPv4 loopback (127/8) and unroutable 0/8 are loopback", () => {
  expectAll<Group>([
    ["127.0.0.1", "loopback"],
    ["127.255.255.255", "loopback"],
    ["0.0.0.0", "loopback"],
    ["0.1.2.3", "loopback"],
    ["0.255.255.255", "loopback"],
    ["1.0.0.0", "public"],
    ["126.255.255.255", "public"],
    ["128.0.0.0", "public"],
  ], groupOf);
});

test("classify: 169.254.169.254 is metadata, the rest of 169.254/16 link-local", () => {
  expectAll<Group>([
    ["169.254.169.254", "metadata"],
    ["169.254.169.253", "link-local"],
    ["169.254.169.255", "link-local"],
    ["169.254.0.1", "link-local"],
    ["169.254.255.255", "link-local"],
    ["169.253.255.255", "public"],
    ["169.255.0.0", "public"],
  ], groupOf);
});

test("classify: 224/4 is multicast, 240/4 (reserved, broadcast) fails closed as private", () => {
  expectAll<Group>([
    ["223.255.255.255", "public"],
    ["224.0.0.1", "multicast"],
    ["239.255.255.255", "multicast"],
    ["240.0.0.1", "private"],
    ["255.255.255.255", "private"],
  ], groupOf);
});

test("classify: routable IPv4 (including documentation ranges) is public", () => {
  expectAll<Group>([
    ["8.8.8.8", "public"],
    ["203.0.113.10", "public"],
    ["198.51.100.1", "public"],
    ["1.1.1.1", "public"],
  ], groupOf);
});

/**
 * The IANA special-purpose registries (RFC 6890 and its updates), range by range: first and
 * last address and just outside, written out here rather than derived from the table
 * (orchestrator/src/model/special-purpose.ts) they test. Not globally reachable is private,
 * globally reachable carve-outs are public, and the four documentation ranges test worlds use
 * as the internet stay public.
 */
const SPECIAL_IPV4: ReadonlyArray<readonly [string, Group]> = [
  ["0.0.0.0", "loopback"], ["0.255.255.255", "loopback"], // "this network"
  // 192.0.0.0/24 IETF Protocol Assignments, with its globally reachable anycast addresses
  ["191.255.255.255", "public"], ["192.0.0.0", "private"], ["192.0.0.7", "private"], ["192.0.0.8", "private"],
  ["192.0.0.9", "public"], ["192.0.0.10", "public"], ["192.0.0.11", "private"], ["192.0.0.170", "private"],
  ["192.0.0.171", "private"], ["192.0.0.255", "private"], ["192.0.1.0", "public"],
  // documentation: public stand-ins for the internet
  ["192.0.2.0", "public"], ["192.0.2.255", "public"], ["198.51.100.0", "public"], ["198.51.100.255", "public"],
  ["203.0.113.0", "public"], ["203.0.113.255", "public"],
  // globally reachable special-purpose blocks: AS112, AMT
  ["192.31.196.1", "public"], ["192.52.193.1", "public"], ["192.175.48.1", "public"],
  // 192.88.99.0/24 deprecated 6to4 relay anycast, and 6a44 inside it
  ["192.88.98.255", "public"], ["192.88.99.0", "private"], ["192.88.99.1", "private"], ["192.88.99.2", "private"],
  ["192.88.99.255", "private"], ["192.88.100.0", "public"],
  // 198.18.0.0/15 benchmarking
  ["198.17.255.255", "public"], ["198.18.0.0", "private"], ["198.19.255.255", "private"], ["198.20.0.0", "public"],
  // 100.64.0.0/10 shared address space
  ["100.63.255.255", "public"], ["100.64.0.0", "private"], ["100.127.255.255", "private"], ["100.128.0.0", "public"],
  // 240.0.0.0/4 reserved and the limited broadcast address
  ["239.255.255.255", "multicast"], ["240.0.0.0", "private"], ["255.255.255.254", "private"], ["255.255.255.255", "private"],
];

const SPECIAL_IPV6: ReadonlyArray<readonly [string, Group]> = [
  ["::", "loopback"], ["::1", "loopback"],
  // 100::/64 discard-only, 100:0:0:1::/64 dummy prefix
  ["100::", "private"], ["100::ffff:ffff:ffff:ffff", "private"], ["100:0:0:1::", "private"],
  ["100:0:0:1:ffff:ffff:ffff:ffff", "private"],
  // 2001::/23 IETF protocol assignments, with its globally reachable carve-outs
  ["2001:1::", "private"], ["2001:1::1", "public"], ["2001:1::2", "public"], ["2001:1::3", "public"], ["2001:1::4", "private"],
  ["2001:2::", "private"], ["2001:2:0:ffff:ffff:ffff:ffff:ffff", "private"], ["2001:2:1::", "private"],
  ["2001:3::", "public"], ["2001:3:ffff:ffff:ffff:ffff:ffff:ffff", "public"],
  ["2001:4:111:ffff:ffff:ffff:ffff:ffff", "private"], ["2001:4:112::", "public"], ["2001:4:112:ffff:ffff:ffff:ffff:ffff", "public"],
  ["2001:4:113::", "private"],
  ["2001:10::", "private"], ["2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", "private"], // deprecated ORCHID
  ["2001:20::", "public"], ["2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", "public"], // ORCHIDv2
  ["2001:30::", "public"], ["2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", "public"], // DETs
  ["2001:40::", "private"], ["2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "private"], ["2001:200::", "public"],
  // documentation: 2001:db8::/32 a public stand-in, 3fff::/20 (RFC 9637) not
  ["2001:db8::", "public"], ["2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "public"],
  ["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "public"], ["3fff::", "private"], ["3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "private"],
  ["3fff:1000::", "public"],
  ["2620:4f:8000::1", "public"], // AS112 direct delegation
  ["5f00::", "private"], ["5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private"], // SRv6 SIDs
  // outside global unicast 2000::/3: reserved by the IETF
  ["1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private"], ["2000::", "public"],
  ["3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "public"], ["4000::", "private"], ["fec0::1", "private"],
  ["fc00::", "private"], ["fe80::2", "link-local"], ["ff00::", "multicast"], ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast"],
];

/** `v4` in every IPv6 form that carries it: mapped, compatible, SIIT, NAT64, 6to4, Teredo. */
function carriedForms(v4: string): string[] {
  const o = ipaddr.IPv4.parse(v4).octets;
  const h = (a: number, b: number) => ((a << 8) | b).toString(16);
  return [
    `::ffff:${v4}`, `::${v4}`, `::ffff:0:${v4}`, `64:ff9b::${v4}`,
    `2002:${h(o[0]!, o[1]!)}:${h(o[2]!, o[3]!)}::1`,
    `2001:0:4136:e378:8000:63bf:${h(o[0]! ^ 0xff, o[1]! ^ 0xff)}:${h(o[2]! ^ 0xff, o[3]! ^ 0xff)}`,
  ];
}

test("classify: the IANA special-purpose ranges (IPv4), in the engine and in classifyAddress alike", () => {
  expectAll(SPECIAL_IPV4, groupOf, "engine ");
  expectAll(SPECIAL_IPV4, (a) => classifyAddress(a, []), "classifyAddress ");
});

test("classify: the IANA special-purpose ranges (IPv6), in the engine and in classifyAddress alike", () => {
  expectAll(SPECIAL_IPV6, groupOf, "engine ");
  expectAll(SPECIAL_IPV6, (a) => classifyAddress(a, []), "classifyAddress ");
});

test("classify: the IPv4 special-purpose ranges in every IPv6 form that carries them are judged as the IPv4 address", () => {
  const rows = SPECIAL_IPV4.flatMap(([v4, g]) => carriedForms(v4).map((a) => [a, g] as const));
  expectAll(rows, groupOf, "engine ");
  expectAll(rows, (a) => classifyAddress(a, []), "classifyAddress ");
});

test("classify: the engine's compiled table and classifyAddress agree at every edge of every range", () => {
  const edges: string[] = [];
  for (const e of SPECIAL_PURPOSE) {
    const [net, bits] = ipaddr.parseCIDR(e.prefix);
    const b = net.toByteArray();
    const last = b.map((x, i) => x | (0xff >> Math.min(8, Math.max(0, bits - i * 8))));
    const step = (bytes: number[], d: number) => {
      const out = [...bytes];
      for (let i = out.length - 1; i >= 0; i--) {
        out[i] = (out[i]! + d) & 0xff;
        if (out[i] !== (d > 0 ? 0 : 0xff)) break;
      }
      return out;
    };
    for (const a of [b, last, step(b, -1), step(last, 1)]) edges.push(ipaddr.fromByteArray(a).toString());
  }
  const gateway = [testConfig.gatewayIp4, testConfig.gatewayIp6, testConfig.gatewayLl6];
  expectAll(edges.map((a) => [a, classifyAddress(a, gateway)] as const), groupOf);
});

test("classify: the gateway's IPv4 address is host, the guest's own /30 neighbour is private", () => {
  expectAll<Group>([
    ["172.30.0.1", "host"],
    ["172.30.0.2", "private"],
    ["172.30.0.0", "private"],
    ["172.30.0.3", "private"],
  ], groupOf);
});

test("classify: IPv6 loopback, host (gateway ULA and link-local), link-local fe80::/10 boundaries", () => {
  expectAll<Group>([
    ["::1", "loopback"],
    ["::", "loopback"],
    ["fe80::1", "host"],
    ["fd6d:6f61:7400::1", "host"],
    ["fd6d:6f61:7400::2", "private"],
    ["fe80::2", "link-local"],
    ["febf:ffff::", "link-local"],
    ["febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link-local"],
    // Either side: IPv6 outside global unicast, reserved by the IETF (fec0::/10 the deprecated
    // site-local block): private.
    ["fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private"],
    ["fec0::", "private"],
  ], groupOf);
});

test("classify: IPv6 ULA fc00::/7 is private, fd00:ec2::254 metadata, ff00::/8 multicast, global unicast public", () => {
  expectAll<Group>([
    ["fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private"], // outside 2000::/3: reserved
    ["fc00::1", "private"],
    ["fdff::1", "private"],
    ["fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private"],
    ["fd00:ec2::254", "metadata"],
    ["fd00:ec2::253", "private"],
    ["fd00:ec2::1:254", "private"],
    ["ff02::1", "multicast"],
    ["ff00::", "multicast"],
    ["2001:db8::1", "public"],
    ["2606:4700::1111", "public"],
  ], groupOf);
});

/**
 * Every IPv6 form that carries an IPv4 address, judged by that address — the engine (new flows)
 * and the orchestrator's classifyAddress (DNS rebinding protection) held to this one table.
 */
const CARRIED_IPV4: ReadonlyArray<readonly [string, Group]> = [
  ["::ffff:10.0.0.1", "private"],
  ["::ffff:169.254.169.254", "metadata"],
  ["::ffff:172.30.0.1", "host"],
  ["::ffff:8.8.8.8", "public"],
  ["::10.0.0.1", "private"],
  ["::169.254.169.254", "metadata"],
  ["::8.8.8.8", "public"],
  // SIIT (RFC 6145) ::ffff:0:a.b.c.d
  ["::ffff:0:a9fe:a9fe", "metadata"],
  ["::ffff:0:10.0.0.1", "private"],
  ["::ffff:0:127.0.0.1", "loopback"],
  ["::ffff:0:808:808", "public"],
  // NAT64 well-known prefix (RFC 6052)
  ["64:ff9b::a9fe:a9fe", "metadata"],
  ["64:ff9b::808:808", "public"],
  // 6to4 (RFC 3056): the IPv4 address is bits 16..47
  ["2002:a9fe:a9fe::1", "metadata"],
  ["2002:a00:1::1", "private"],
  ["2002:7f00:1:1::", "loopback"],
  ["2002:ac1e:1::", "host"],
  ["2002:e000:1::1", "multicast"],
  ["2002:808:808::1", "public"],
  // Teredo (RFC 4380): the client's IPv4 address, inverted, in the last 32 bits
  ["2001:0:4136:e378:8000:63bf:5601:5601", "metadata"],
  ["2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"],
  ["2001:0:4136:e378:8000:63bf:f7f7:f7f7", "public"],
  // The local-use NAT64 prefix (RFC 8215) embeds at an operator-chosen offset: ambiguous, private
  ["64:ff9b:1::a9fe:a9fe", "private"],
  ["64:ff9b:1:a9fe:a9:fe00::", "private"],
  ["64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "private"],
  // Just outside each prefix: judged as themselves, never by the IPv4 they seem to hold —
  // reserved space outside 2000::/3, IETF protocol assignments 2001::/23, or global unicast
  ["64:ff9b:0:0:1::a9fe:a9fe", "private"],
  ["64:ff9b:2::a9fe:a9fe", "private"],
  ["2003:a9fe:a9fe::1", "public"],
  ["2001:1::a9fe:a9fe", "private"],
  ["2001:200::a9fe:a9fe", "public"],
  ["::fffe:0:a9fe:a9fe", "private"],
];

test("classify: every IPv6 form carrying IPv4 is judged by that IPv4 address, in the engine and in classifyAddress alike", () => {
  expectAll(CARRIED_IPV4, groupOf, "engine ");
  const gateway = [testConfig.gatewayIp4, testConfig.gatewayIp6, testConfig.gatewayLl6];
  expectAll(CARRIED_IPV4, (a) => classifyAddress(a, gateway), "classifyAddress ");
});

test("classify: IPv6 addresses carrying IPv4 (mapped, compatible, NAT64) are judged by that IPv4 address", () => {
  expectAll<Group>([
    ["::ffff:10.0.0.1", "private"],
    ["::ffff:169.254.169.254", "metadata"],
    ["::ffff:172.30.0.1", "host"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:8.8.8.8", "public"],
    ["::10.0.0.1", "private"],
    ["::169.254.169.254", "metadata"],
    ["::127.0.0.1", "loopback"],
    ["::8.8.8.8", "public"],
    ["64:ff9b::a9fe:a9fe", "metadata"],
    ["64:ff9b::808:808", "public"],
    ["64:ff9b::10.0.0.1", "private"],
    ["64:ff9b::127.0.0.1", "loopback"],
    ["64:ff9b::224.0.0.1", "multicast"],
    // Just outside the NAT64 /96: reserved space, judged as itself.
    ["64:ff9b:0:0:1::a9fe:a9fe", "private"],
  ], groupOf);
});

test("classify: the gateway's IPv4 address spelled as compatible or NAT64 IPv6 is host, as its IPv4 form", {
}, () => {
  expectAll<Group>([
    ["::172.30.0.1", "host"],
    ["64:ff9b::172.30.0.1", "host"],
  ], groupOf);
});

test("classify: the host's own addresses are host while the table lists them, in every spelling", () => {
  const tables = new EngineTables(h.mem);
  tables.setHostAddresses(["203.0.113.1", "2001:db8:77::1"]);
  try {
    expectAll<Group>([
      ["203.0.113.1", "host"],
      ["::203.0.113.1", "host"],
      ["2002:cb00:7101::5", "host"], // 6to4 of 203.0.113.1
      ["2001:db8:77::1", "host"],
      ["203.0.113.2", "public"],
      ["2001:db8:77::2", "public"],
    ], groupOf);
    // A prefix the host treats as local as a whole (AnyIP): every address in it is the host.
    tables.setHostAddresses(["198.18.0.0/24", "2001:db8:77::1"]);
    expectAll<Group>([["198.18.0.5", "host"], ["198.18.1.5", "private"], ["2002:c612:5::", "host"]], groupOf);
    // The table is replaced whole: an address the host lost is an ordinary address again.
    tables.setHostAddresses(["2001:db8:77::1"]);
    expectAll<Group>([["203.0.113.1", "public"], ["2001:db8:77::1", "host"]], groupOf);
  } finally {
    tables.setHostAddresses([]);
  }
  expectAll<Group>([["2001:db8:77::1", "public"]], groupOf);
});

// ---- evaluate -----------------------------------------------------------------------------------

test("evaluate: a rule added to a preset (withRules) comes before the preset's own, as --net-rule does", () => {
  const p = NetworkPolicy.publicOnly().withRules(denyOut(Destination.cidr("8.8.8.8/32"))).withRules(allowOut(Destination.cidr("10.1.2.3/32")));
  assert.deepEqual(p.rules.map((r) => `${r.action} ${r.destination.kind}`), ["deny cidr", "allow cidr", "allow group"]);
  expectVerdicts(p, [
    { addr: "8.8.8.8", want: "deny by rule 0" },
    { addr: "10.1.2.3", want: "allow by rule 1" },
    { addr: "1.1.1.1", want: "allow by rule 2" },
    { addr: "10.0.0.1", want: "deny by default" },
  ]);
});

test("evaluate: the result encodes ((rule index + 1) << 1) | deny, 0 in the upper bits for the default", () => {
  h.setPolicy(NetworkPolicy.allowAll());
  assert.equal(raw("8.8.8.8"), 0); // allow, default
  h.setPolicy(NetworkPolicy.publicOnly());
  assert.equal(raw("8.8.8.8"), (1 << 1) | 0); // allow, rules[0]
  assert.equal(raw("10.0.0.1"), 1); // deny, default
  h.setPolicy(new NetworkPolicy("allow", [denyOut(Destination.any()), allowOut(Destination.any())]));
  assert.equal(raw("8.8.8.8"), (1 << 1) | 1); // deny, rules[0]
  h.setPolicy(new NetworkPolicy("allow", [allowOut(Destination.cidr("10.0.0.0/8")), denyOut(Destination.any())]));
  assert.equal(raw("8.8.8.8"), (2 << 1) | 1); // deny, rules[1]
});

test("evaluate: allowAll allows every group by its default action", () => {
  expectVerdicts(NetworkPolicy.allowAll(), [
    "172.30.0.1", "169.254.169.254", "127.0.0.1", "10.0.0.1", "169.254.0.1", "224.0.0.1", "8.8.8.8",
    "fe80::1", "fd00:ec2::254", "::1", "fc00::1", "fe80::2", "ff02::1", "2001:db8::1",
  ].map((addr) => ({ addr, want: "allow by default" as const })));
});

test("evaluate: publicOnly allows public by rule 0 and denies every other group by default", () => {
  const one = (addr: string, want: Verdict): EvalRow[] => [
    { addr, want },
    { addr, flow: { proto: "udp", port: 53 }, want },
    { addr, flow: { proto: addr.includes(":") ? "icmpv6" : "icmpv4", port: 0 }, want },
  ];
  expectVerdicts(NetworkPolicy.publicOnly(), [
    ...one("8.8.8.8", "allow by rule 0"),
    ...one("2606:4700::1111", "allow by rule 0"),
    ...one("64:ff9b::808:808", "allow by rule 0"),
    ...one("172.30.0.1", "deny by default"),
    ...one("fd6d:6f61:7400::1", "deny by default"),
    ...one("fe80::1", "deny by default"),
    ...one("169.254.169.254", "deny by default"),
    ...one("fd00:ec2::254", "deny by default"),
    ...one("64:ff9b::a9fe:a9fe", "deny by default"),
    ...one("127.0.0.1", "deny by default"),
    ...one("::1", "deny by default"),
    ...one("0.0.0.0", "deny by default"),
    ...one("10.0.0.1", "deny by default"),
    ...one("::ffff:10.0.0.1", "deny by default"),
    ...one("::10.0.0.1", "deny by default"),
    ...one("fc00::1", "deny by default"),
    ...one("240.0.0.1", "deny by default"),
    ...one("198.18.0.1", "deny by default"),
    ...one("192.0.0.170", "deny by default"),
    ...one("192.88.99.1", "deny by default"),
    ...one("::ffff:198.18.0.1", "deny by default"),
    ...one("64:ff9b::c612:1", "deny by default"),
    ...one("2001:2::1", "deny by default"),
    ...one("100::1", "deny by default"),
    ...one("5f00::1", "deny by default"),
    ...one("192.0.0.9", "allow by rule 0"),
    ...one("2001:1::1", "allow by rule 0"),
    ...one("192.0.2.1", "allow by rule 0"),
    ...one("2001:db8::1", "allow by rule 0"),
    ...one("169.254.0.1", "deny by default"),
    ...one("fe80::2", "deny by default"),
    ...one("224.0.0.1", "deny by default"),
    ...one("ff02::1", "deny by default"),
  ]);
});

test("evaluate: a group rule matches exactly its group", () => {
  for (const g of GROUPS) {
    const sample: Record<Group, string> = {
      host: "172.30.0.1", metadata: "169.254.169.254", loopback: "127.0.0.1", private: "10.0.0.1",
      "link-local": "169.254.0.1", multicast: "224.0.0.1", public: "8.8.8.8",
    };
    expectVerdicts(new NetworkPolicy("allow", [denyOut(Destination.group(g))]),
      GROUPS.map((other) => ({ addr: sample[other], want: other === g ? "deny by rule 0" as const : "allow by default" as const })));
  }
});

test("evaluate: first match wins — a /32 deny before an allow of its group denies only that address", () => {
  expectVerdicts(new NetworkPolicy("deny", [denyOut(Destination.cidr("10.1.2.3/32")), allowOut(Destination.group("private"))]), [
    { addr: "10.1.2.3", want: "deny by rule 0" },
    { addr: "10.1.2.4", want: "allow by rule 1" },
    { addr: "8.8.8.8", want: "deny by default" },
  ]);
});

test("evaluate: first match wins — the group allow placed first shadows the later /32 deny", () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.group("private")), denyOut(Destination.cidr("10.1.2.3/32"))]), [
    { addr: "10.1.2.3", want: "allow by rule 0" },
    { addr: "10.1.2.4", want: "allow by rule 0" },
    { addr: "8.8.8.8", want: "deny by default" },
  ]);
});

test("evaluate: a protocol-filtered rule matches only its protocol; a rule without protocol matches all", () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "tcp" })]), [
    { addr: "8.8.8.8", flow: { proto: "tcp" }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "udp" }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { proto: 17 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { proto: "icmpv4", port: 0 }, want: "deny by default" },
    { addr: "2001:db8::1", flow: { proto: "icmpv6", port: 0 }, want: "deny by default" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "udp" })]), [
    { addr: "8.8.8.8", flow: { proto: "udp" }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "tcp" }, want: "deny by default" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "icmpv6" })]), [
    { addr: "2001:db8::1", flow: { proto: "icmpv6", port: 0 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "icmpv4", port: 0 }, want: "deny by default" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any())]), [
    { addr: "8.8.8.8", flow: { proto: "tcp" }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "udp" }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "icmpv4", port: 0 }, want: "allow by rule 0" },
    { addr: "2001:db8::1", flow: { proto: "icmpv6", port: 0 }, want: "allow by rule 0" },
  ]);
});

test("evaluate: a single port matches only that port", () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "tcp", ports: PortRange.single(443) })]), [
    { addr: "8.8.8.8", flow: { port: 443 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { port: 442 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { port: 444 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { port: 0 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { port: 65535 }, want: "deny by default" },
  ]);
});

test("evaluate: a port range includes both ends and nothing outside", () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "udp", ports: PortRange.range(8000, 8080) })]), [
    { addr: "8.8.8.8", flow: { proto: "udp", port: 7999 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { proto: "udp", port: 8000 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "udp", port: 8040 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "udp", port: 8080 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { proto: "udp", port: 8081 }, want: "deny by default" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "tcp", ports: PortRange.range(0, 1023) })]), [
    { addr: "8.8.8.8", flow: { port: 0 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { port: 1023 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { port: 1024 }, want: "deny by default" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "tcp", ports: PortRange.range(65535, 65535) })]), [
    { addr: "8.8.8.8", flow: { port: 65535 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { port: 65534 }, want: "deny by default" },
  ]);
});

test("evaluate: ICMP (port 0) never matches a rule with a port range", () => {
  // validateRule only admits ports with tcp/udp; a hand-built rule without protocol is the one
  // case where the ICMP port 0 reaches the port test itself.
  expectVerdicts(new NetworkPolicy("deny", [{ action: "allow", direction: "outbound", destination: Destination.any(), ports: PortRange.range(1, 65535) }]), [
    { addr: "8.8.8.8", flow: { proto: "icmpv4", port: 0 }, want: "deny by default" },
    { addr: "2001:db8::1", flow: { proto: "icmpv6", port: 0 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { proto: "tcp", port: 1 }, want: "allow by rule 0" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "tcp", ports: PortRange.single(80) })]), [
    { addr: "8.8.8.8", flow: { proto: "icmpv4", port: 0 }, want: "deny by default" },
  ]);
});

test("evaluate: a rule for port 0 alone matches port 0 and no other port", {
}, () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.any(), { protocol: "tcp", ports: PortRange.single(0) })]), [
    { addr: "8.8.8.8", flow: { port: 0 }, want: "allow by rule 0" },
    { addr: "8.8.8.8", flow: { port: 443 }, want: "deny by default" },
    { addr: "8.8.8.8", flow: { port: 22 }, want: "deny by default" },
  ]);
});

test("evaluate: an inbound rule never matches an outbound flow, nor an outbound rule an inbound one", () => {
  const inbound = (d: Destination, action: "allow" | "deny"): Rule => ({ action, direction: "inbound", destination: d });
  expectVerdicts(new NetworkPolicy("deny", [inbound(Destination.any(), "allow"), allowOut(Destination.cidr("10.0.0.0/8"))]), [
    { addr: "8.8.8.8", flow: { direction: OUT }, want: "deny by default" },
    { addr: "10.0.0.1", flow: { direction: OUT }, want: "allow by rule 1" },
    { addr: "8.8.8.8", flow: { direction: IN }, want: "allow by rule 0" },
    { addr: "10.0.0.1", flow: { direction: IN }, want: "allow by rule 0" },
  ]);
  expectVerdicts(new NetworkPolicy("allow", [inbound(Destination.group("public"), "deny")]), [
    { addr: "8.8.8.8", flow: { direction: OUT }, want: "allow by default" },
    { addr: "8.8.8.8", flow: { direction: IN }, want: "deny by rule 0" },
  ]);
});

test("evaluate: IPv4 CIDR /0, /8 and /32 match by prefix, and only IPv4 (mapped) addresses", () => {
  expectVerdicts(new NetworkPolicy("deny", [
    allowOut(Destination.cidr("10.9.8.7/32")),
    allowOut(Destination.cidr("10.0.0.0/8")),
    allowOut(Destination.cidr("0.0.0.0/0")),
  ]), [
    { addr: "10.9.8.7", want: "allow by rule 0" },
    { addr: "10.9.8.6", want: "allow by rule 1" },
    { addr: "10.9.8.8", want: "allow by rule 1" },
    { addr: "10.0.0.0", want: "allow by rule 1" },
    { addr: "10.255.255.255", want: "allow by rule 1" },
    { addr: "9.255.255.255", want: "allow by rule 2" },
    { addr: "11.0.0.0", want: "allow by rule 2" },
    { addr: "0.0.0.0", want: "allow by rule 2" },
    { addr: "255.255.255.255", want: "allow by rule 2" },
    // 0.0.0.0/0 is ::ffff:0:0/96: IPv6 addresses are not in it.
    { addr: "2001:db8::1", want: "deny by default" },
    { addr: "::1", want: "deny by default" },
    { addr: "::", want: "deny by default" },
  ]);
});

test("evaluate: an IPv4 CIDR given with host bits set is the network it names", () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.cidr("192.168.1.77/24"))]), [
    { addr: "192.168.1.0", want: "allow by rule 0" },
    { addr: "192.168.1.255", want: "allow by rule 0" },
    { addr: "192.168.2.0", want: "deny by default" },
  ]);
});

test("evaluate: an IPv4 CIDR matches the IPv4-mapped spelling of its addresses", () => {
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.cidr("10.0.0.0/8"))]), [
    { addr: "::ffff:10.1.2.3", want: "allow by rule 0" },
    { addr: "::ffff:a01:203", want: "allow by rule 0" },
    { addr: "::ffff:11.1.2.3", want: "deny by default" },
  ]);
  // An IPv6 CIDR over the mapped range matches plain IPv4 addresses the same way.
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.cidr("::ffff:a00:0/104"))]), [
    { addr: "10.1.2.3", want: "allow by rule 0" },
    { addr: "11.1.2.3", want: "deny by default" },
  ]);
});

test("evaluate: a CIDR rule matches an IPv4-carrying IPv6 address as written and by the IPv4 inside", () => {
  expectVerdicts(new NetworkPolicy("allow", [denyOut(Destination.cidr("2002::/16")), denyOut(Destination.cidr("64:ff9b::/96")), denyOut(Destination.cidr("9.9.9.9/32"))]), [
    { addr: "2002:808:808::1", want: "deny by rule 0" }, // 6to4 of 8.8.8.8: the rule about 2002::/16 holds
    { addr: "64:ff9b::808:808", want: "deny by rule 1" },
    { addr: "2002:909:909::1", want: "deny by rule 0" },
    { addr: "2001:0:4136:e378:8000:63bf:f6f6:f6f6", want: "deny by rule 2" }, // Teredo of 9.9.9.9: the IPv4 rule
    { addr: "2003::1", want: "allow by default" },
  ]);
});

test("evaluate: IPv6 CIDR /0, /32, /128 and [2001:db8::]/32 match by prefix", () => {
  expectVerdicts(new NetworkPolicy("deny", [
    allowOut(Destination.cidr("2001:db8::1/128")),
    denyOut(Destination.cidr("[2001:db8::]/32")),
    allowOut(Destination.cidr("2606:4700::/32")),
  ]), [
    { addr: "2001:db8::1", want: "allow by rule 0" },
    { addr: "2001:db8::2", want: "deny by rule 1" },
    { addr: "2001:db8::", want: "deny by rule 1" },
    { addr: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", want: "deny by rule 1" },
    { addr: "2001:db9::", want: "deny by default" },
    { addr: "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", want: "deny by default" },
    { addr: "2606:4700::1111", want: "allow by rule 2" },
    { addr: "2606:4701::", want: "deny by default" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", [allowOut(Destination.cidr("::/0"))]), [
    { addr: "2001:db8::1", want: "allow by rule 0" },
    { addr: "::", want: "allow by rule 0" },
    { addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", want: "allow by rule 0" },
    // ::/0 covers the mapped range, so IPv4 too.
    { addr: "8.8.8.8", want: "allow by rule 0" },
  ]);
});

test("evaluate: IPv6 CIDR prefixes that are not multiples of 8 or 64 (/1, /63, /65, /127)", () => {
  expectVerdicts(new NetworkPolicy("deny", [
    allowOut(Destination.cidr("2001:db8:0:1::/127")),
    allowOut(Destination.cidr("2001:db8:0:2::/65")),
    allowOut(Destination.cidr("2001:db8:0:4::/63")),
    allowOut(Destination.cidr("8000::/1")),
  ]), [
    { addr: "2001:db8:0:1::", want: "allow by rule 0" },
    { addr: "2001:db8:0:1::1", want: "allow by rule 0" },
    { addr: "2001:db8:0:1::2", want: "deny by default" },
    { addr: "2001:db8:0:2:7fff:ffff:ffff:ffff", want: "allow by rule 1" },
    { addr: "2001:db8:0:2:8000::", want: "deny by default" },
    { addr: "2001:db8:0:4::", want: "allow by rule 2" },
    { addr: "2001:db8:0:5:ffff:ffff:ffff:ffff", want: "allow by rule 2" },
    { addr: "2001:db8:0:6::", want: "deny by default" },
    { addr: "8000::", want: "allow by rule 3" },
    { addr: "ff02::1", want: "allow by rule 3" },
    { addr: "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", want: "deny by default" },
  ]);
});

test("evaluate: domain and domain-suffix rules match nothing without pins (a hard-coded IP never matches)", () => {
  expectVerdicts(new NetworkPolicy("deny", [
    allowOut(Destination.domain("example.com")),
    allowOut(Destination.domainSuffix("*.example.com")),
  ]), [
    { addr: "93.184.215.14", want: "deny by default" },
    { addr: "8.8.8.8", want: "deny by default" },
    { addr: "2606:2800:21f:cb07:6820:80da:af6b:8b2c", want: "deny by default" },
  ]);
  // A deny by name does not catch an address either: evaluation falls through to the next rule.
  expectVerdicts(new NetworkPolicy("deny", [denyOut(Destination.domain("example.com")), allowOut(Destination.any())]), [
    { addr: "93.184.215.14", want: "allow by rule 1" },
  ]);
});

test("evaluate: the default action decides when no rule matches, deny or allow", () => {
  const rules = [allowOut(Destination.cidr("10.0.0.0/8"))];
  expectVerdicts(new NetworkPolicy("deny", rules), [
    { addr: "8.8.8.8", want: "deny by default" },
    { addr: "10.0.0.1", want: "allow by rule 0" },
  ]);
  expectVerdicts(new NetworkPolicy("allow", rules), [
    { addr: "8.8.8.8", want: "allow by default" },
    { addr: "10.0.0.1", want: "allow by rule 0" },
  ]);
  expectVerdicts(new NetworkPolicy("deny", []), [{ addr: "8.8.8.8", want: "deny by default" }]);
  expectVerdicts(new NetworkPolicy("allow", []), [{ addr: "8.8.8.8", want: "allow by default" }]);
});

test("evaluate: setPolicy replaces the policy in force for the very next evaluation, repeatedly", () => {
  h.setPolicy(NetworkPolicy.publicOnly());
  assert.equal(verdict("10.0.0.1"), "deny by default");
  assert.equal(verdict("8.8.8.8"), "allow by rule 0");
  h.setPolicy(NetworkPolicy.allowAll());
  assert.equal(verdict("10.0.0.1"), "allow by default");
  h.setPolicy(new NetworkPolicy("allow", [denyOut(Destination.any())]));
  assert.equal(verdict("8.8.8.8"), "deny by rule 0");
  // A shorter policy written over a slot that held a longer one leaves no stale rules behind.
  h.setPolicy(new NetworkPolicy("deny", Array.from({ length: 50 }, (_, i) => allowOut(Destination.cidr(`10.0.${i}.0/24`)))));
  h.setPolicy(NetworkPolicy.publicOnly());
  h.setPolicy(new NetworkPolicy("deny", []));
  assert.equal(verdict("10.0.3.1"), "deny by default");
  h.setPolicy(NetworkPolicy.publicOnly());
  assert.equal(verdict("10.0.3.1"), "deny by default");
  assert.equal(verdict("8.8.8.8"), "allow by rule 0");
});

test("evaluate: a full table of 1024 rules is scanned to its last rule", () => {
  const rules = Array.from({ length: L.POLICY_MAX_RULES - 1 }, (_, i) => denyOut(Destination.cidr(`10.${i >> 8}.${i & 255}.0/24`)));
  rules.push(allowOut(Destination.group("public")));
  expectVerdicts(new NetworkPolicy("deny", rules), [
    { addr: "8.8.8.8", want: `allow by rule ${L.POLICY_MAX_RULES - 1}` },
    { addr: "10.3.254.9", want: `deny by rule ${3 * 256 + 254}` },
    { addr: "10.4.0.1", want: "deny by default" },
  ]);
});
