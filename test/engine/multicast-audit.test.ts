// multicast-audit.test.ts — multicast and broadcast are never forwarded, and never dropped
// without a trace: each drop is counted and recorded in the audit ring with its reason.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness, testConfig, counterDelta } from "../helpers/engine-harness.js";
import { eth, ipv4, ipv6, udp, tcpSyn } from "../helpers/frames.js";
import { EngineTables } from "../../orchestrator/src/engine/tables.js";

test("a multicast datagram (IPv4 and IPv6) is dropped, counted and audited as not routed", () => {
  const h = new EngineHarness();
  const before = h.counters();
  const v4 = udp(testConfig.guestIp4, "224.0.0.251", 5353, 5353, [1, 2, 3]);
  const v6 = udp(testConfig.guestIp6, "ff02::fb", 5353, 5353, [1, 2, 3]);
  assert.deepEqual(h.send(
    eth("01:00:5e:00:00:fb", testConfig.guestMac, 0x0800, ipv4(testConfig.guestIp4, "224.0.0.251", 17, v4)),
    eth("33:33:00:00:00:fb", testConfig.guestMac, 0x86dd, ipv6(testConfig.guestIp6, "ff02::fb", 17, v6)),
  ), []);
  assert.deepEqual(h.takeOps(), [], "nothing is forwarded");
  assert.equal(counterDelta(before, h.counters()).DROP_MULTICAST, 2);
  const events = new EngineTables(h.mem).drainDenials(() => "?", 0);
  assert.deepEqual(events.map((e) => [e.protocol, e.destination, e.port, e.rule]), [
    ["udp", "224.0.0.251", 5353, "not-routed: multicast and broadcast are never forwarded"],
    ["udp", "ff02::fb", 5353, "not-routed: multicast and broadcast are never forwarded"],
  ]);
});

test("IPv4 multicast and broadcast spelled as IPv4-mapped IPv6 are not forwarded either, whatever the policy", () => {
  // A host socket would send ::ffff:224.0.0.251 as IPv4 multicast on the host's network.
  const h = new EngineHarness();
  const before = h.counters();
  for (const dst of ["::ffff:224.0.0.251", "::ffff:239.255.255.250", "::ffff:255.255.255.255"]) {
    const u = udp(testConfig.guestIp6, dst, 5353, 5353, [1, 2, 3]);
    const t = tcpSyn(testConfig.guestIp6, dst, 40000, 80, 1);
    assert.deepEqual(h.send(
      eth(testConfig.gatewayMac, testConfig.guestMac, 0x86dd, ipv6(testConfig.guestIp6, dst, 17, u)),
      eth(testConfig.gatewayMac, testConfig.guestMac, 0x86dd, ipv6(testConfig.guestIp6, dst, 6, t)),
    ), [], dst);
  }
  assert.deepEqual(h.takeOps(), [], "nothing is forwarded");
  assert.equal(counterDelta(before, h.counters()).DROP_MULTICAST, 6);
  const events = new EngineTables(h.mem).drainDenials(() => "?", 0);
  assert.deepEqual(events.map((e) => [e.protocol, e.destination, e.port]).slice(0, 2), [
    ["udp", "224.0.0.251", 5353],
    ["tcp", "224.0.0.251", 80],
  ]);
});
