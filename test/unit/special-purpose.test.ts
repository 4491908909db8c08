// special-purpose.test.ts — the table of special-purpose ranges (orchestrator/src/model/
// special-purpose.ts) against the rules its header states: what the registry says of an entry
// decides its group, with the documented exceptions and nothing else. The groups these give
// addresses, in the engine and in classifyAddress, are tested in test/engine/policy-match.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import ipaddr from "ipaddr.js";
import { SPECIAL_PURPOSE, DOCUMENTATION_STAND_INS } from "../../orchestrator/src/model/special-purpose.js";

test("every entry is a CIDR with no host bits, listed once, with a source", () => {
  const seen = new Set<string>();
  for (const e of SPECIAL_PURPOSE) {
    const [net, bits] = ipaddr.parseCIDR(e.prefix);
    assert.equal(`${net.toString()}/${bits}`, e.prefix, `${e.prefix} is written canonically`);
    const first = (net.kind() === "ipv4" ? ipaddr.IPv4.networkAddressFromCIDR(e.prefix) : ipaddr.IPv6.networkAddressFromCIDR(e.prefix)).toString();
    assert.equal(first, net.toString(), `${e.prefix} has no host bits`);
    assert.ok(!seen.has(e.prefix), `${e.prefix} is listed once`);
    seen.add(e.prefix);
    assert.match(e.source, /RFC \d+|registry|metadata/i, `${e.prefix} names its source`);
    assert.ok(e.name.length > 0);
  }
});

test("a registry entry is public exactly when the registry calls it globally reachable, but for the documentation stand-ins", () => {
  const wrong: string[] = [];
  for (const e of SPECIAL_PURPOSE) {
    if (e.group === "carried" || e.group === "multicast" || e.group === "metadata") continue;
    const standIn = DOCUMENTATION_STAND_INS.includes(e.prefix);
    const wantPublic = e.globallyReachable === true || standIn;
    if ((e.group === "public") !== wantPublic) wrong.push(`${e.prefix} (${e.name}): ${e.group}, globally reachable ${e.globallyReachable}`);
    if (standIn && !/^Documentation/.test(e.name)) wrong.push(`${e.prefix} is a stand-in but not a documentation range`);
  }
  assert.deepEqual(wrong, []);
});

test("the only documentation ranges that stay public are the four test worlds use; 3fff::/20 is not one", () => {
  assert.deepEqual([...DOCUMENTATION_STAND_INS].sort(), ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32", "203.0.113.0/24"]);
  const docs = SPECIAL_PURPOSE.filter((e) => e.name.startsWith("Documentation"));
  assert.deepEqual(docs.filter((e) => e.group === "public").map((e) => e.prefix).sort(), [...DOCUMENTATION_STAND_INS].sort());
  assert.equal(SPECIAL_PURPOSE.find((e) => e.prefix === "3fff::/20")?.group, "private");
});

test("only the IPv6 forms that carry an IPv4 address are judged by it", () => {
  assert.deepEqual(SPECIAL_PURPOSE.filter((e) => e.group === "carried").map((e) => e.prefix).sort(),
    ["2001::/32", "2002::/16", "64:ff9b::/96", "::ffff:0:0/96"]);
});

test("the registries' blocks named in RFC 6890 and its updates are all present", () => {
  const have = new Set(SPECIAL_PURPOSE.map((e) => e.prefix));
  const missing = [
    "0.0.0.0/8", "0.0.0.0/32", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.0.0/29", "192.0.0.8/32", "192.0.0.9/32", "192.0.0.10/32", "192.0.0.170/32", "192.0.0.171/32",
    "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.88.99.2/32", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
    "::1/128", "::/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64", "2001::/23",
    "2001::/32", "2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:2::/48", "2001:3::/32", "2001:4:112::/48",
    "2001:10::/28", "2001:20::/28", "2001:30::/28", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20",
    "5f00::/16", "fc00::/7", "fe80::/10",
  ].filter((p) => !have.has(p));
  assert.deepEqual(missing, []);
});
